"""Refinement models (cascades): a card's ``refined_by`` models redraw its structures
inside the box around them, and their answer replaces the first model's.

The models are one-layer ONNX graphs with known rules, so what each stage draws is
exact: the first model calls everything above about 20 HU "Heart", the refinement
model calls air "Heart" (a rule no real model has, chosen so that its output can only
come from the refinement and only from inside its region).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from engines.segmentation.card import (
    ModelCard,
    ModelCardError,
    file_sha256,
    verify_cascade,
    write_card,
)
from engines.segmentation.engine import segment_ct
from engines.segmentation.processing import VolumeGeometry
from engines.segmentation.runtime import RuntimeSettings, SessionCache, open_runtime
from tests.test_segmentation_runtime import tiny_template

GEOMETRY = VolumeGeometry(
    origin_mm=(-80.0, -80.0, 0.0),
    spacing_mm=(2.0, 2.0, 2.0),
    row_cosines=(1.0, 0.0, 0.0),
    column_cosines=(0.0, 1.0, 0.0),
    normal=(0.0, 0.0, 1.0),
    shape=(40, 80, 80),
)
HEART_BOX = (slice(10, 30), slice(20, 40), slice(20, 40))  # (slice, row, column)
MARGIN_MM = 10.0


def save_linear_model(
    directory: Path, stem: str, weights: list[float], biases: list[float], **card: Any
) -> Path:
    """A 1x1x1 convolution: logit c = weights[c] * image + biases[c]; card ``stem.yaml``."""
    channels = len(weights)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "x", "y", "z"])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["n", channels, "x", "y", "z"]
            )
        ],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [channels, 1, 1, 1, 1], weights),
            helper.make_tensor("b", TensorProto.FLOAT, [channels], biases),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 13
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.onnx"
    onnx.save(model, str(path))
    template = tiny_template(**card)
    template["input"] = {**template["input"], "spacing_mm": [2.0, 2.0, 2.0]}
    card_path = directory / f"{stem}.yaml"
    write_card(
        ModelCard.model_validate(
            {**template, "model_file": path.name, "sha256": file_sha256(path)}
        ),
        card_path,
    )
    return card_path


def heart_only_outputs() -> dict[str, Any]:
    return {
        "channels": 2,
        "labels": [
            {"index": 1, "name": "Heart", "color_rgb": [255, 0, 128], "interpreted_type": "ORGAN"}
        ],
    }


def make_cascade(
    directory: Path,
    refiner_weights: tuple[float, float] = (-40.0, -20.0),
    min_volume_cm3: float = 0.0,
) -> Path:
    """First model (External, Heart above ~20 HU) refined by a model calling air Heart.

    Intensities are linear [-1000, 1000] HU -> [-1, 1] (x). First model: c0 = 0,
    c1 = 20x + 10 (body above -500 HU), c2 = 60x + 9.2 (beats c1 above x = 0.02).
    Refinement: c0 = 0, c1 = refiner_weights[0] * x + refiner_weights[1] (default: air,
    x < -0.5).
    """
    save_linear_model(
        directory,
        "refiner",
        [0.0, refiner_weights[0]],
        [0.0, refiner_weights[1]],
        outputs=heart_only_outputs(),
        region={"around": ["Heart"], "margin_mm": MARGIN_MM, "min_volume_cm3": min_volume_cm3},
    )
    return save_linear_model(
        directory, "first", [0.0, 20.0, 60.0], [0.0, 10.0, 9.2], refined_by=["refiner.yaml"]
    )


def phantom() -> np.ndarray:
    hu = np.full(GEOMETRY.shape, -1000.0, dtype=np.float32)
    hu[5:35, 18:42, 18:42] = -100.0  # body, 2 voxels around the heart
    hu[HEART_BOX] = 100.0  # what the first model calls Heart
    return hu  # the heart's region (box + 5 voxels) holds air around the body


def region_box() -> tuple[slice, ...]:
    grow = int(MARGIN_MM / 2.0)
    return tuple(slice(s.start - grow, s.stop + grow) for s in HEART_BOX)


def test_the_refinement_replaces_the_structure_inside_its_region(tmp_path: Path) -> None:
    runtime = open_runtime(make_cascade(tmp_path))
    assert [r.card.name for r in runtime.refiners] == ["tiny-test-model"]
    assert "Heart refined by model tiny-test-model" in runtime.summary()
    hu = phantom()
    masks = segment_ct(hu, GEOMETRY, runtime)
    heart = masks["Heart"].full(GEOMETRY.shape)
    inside = np.zeros(GEOMETRY.shape, dtype=bool)
    inside[region_box()] = True
    expected = inside & (hu < -500.0)
    assert not (heart & ~inside).any()  # nothing outside the heart's box plus margin
    assert np.count_nonzero(heart ^ expected) <= 0.02 * np.count_nonzero(expected)
    assert masks["External"].full(GEOMETRY.shape)[HEART_BOX].all()  # not refined: kept


def test_without_refined_by_the_first_model_stands(tmp_path: Path) -> None:
    card = make_cascade(tmp_path)
    data = yaml.safe_load(card.read_text())
    data["refined_by"] = []
    card.write_text(yaml.safe_dump(data))
    runtime = open_runtime(card)
    heart = segment_ct(phantom(), GEOMETRY, runtime)["Heart"].full(GEOMETRY.shape)
    truth = np.zeros(GEOMETRY.shape, dtype=bool)
    truth[HEART_BOX] = True
    assert runtime.refiners == () and "refined by" not in runtime.summary()
    assert np.count_nonzero(heart ^ truth) <= 0.05 * np.count_nonzero(truth)


def test_a_structure_the_refinement_does_not_find_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = open_runtime(make_cascade(tmp_path, refiner_weights=(0.0, -10.0)))
    masks = segment_ct(phantom(), GEOMETRY, runtime)
    assert "Heart" not in masks and "External" in masks
    assert "found no Heart where the first model drew one" in caplog.text


def test_the_refinement_does_not_run_without_its_region(tmp_path: Path) -> None:
    runtime = open_runtime(make_cascade(tmp_path))
    hu = np.full(GEOMETRY.shape, -1000.0, dtype=np.float32)
    hu[5:35, 10:70, 10:70] = -100.0  # a body without anything the first model calls Heart
    masks = segment_ct(hu, GEOMETRY, runtime)
    assert set(masks) == {"External"}


def test_refined_by_must_name_a_card_with_a_region(tmp_path: Path) -> None:
    card = make_cascade(tmp_path)
    refiner = tmp_path / "refiner.yaml"
    data = yaml.safe_load(refiner.read_text())
    del data["region"]
    refiner.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelCardError, match="whose card has no region"):
        open_runtime(card)
    refiner.unlink()
    with pytest.raises(ModelCardError, match="cannot read model card"):
        open_runtime(card)


def test_cascade_fields_are_validated() -> None:
    base = {"model_file": "m.onnx", "sha256": "0" * 64}
    with pytest.raises(ValueError, match="cannot itself be refined_by"):
        ModelCard.model_validate(
            tiny_template(**base, region={"around": ["Heart"]}, refined_by=["x.yaml"])
        )
    with pytest.raises(ValueError, match="around"):
        ModelCard.model_validate(tiny_template(**base, region={"around": []}))


def test_a_changed_refinement_model_opens_a_new_session(tmp_path: Path) -> None:
    card = make_cascade(tmp_path / "a")
    cache = SessionCache()
    settings = RuntimeSettings(intra_op_threads=1)
    first, opened = cache.get(card, settings)
    again, reopened = cache.get(card, settings)
    assert opened and not reopened and again is first
    other = make_cascade(tmp_path / "b", refiner_weights=(-30.0, -15.0))
    for name in ("refiner.onnx", "refiner.yaml"):
        shutil.copyfile(other.parent / name, card.parent / name)
    changed, opened = cache.get(card, settings)
    assert opened and changed is not first


def test_check_config_checks_the_refinement_model_files_too(tmp_path: Path) -> None:
    card = make_cascade(tmp_path)
    assert verify_cascade(card).refined_by == ("refiner.yaml",)
    (tmp_path / "refiner.onnx").write_bytes(b"not the exported model")
    with pytest.raises(ModelCardError, match=r"sha256 mismatch for refiner\.onnx"):
        verify_cascade(card)


def test_structures_below_the_minimum_volume_are_not_refined(tmp_path: Path) -> None:
    """The heart here is 20 x 20 x 20 voxels of 8 mm3: 64 cm3."""
    hu = phantom()
    truth = np.zeros(GEOMETRY.shape, dtype=bool)
    truth[HEART_BOX] = True
    for minimum, refined in ((60.0, True), (70.0, False)):
        runtime = open_runtime(make_cascade(tmp_path / str(minimum), min_volume_cm3=minimum))
        heart = segment_ct(hu, GEOMETRY, runtime)["Heart"].full(GEOMETRY.shape)
        assert (np.count_nonzero(heart & truth) < 0.05 * truth.sum()) == refined, minimum
