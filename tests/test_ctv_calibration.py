"""Calibration of the breast CTV cards: what it writes into a card, and that the engine
then runs the card that way (thresholds per label, left-right mirroring with the context's
side flags swapped)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.segmentation.card import BREAST_CTV_CARD, load_card
from engines.segmentation.runtime import open_runtime
from engines.segmentation.training.calibrate_ctv import (
    DEFAULT,
    apply,
    mirror_spec,
    with_labels,
)


@pytest.fixture
def card_copy(tmp_path: Path) -> Path:
    for path in (BREAST_CTV_CARD, BREAST_CTV_CARD.with_suffix(".onnx")):
        shutil.copyfile(path, tmp_path / path.name)
    return tmp_path / BREAST_CTV_CARD.name


def test_mirror_swaps_the_left_and_right_context_flags() -> None:
    spec = mirror_spec(load_card(BREAST_CTV_CARD))
    assert spec.axis == 0
    assert spec.swap_channels == ()
    assert spec.swap_inputs == {"context": ((0, 1),)}


def test_thresholds_go_to_the_primary_and_nodal_labels_only() -> None:
    labels = with_labels(load_card(BREAST_CTV_CARD).outputs.labels, 0.4, 0.3)
    assert {label.name: label.threshold for label in labels} == {"CTVp": 0.4, "CTVn": 0.3}
    assert DEFAULT == (False, 0.25, 0.5, 0.5)


def test_apply_writes_a_valid_card_the_runtime_follows(card_copy: Path) -> None:
    before = load_card(card_copy)
    result = {
        "mirror": True,
        "overlap": 0.5,
        "primary_threshold": 0.45,
        "nodal_threshold": 0.35,
        "dice": 0.8,
    }
    apply(card_copy, result, {"command": "test", "cases": "none"})
    card = load_card(card_copy)
    assert [label.threshold for label in card.outputs.labels] == [0.45, 0.35]
    assert card.input.overlap == 0.5
    assert card.test_time_mirror is not None
    assert card.test_time_mirror.swap_inputs == {"context": ((0, 1),)}
    assert card.training["calibration"]["command"] == "test"
    assert card.training["calibration"]["primary_threshold"] == 0.45
    assert card.sha256 == before.sha256
    assert open_runtime(card_copy).card == card  # the model file still matches

    apply(card_copy, {**result, "mirror": False, "overlap": 0.25}, {"command": "again"})
    assert load_card(card_copy).test_time_mirror is None
    assert load_card(card_copy).input.overlap == 0.25
