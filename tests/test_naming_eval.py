"""Evidence checks on the shared TG-263 data (skipped where ../shared is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engines.naming.decision import COMPLIANT
from engines.naming.evaluation import base_organ, evaluate, read_labelled
from engines.naming.renamer import Renamer
from engines.naming.vocabulary import load_vocabulary

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tg263"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/tg263 absent")


@pytest.fixture(scope="module")
def renamer() -> Renamer:
    return Renamer(load_vocabulary())


def test_base_organ() -> None:
    assert base_organ("Cochlea_PRV03_L") == "Cochlea_L"
    assert base_organ("SpinalCord_PRV05") == "SpinalCord"
    assert base_organ("Brainstem_PRV") == "Brainstem"
    assert base_organ("Parotid_L") == "Parotid_L"


@needs_shared
def test_dev_set_wrong_renames_stay_rare(renamer: Renamer) -> None:
    scores, _ = evaluate(renamer, read_labelled(SHARED / "clinic_names_dev.csv"))
    assert scores.wrong_rate <= 0.01
    assert scores.precision >= 0.98
    assert scores.accuracy >= 0.95
    assert scores.base_accuracy >= 0.95
    assert scores.llm_fraction <= 0.10


@needs_shared
def test_compliant_names_come_out_unchanged(renamer: Renamer) -> None:
    with (SHARED / "tg263_style_parsed_examples.csv").open(encoding="utf-8", newline="") as handle:
        names = [row["Structure"] for row in csv.DictReader(handle)]
    changed = [(n, renamer.decide(n).new_name) for n in names if renamer.decide(n).new_name != n]
    assert changed == []
    assert sum(renamer.decide(n).method == COMPLIANT for n in names) > 700


@needs_shared
def test_unlabeled_names_never_fail(renamer: Renamer) -> None:
    with (SHARED / "clinic_names_unlabeled.csv").open(encoding="utf-8", newline="") as handle:
        names = [row["raw_name"] for row in csv.DictReader(handle)]
    decisions = [renamer.decide(n) for n in names]
    assert len(decisions) == len(names) > 4000
    assert all(d.renamed or d.new_name == d.old_name for d in decisions)
