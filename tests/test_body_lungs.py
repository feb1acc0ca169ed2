"""Classical External/lung segmentation against the phantom's ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.base import EngineContext, EngineError, Structure
from engines.classical.body_lungs import BodyLungsEngine
from engines.registry import create_engine
from engines.structures import TemplateError, UnknownStructure, load_template
from engines.volume import CTVolume
from tests.factories import CTSeries, dice, make_ct_series

CASES: dict[str, dict[str, Any]] = {
    "hfs": {"n_slices": 24, "rows": 128, "cols": 128},
    "ffs": {"n_slices": 24, "rows": 128, "cols": 128, "patient_position": "FFS"},
    "non_square": {"n_slices": 16, "rows": 160, "cols": 112, "pixel_spacing_mm": (2.6, 4.4)},
    "one_slice": {"n_slices": 1, "rows": 256, "cols": 256},
    "two_slices_ffs": {"n_slices": 2, "rows": 128, "cols": 128, "patient_position": "FFS"},
    "three_slices": {"n_slices": 3, "rows": 192, "cols": 192, "slice_thickness_mm": 5.0},
}


def _run(volume: CTVolume, tmp_path: Path, **params: Any) -> EngineContext:
    ctx = EngineContext(job_id=1, input_files=[], output_dir=tmp_path, params=params)
    ctx._ct = volume
    BodyLungsEngine().run(ctx)
    return ctx


def _by_name(ctx: EngineContext) -> dict[str, Structure]:
    return {s.name: s for s in ctx.structures}


def _centroid_x_mm(volume: CTVolume, mask: np.ndarray) -> float:
    _, rows, cols = np.nonzero(mask)
    x0 = float(volume.headers[0].ImagePositionPatient[0])
    dr, dc = volume.spacing_mm[1:]
    return (
        x0 + volume.row_cosines[0] * dc * cols.mean() + volume.column_cosines[0] * dr * rows.mean()
    )


@pytest.mark.parametrize("case", list(CASES))
def test_masks_match_ground_truth(case: str, tmp_path: Path) -> None:
    series = make_ct_series(**CASES[case])
    volume = CTVolume.from_datasets(series.datasets)

    found = _by_name(_run(volume, tmp_path))

    assert dice(found["External"].mask, series.body) >= 0.95
    assert dice(found["Lung_L"].mask, series.lung_l) >= 0.95
    assert dice(found["Lung_R"].mask, series.lung_r) >= 0.95
    assert not (found["External"].mask & series.couch).any()
    assert (
        _centroid_x_mm(volume, found["Lung_L"].mask)
        > 0
        > _centroid_x_mm(volume, found["Lung_R"].mask)
    )


def test_trachea_is_inside_external_but_not_in_the_lungs(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=24, rows=128, cols=128)
    trachea = series.masks["trachea"] & ~series.lung_l & ~series.lung_r

    found = _by_name(_run(CTVolume.from_datasets(series.datasets), tmp_path))

    assert trachea.any()
    assert found["External"].mask[trachea].all()
    lungs = found["Lung_L"].mask | found["Lung_R"].mask
    assert lungs[trachea].mean() < 0.2


def _bridge_lungs(series: CTSeries) -> CTVolume:
    """Join both lungs through an air band in front of the mediastinum (upper slices)."""
    volume = CTVolume.from_datasets(series.datasets)
    hu = volume.hu.copy()
    first = volume.headers[0]
    _, rows, cols = volume.shape
    ys = float(first.ImagePositionPatient[1]) + np.arange(rows) * volume.spacing_mm[1]
    xs = float(first.ImagePositionPatient[0]) + (
        np.arange(cols) * volume.spacing_mm[2] * volume.row_cosines[0]
    )
    band = np.outer((ys > -55) & (ys < -45), np.abs(xs) < 35)
    upper = np.argsort(_z_mm(volume))[len(volume.headers) // 2 :]
    for k in upper:
        hu[k][band] = -850.0
    return dataclasses.replace(volume, hu=hu)


def _z_mm(volume: CTVolume) -> list[float]:
    return [float(h.ImagePositionPatient[2]) for h in volume.headers]


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_joined_lungs_are_split_left_and_right(position: str, tmp_path: Path) -> None:
    series = make_ct_series(n_slices=20, rows=160, cols=160, patient_position=position)

    found = _by_name(_run(_bridge_lungs(series), tmp_path))

    assert dice(found["Lung_L"].mask, series.lung_l) >= 0.95
    assert dice(found["Lung_R"].mask, series.lung_r) >= 0.95
    assert not (found["Lung_L"].mask & series.lung_r).any()
    assert not (found["Lung_R"].mask & series.lung_l).any()


def test_structures_take_colour_and_type_from_the_template(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=3, rows=96, cols=96)
    template = load_template()

    found = _by_name(_run(CTVolume.from_datasets(series.datasets), tmp_path))

    assert list(found) == ["External", "Lung_L", "Lung_R"]
    assert found["External"].interpreted_type == "EXTERNAL"
    assert found["Lung_L"].interpreted_type == found["Lung_R"].interpreted_type == "ORGAN"
    for name, structure in found.items():
        assert structure.color_rgb == template.colour(name)
        assert structure.mask.dtype == np.bool_ and structure.mask.shape == series.shape


def test_template_path_comes_from_params(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nstructures:\n"
        "  External: {color_rgb: [1, 2, 3], interpreted_type: EXTERNAL}\n"
        "  Lung_L: {color_rgb: [4, 5, 6], interpreted_type: ORGAN}\n"
        "  Lung_R: {color_rgb: [7, 8, 9], interpreted_type: AVOIDANCE}\n"
    )
    series = make_ct_series(n_slices=2, rows=96, cols=96)

    ctx = _run(CTVolume.from_datasets(series.datasets), tmp_path, structure_template=str(path))

    found = _by_name(ctx)
    assert found["External"].color_rgb == (1, 2, 3)
    assert found["Lung_R"].interpreted_type == "AVOIDANCE"


def test_empty_image_raises_a_clear_error(tmp_path: Path) -> None:
    volume = CTVolume.from_datasets(make_ct_series(n_slices=2, rows=64, cols=64).datasets)
    air = dataclasses.replace(volume, hu=np.full(volume.shape, -1000.0, dtype=np.float32))

    with pytest.raises(EngineError, match="no patient body"):
        _run(air, tmp_path)


def test_no_lung_tissue_gives_external_only_and_a_note(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=3, rows=96, cols=96)
    volume = CTVolume.from_datasets(series.datasets)
    hu = volume.hu.copy()
    hu[series.lung_l | series.lung_r | series.masks["trachea"]] = 40.0

    ctx = _run(dataclasses.replace(volume, hu=hu), tmp_path)

    assert list(_by_name(ctx)) == ["External"]
    assert any("Lung_L" in note for note in ctx.notes)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(EngineError, match="unknown"):
        BodyLungsEngine(lung_treshold_hu=-500)


def test_template_knows_targets_by_prefix() -> None:
    template = load_template()

    assert template.interpreted_type("PTV_6000") == "PTV"
    assert template.interpreted_type("CTV_High") == "CTV"
    assert template.interpreted_type("Bone_Mandible") == "ORGAN"
    with pytest.raises(UnknownStructure):
        template.colour("Mystery")


def test_invalid_template_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nstructures:\n"
        "  External: {color_rgb: [0, 300, 0], interpreted_type: EXTERNAL}\n"
        "  Heart: {color_rgb: [1, 2, 3], interpreted_type: HEART}\n"
    )

    with pytest.raises(TemplateError) as caught:
        load_template(path)

    message = str(caught.value)
    assert "structures.External.color_rgb" in message
    assert "structures.Heart.interpreted_type" in message


def test_registry_builds_the_engine() -> None:
    engine = create_engine("classical_body_lungs", opening_radius_mm=4.0)

    assert isinstance(engine, BodyLungsEngine)
    assert (engine.inputs, engine.outputs) == (("ct",), ("structures",))
    assert engine.settings.opening_radius_mm == 4.0
