"""Renaming structure sets: new UIDs, same study and geometry, draft labels, the mapping SR,
and the node engine ``tg263_rename``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from engines.base import EngineContext, EngineError
from engines.naming.engine import TG263RenameEngine, rename_rtstruct
from engines.naming.renamer import Renamer
from engines.naming.report_sr import COMPREHENSIVE_SR_STORAGE
from engines.naming.rtstruct import DRAFT_LABEL, RTStructError, roi_names
from engines.naming.vocabulary import load_vocabulary
from engines.registry import create_engine
from tests.factories import RoiSpec, make_ct_series, make_rtstruct, write_dataset

DCIODVFY = Path("/usr/bin/dciodvfy")

ROIS = (
    RoiSpec("BODY", (0.0, 0.0), (160.0, 100.0), "EXTERNAL", (1, 1, 1)),
    RoiSpec("Lt Lung", (74.0, -5.0), (45.0, 58.0), "ORGAN", (2, 2, 2)),
    RoiSpec("RT LUNG", (-78.0, -5.0), (48.0, 60.0), "ORGAN", (3, 3, 3)),
    RoiSpec("cord PRV 5mm", (0.0, 88.0), (9.0, 8.0), "ORGAN", (4, 4, 4)),
    RoiSpec("SpinalCord", (0.0, 88.0), (6.0, 5.0), "ORGAN", (5, 5, 5)),
    RoiSpec("spinal cord", (0.0, 88.0), (6.5, 5.5), "ORGAN", (6, 6, 6)),
    RoiSpec("Ring 60", (60.0, -10.0), (35.0, 35.0), "CONTROL", (7, 7, 7)),
    RoiSpec("PTV 60Gy", (60.0, -10.0), (25.0, 25.0), "PTV", (8, 8, 8)),
)


@pytest.fixture(scope="module")
def structure_set() -> pydicom.Dataset:
    ct = make_ct_series(n_slices=4, rows=32, cols=32)
    return make_rtstruct(ct, ROIS, points_per_contour=8)


@pytest.fixture(scope="module")
def renamer() -> Renamer:
    return Renamer(load_vocabulary())


def test_renamed_copy_is_a_new_draft_instance(
    structure_set: pydicom.Dataset, renamer: Renamer, tmp_path: Path
) -> None:
    result = rename_rtstruct(tmp_path / "in.dcm", structure_set, renamer, tmp_path)
    assert result.renamed is not None and result.report is not None
    out = pydicom.dcmread(result.renamed)
    assert out.SOPInstanceUID != structure_set.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SeriesInstanceUID != structure_set.SeriesInstanceUID
    assert out.StudyInstanceUID == structure_set.StudyInstanceUID
    assert out.StructureSetLabel == DRAFT_LABEL
    assert "AI draft" in out.SeriesDescription
    assert (
        out.ReferencedFrameOfReferenceSequence == structure_set.ReferencedFrameOfReferenceSequence
    )
    for before, after in zip(structure_set.ROIContourSequence, out.ROIContourSequence, strict=True):
        assert before.ContourSequence == after.ContourSequence


def test_names_colours_types_and_duplicates(
    structure_set: pydicom.Dataset, renamer: Renamer, tmp_path: Path
) -> None:
    result = rename_rtstruct(tmp_path / "in.dcm", structure_set, renamer, tmp_path)
    out = pydicom.dcmread(result.renamed)  # type: ignore[arg-type]
    names = [name for _, name in roi_names(out)]
    assert names == [
        "External",
        "Lung_L",
        "Lung_R",
        "SpinalCord_PRV05",
        "SpinalCord",
        "spinal cord",  # would duplicate ROI 5, which already is SpinalCord: kept
        "Ring 60",
        "PTV_60Gy",
    ]
    colours = {int(i.ReferencedROINumber): tuple(i.ROIDisplayColor) for i in out.ROIContourSequence}
    assert colours[2] == renamer.colour("Lung_L")
    assert colours[7] == (7, 7, 7)  # kept names keep their colour
    types = {
        int(i.ReferencedROINumber): i.RTROIInterpretedType for i in out.RTROIObservationsSequence
    }
    assert types[1] == "EXTERNAL" and types[4] == "AVOIDANCE"
    duplicate = result.mappings[5].decision
    assert duplicate.abstained and "already ROI 5" in duplicate.reason
    assert structure_set.StructureSetROISequence[0].ROIName == "BODY"  # input untouched


def test_mapping_sr_lists_every_roi(
    structure_set: pydicom.Dataset, renamer: Renamer, tmp_path: Path
) -> None:
    result = rename_rtstruct(tmp_path / "in.dcm", structure_set, renamer, tmp_path)
    sr = pydicom.dcmread(result.report)  # type: ignore[arg-type]
    assert sr.SOPClassUID == COMPREHENSIVE_SR_STORAGE
    assert sr.StudyInstanceUID == structure_set.StudyInstanceUID
    assert "AI draft" in sr.ContentSequence[0].TextValue
    rois = sr.ContentSequence[1:]
    assert len(rois) == len(ROIS)
    first = {i.ConceptNameCodeSequence[0].CodeValue: i for i in rois[0].ContentSequence}
    assert first["ROIOLD"].TextValue == "BODY" and first["ROINEW"].TextValue == "External"
    assert first["ROIMETH"].TextValue == "rules"
    assert float(first["ROICONF"].MeasuredValueSequence[0].NumericValue) > 0.5
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {
        r.ReferencedSOPInstanceUID
        for s in evidence.ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert structure_set.SOPInstanceUID in referenced


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy not installed")
def test_mapping_sr_passes_dciodvfy(
    structure_set: pydicom.Dataset, renamer: Renamer, tmp_path: Path
) -> None:
    result = rename_rtstruct(tmp_path / "in.dcm", structure_set, renamer, tmp_path)
    out = subprocess.run(
        [str(DCIODVFY), str(result.report)], capture_output=True, text=True, timeout=60
    )
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert errors == [], errors


def test_dry_run_writes_nothing(
    structure_set: pydicom.Dataset, renamer: Renamer, tmp_path: Path
) -> None:
    result = rename_rtstruct(tmp_path / "in.dcm", structure_set, renamer, None)
    assert result.renamed is None and len(result.mappings) == len(ROIS)
    assert not list(tmp_path.iterdir())


def test_not_a_structure_set_is_refused() -> None:
    with pytest.raises(RTStructError):
        roi_names(pydicom.Dataset())


def _context(tmp_path: Path, inputs: list[Path], **params: object) -> EngineContext:
    return EngineContext(
        job_id=7, input_files=inputs, output_dir=tmp_path / "out", params=dict(params)
    )


def test_engine_outputs_and_notes(structure_set: pydicom.Dataset, tmp_path: Path) -> None:
    path = write_dataset(structure_set, tmp_path / "in" / "rs.dcm")
    ctx = _context(tmp_path, [path])
    engine = create_engine("tg263_rename")
    assert engine.name == "tg263_rename" and engine.inputs == ("rtstruct",)
    engine.run(ctx)
    assert len(ctx.outputs) == 2
    modalities = sorted(pydicom.dcmread(p).Modality for p in ctx.outputs)
    assert modalities == ["RTSTRUCT", "SR"]
    assert len(ctx.notes) == len(ROIS)
    assert "'BODY' -> 'External' (rules" in ctx.notes[0]


def test_engine_uses_site_overrides(structure_set: pydicom.Dataset, tmp_path: Path) -> None:
    path = write_dataset(structure_set, tmp_path / "rs.dcm")
    overrides = tmp_path / "site.yaml"
    overrides.write_text("names:\n  Ring 60: zRing_PTV60\n", encoding="utf-8")
    ctx = _context(tmp_path, [path], tg263_overrides=str(overrides))
    TG263RenameEngine().run(ctx)
    renamed = next(
        pydicom.dcmread(p) for p in ctx.outputs if pydicom.dcmread(p).Modality == "RTSTRUCT"
    )
    assert "zRing_PTV60" in [name for _, name in roi_names(renamed)]
    assert any("(override, 1.00)" in note for note in ctx.notes)


def test_engine_without_rtstruct_fails_permanently(tmp_path: Path) -> None:
    ct = make_ct_series(n_slices=2, rows=16, cols=16)
    path = write_dataset(ct.datasets[0], tmp_path / "ct.dcm")
    with pytest.raises(EngineError, match="no RT Structure Set"):
        TG263RenameEngine().run(_context(tmp_path, [path]))


def test_engine_reports_a_bad_overrides_file(
    structure_set: pydicom.Dataset, tmp_path: Path
) -> None:
    path = write_dataset(structure_set, tmp_path / "rs.dcm")
    with pytest.raises(EngineError, match="overrides"):
        TG263RenameEngine().run(
            _context(tmp_path, [path], tg263_overrides=str(tmp_path / "nope.yaml"))
        )
