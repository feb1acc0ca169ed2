"""Model cards: schema validation (every problem listed), sha256 check, check-model problems."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.cli_models import card_problems
from engines.segmentation.card import (
    BREAST_CTV_CARD,
    ModelCard,
    ModelCardError,
    file_sha256,
    load_card,
    verified_model_path,
    write_card,
)
from engines.segmentation.engine import DEFAULT_CARD
from tests.test_segmentation_runtime import make_tiny_model, tiny_template


def card_dict(**changes: Any) -> dict[str, Any]:
    return tiny_template(**{"model_file": "tiny.onnx", "sha256": "a" * 64, **changes})


def test_shipped_thorax_card_is_valid_and_matches_its_model() -> None:
    card = load_card(DEFAULT_CARD)
    model = verified_model_path(card, DEFAULT_CARD)
    assert model.stat().st_size <= 20 * 1024 * 1024
    names = [label.name for label in card.outputs.labels]
    assert names == [
        "External",
        "Lung_L",
        "Lung_R",
        "Heart",
        "SpinalCord",
        "Esophagus",
        "Breast_L",
        "Breast_R",
    ]
    assert card.outputs.labels[0].indices() == tuple(range(1, 9))
    assert card.extra_inputs == ()
    assert card.precision in {"fp32", "int8"}


def test_valid_card_round_trips_through_yaml(tmp_path: Path) -> None:
    card = ModelCard.model_validate(card_dict())
    path = tmp_path / "card.yaml"
    write_card(card, path, header="a comment\nsecond line")
    assert path.read_text().startswith("# a comment\n# second line\n")
    assert load_card(path) == card


def test_every_problem_is_listed(tmp_path: Path) -> None:
    bad = card_dict(sha256="not-a-hash")
    bad["input"]["orientation"] = "RAX"
    bad["input"]["overlap"] = 1.0
    bad["outputs"]["labels"][1]["covers"] = [2, 5]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ModelCardError) as info:
        load_card(path)
    message = str(info.value)
    for key in ("sha256", "input.orientation", "input.overlap", "outputs"):
        assert f"{path}: {key}" in message, message
    assert "indices [5] outside 1..2" in message


def test_label_threshold_is_a_probability_between_0_and_1() -> None:
    outputs = card_dict()["outputs"]
    assert ModelCard.model_validate(card_dict()).outputs.labels[0].threshold == 0.5
    for bad in (0.0, 1.0, 1.5):
        outputs["labels"][0]["threshold"] = bad
        with pytest.raises(ValueError, match="threshold"):
            ModelCard.model_validate(card_dict(outputs=outputs))


def test_unknown_keys_and_types_are_refused() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ModelCard.model_validate(card_dict(colour="red"))
    labels = card_dict()["outputs"]
    labels["labels"][1]["interpreted_type"] = "LIVER"
    with pytest.raises(ValueError, match="interpreted_type"):
        ModelCard.model_validate(card_dict(outputs=labels))


def test_sha256_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    card_path = make_tiny_model(tmp_path)
    card = load_card(card_path)
    model = card.model_path(card_path)
    assert verified_model_path(card, card_path) == model
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ModelCardError) as info:
        verified_model_path(card, card_path)
    message = str(info.value)
    assert "sha256 mismatch for tiny.onnx" in message
    assert card.sha256 in message and file_sha256(model) in message


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "card.yaml"
    write_card(ModelCard.model_validate(card_dict()), path)
    with pytest.raises(ModelCardError, match=r"tiny\.onnx does not exist"):
        verified_model_path(load_card(path), path)


def test_check_model_problems_have_file_line_and_key(tmp_path: Path) -> None:
    card_path = make_tiny_model(tmp_path)
    text = card_path.read_text().replace("orientation: RAS", "orientation: SSS")
    card_path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if "orientation:" in row)
    (problem,) = card_problems(card_path)
    assert problem.file == str(card_path) and problem.line == line
    assert problem.key == "input.orientation"
    assert "each axis" in problem.message


def test_check_model_reports_sha256_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card_path = make_tiny_model(tmp_path)
    assert card_problems(card_path, smoke=True) == []
    out = capsys.readouterr().out
    ok = r"OK: model tiny-test-model 0\.0\.1 \(fp32\) on \w+ExecutionProvider"
    assert re.search(ok, out), out
    model = card_path.with_suffix(".onnx")
    model.write_bytes(model.read_bytes()[:-1])
    (problem,) = card_problems(card_path)
    assert problem.key == "sha256" and "sha256 mismatch" in problem.message
    assert problem.line > 0


def test_smoke_test_runs_a_model_with_a_required_context_input(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shipped CTV card needs a context vector; the smoke test feeds zeros."""
    assert card_problems(BREAST_CTV_CARD, smoke=True) == []
    out = capsys.readouterr().out
    assert "mirrored test-time average" in out and "one 128x128x32 patch in" in out
