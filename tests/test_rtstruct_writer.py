"""The RTSTRUCT writer: references, labels, DS formatting and exact geometry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from engines.base import EngineContext, EngineError, Structure
from engines.registry import create_engine
from engines.rtstruct.engine import RTStructWriterEngine
from engines.rtstruct.rasterize import rasterize_rtstruct
from engines.rtstruct.writer import RT_STRUCTURE_SET_STORAGE, write_rtstruct
from engines.volume import CTVolume
from tests.factories import CTSeries, make_ct_series, write_series

GEOMETRIES: dict[str, dict[str, Any]] = {
    "hfs": {"n_slices": 6, "rows": 96, "cols": 96},
    "ffs": {"n_slices": 6, "rows": 96, "cols": 96, "patient_position": "FFS"},
    "non_square": {"n_slices": 5, "rows": 120, "cols": 80, "pixel_spacing_mm": (3.7, 5.9)},
}


def _structures(series: CTSeries) -> list[Structure]:
    return [
        Structure("External", series.body, (0, 255, 0), "EXTERNAL", "outline"),
        Structure("Lung_L", series.lung_l, (0, 200, 255), "ORGAN"),
        Structure("Lung_R", series.lung_r, (255, 200, 0), "ORGAN"),
    ]


def _write(series: CTSeries, path: Path, structures: list[Structure] | None = None) -> Dataset:
    volume = CTVolume.from_datasets(series.datasets)
    write_rtstruct(
        volume,
        structures or _structures(series),
        path,
        software_version="9.9",
        created_at=dt.datetime(2024, 5, 6, 7, 8, 9),
    )
    return pydicom.dcmread(path)


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)
        else:
            yield elem


def test_header_references_the_ct_and_marks_a_draft(tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES["hfs"])
    ct = series.datasets[0]

    ds = _write(series, tmp_path / "rs.dcm")

    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == RT_STRUCTURE_SET_STORAGE
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SeriesInstanceUID != ct.SeriesInstanceUID
    assert ds.SOPInstanceUID not in {d.SOPInstanceUID for d in series.datasets}
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyID"):
        assert ds[keyword].value == ct[keyword].value
    assert ds.Modality == "RTSTRUCT" and ds.Manufacturer == "rtnode"
    assert ds.SoftwareVersions == "9.9"
    assert "DRAFT" in ds.StructureSetLabel and "REVIEW" in ds.SeriesDescription
    assert (ds.StructureSetDate, ds.StructureSetTime) == ("20240506", "070809")
    assert ds.SeriesNumber == 901 and ds.InstanceNumber == 1
    assert ds.ApprovalStatus == "UNAPPROVED"
    assert "InstitutionName" not in ds  # rt-utils' own name is gone


def test_frame_and_image_references(tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES["ffs"])

    ds = _write(series, tmp_path / "rs.dcm")

    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ds.FrameOfReferenceUID == series.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == series.study_uid
    refd_series = study.RTReferencedSeriesSequence[0]
    assert refd_series.SeriesInstanceUID == series.series_uid
    assert [i.ReferencedSOPInstanceUID for i in refd_series.ContourImageSequence] == [
        d.SOPInstanceUID for d in series.datasets
    ]
    sop_uids = {d.SOPInstanceUID for d in series.datasets}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in sop_uids


def test_roi_modules_are_complete(tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES["hfs"])

    ds = _write(series, tmp_path / "rs.dcm")

    names = [r.ROIName for r in ds.StructureSetROISequence]
    assert names == ["External", "Lung_L", "Lung_R"]
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert roi.ReferencedFrameOfReferenceUID == series.frame_of_reference_uid
    types = [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence]
    assert types == ["EXTERNAL", "ORGAN", "ORGAN"]
    assert all(o.ROIInterpreter == "" for o in ds.RTROIObservationsSequence)
    colours = [list(r.ROIDisplayColor) for r in ds.ROIContourSequence]
    assert colours == [[0, 255, 0], [0, 200, 255], [255, 200, 0]]
    for roi in ds.ROIContourSequence:
        for number, contour in enumerate(roi.ContourSequence, start=1):
            assert contour.ContourNumber == number
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.NumberOfContourPoints * 3 == len(contour.ContourData)


def test_every_decimal_string_fits_16_characters(tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES["non_square"])

    ds = _write(series, tmp_path / "rs.dcm")

    ds_values = [v for e in _walk(ds) if e.VR == "DS" for v in (e.value if e.VM > 1 else [e.value])]
    assert len(ds_values) > 1000
    assert max(len(getattr(v, "original_string", str(v))) for v in ds_values) <= 16


def test_contours_lie_on_their_image_planes(tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES["ffs"])
    z_by_uid = {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in series.datasets}

    ds = _write(series, tmp_path / "rs.dcm")

    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            z = np.asarray(contour.ContourData, dtype=float)[2::3]
            expected = z_by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(z, expected, atol=0.01)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_contours_rasterize_back_to_the_masks(geometry: str, tmp_path: Path) -> None:
    series = make_ct_series(**GEOMETRIES[geometry])

    ds = _write(series, tmp_path / "rs.dcm")

    masks = rasterize_rtstruct(ds, CTVolume.from_datasets(series.datasets))
    for structure in _structures(series):
        np.testing.assert_array_equal(masks[structure.name], structure.mask)


def test_holes_and_islands_survive_the_round_trip(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=2, rows=64, cols=64)
    rr, cc = np.mgrid[:64, :64]
    radius = np.hypot(rr - 32, cc - 32)
    ring = (radius < 20) & (radius > 10) | (radius < 4)  # a ring with an island inside
    mask = np.stack([ring, np.zeros_like(ring)])

    ds = _write(series, tmp_path / "rs.dcm", [Structure("Ring", mask, (1, 2, 3), "ORGAN")])

    assert len(ds.ROIContourSequence[0].ContourSequence) == 3
    back = rasterize_rtstruct(ds, CTVolume.from_datasets(series.datasets))["Ring"]
    np.testing.assert_array_equal(back, mask)


def test_very_long_outline_still_fits_explicit_vr(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=1, rows=512, cols=512)
    rr, cc = np.mgrid[:512, :512]
    jagged = np.hypot(rr - 256, cc - 256) < 200 + 3 * ((rr + cc) % 2)  # serrated edge
    structure = Structure("Jagged", jagged[None], (1, 2, 3), "ORGAN")

    ds = _write(series, tmp_path / "rs.dcm", [structure])

    contour = ds.ROIContourSequence[0].ContourSequence[0]
    assert ds.ROIContourSequence[0].ContourSequence[0]["ContourData"].VR == "DS"
    assert len("\\".join(c.original_string for c in contour.ContourData)) <= 65534


def test_empty_masks_are_skipped_and_bad_input_refused(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=2, rows=64, cols=64)
    volume = CTVolume.from_datasets(series.datasets)
    empty = Structure("Heart", np.zeros(series.shape, dtype=bool), (1, 2, 3), "ORGAN")

    ds = write_rtstruct(volume, [*_structures(series), empty], tmp_path / "rs.dcm")

    assert [r.ROIName for r in ds.StructureSetROISequence] == ["External", "Lung_L", "Lung_R"]
    with pytest.raises(ValueError, match="duplicate"):
        write_rtstruct(volume, _structures(series) * 2, tmp_path / "x.dcm")
    wrong = Structure("Small", np.ones((1, 4, 4), dtype=bool), (1, 2, 3), "ORGAN")
    with pytest.raises(ValueError, match="shape"):
        write_rtstruct(volume, [wrong], tmp_path / "y.dcm")


def _context(series: CTSeries, tmp_path: Path, structures: list[Structure]) -> EngineContext:
    files = write_series(series, tmp_path / "ct")
    return EngineContext(
        job_id=7, input_files=files, output_dir=tmp_path / "out", structures=structures
    )


def test_engine_writes_rs_file_named_after_its_uid(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=3, rows=64, cols=64)
    empty = Structure("Heart", np.zeros(series.shape, dtype=bool), (1, 2, 3), "ORGAN")
    ctx = _context(series, tmp_path, [*_structures(series), empty])

    RTStructWriterEngine().run(ctx)

    (path,) = ctx.outputs
    ds = pydicom.dcmread(path)
    assert path.name == f"RS_{ds.SOPInstanceUID}.dcm"
    assert path.parent == tmp_path / "out"
    assert len(ds.StructureSetROISequence) == 3
    assert any("Heart" in note for note in ctx.notes)


def test_engine_refuses_to_write_nothing(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=2, rows=32, cols=32)
    empty = Structure("Heart", np.zeros(series.shape, dtype=bool), (1, 2, 3), "ORGAN")

    with pytest.raises(EngineError, match="no structures"):
        RTStructWriterEngine().run(_context(series, tmp_path, []))
    with pytest.raises(EngineError, match="empty"):
        RTStructWriterEngine().run(_context(series, tmp_path, [empty]))


def test_registry_builds_the_engine() -> None:
    engine = create_engine("rtstruct_writer", label="AI DRAFT 2")

    assert isinstance(engine, RTStructWriterEngine)
    assert (engine.inputs, engine.outputs) == (("structures",), ("rtstruct",))
    assert engine.label == "AI DRAFT 2"
