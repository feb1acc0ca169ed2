"""The synthetic DICOM builders produce readable, self-consistent objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from engines.volume import CTVolume
from tests.factories import (
    CT_IMAGE_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    SR_STORAGE,
    dose_array_gy,
    make_ct_series,
    make_encapsulated_pdf,
    make_rtdose,
    make_rtplan,
    make_rtstruct,
    make_text_sr,
    write_dataset,
    write_series,
)


def test_ct_series_reads_back_as_a_volume_with_plausible_hu(tmp_path: Path) -> None:
    series = make_ct_series(n_slices=6, rows=128, cols=128, seed=3)
    volume = CTVolume.from_files(write_series(series, tmp_path))

    assert volume.shape == series.shape == (6, 128, 128)
    hu = volume.hu
    assert np.median(hu[~series.body & ~series.couch]) == pytest.approx(-1000, abs=10)
    assert np.median(hu[series.lung_l]) == pytest.approx(-850, abs=10)
    assert np.median(hu[series.lung_r]) == pytest.approx(-850, abs=10)
    tissue = series.body & ~series.lung_l & ~series.lung_r & ~series.masks["trachea"]
    assert -150 < np.median(hu[tissue]) < 100
    assert hu[series.body].max() > 500  # bone
    assert -400 < np.median(hu[series.couch]) < 200
    lung = hu[series.lung_l]
    noise_sigma_hu = 1.4826 * np.median(np.abs(lung - np.median(lung)))  # robust to vessels
    assert 10 < noise_sigma_hu < 20


def test_ct_slices_share_series_and_have_own_uids() -> None:
    series = make_ct_series(n_slices=4, rows=64, cols=64)
    first = series.datasets[0]

    assert {d.SOPClassUID for d in series.datasets} == {CT_IMAGE_STORAGE}
    assert len({d.SOPInstanceUID for d in series.datasets}) == 4
    assert {d.SeriesInstanceUID for d in series.datasets} == {first.SeriesInstanceUID}
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.RescaleIntercept == -1024 and first.RescaleSlope == 1


def test_unsigned_pixel_data_decodes_to_the_same_hu() -> None:
    signed = make_ct_series(n_slices=2, rows=64, cols=64, seed=5)
    unsigned = make_ct_series(n_slices=2, rows=64, cols=64, seed=5, signed=False)

    hu_signed = CTVolume.from_datasets(signed.datasets).hu
    hu_unsigned = CTVolume.from_datasets(unsigned.datasets).hu
    assert unsigned.datasets[0].PixelRepresentation == 0
    assert np.abs(hu_signed - hu_unsigned).max() <= 100  # only clipped air noise differs
    assert np.mean(hu_signed == hu_unsigned) > 0.95


def test_ffs_series_lists_slices_along_the_normal() -> None:
    series = make_ct_series(n_slices=5, rows=64, cols=64, patient_position="FFS")

    z = series.z_positions_mm()
    assert z == sorted(z, reverse=True)  # normal is -z for FFS
    assert [float(v) for v in series.datasets[0].ImageOrientationPatient] == [-1, 0, 0, 0, 1, 0]
    assert series.datasets[0].PatientPosition == "FFS"


def test_rt_objects_reference_each_other(tmp_path: Path) -> None:
    ct = make_ct_series(n_slices=8, rows=64, cols=64)
    rtstruct = make_rtstruct(ct)
    plan = make_rtplan(ct, rtstruct, prescription_gy=50.0, fractions=25)
    dose = make_rtdose(ct, plan, max_dose_gy=52.0)

    for ds, sop_class in (
        (rtstruct, RT_STRUCTURE_SET_STORAGE),
        (plan, RT_PLAN_STORAGE),
        (dose, RT_DOSE_STORAGE),
    ):
        back = pydicom.dcmread(write_dataset(ds, tmp_path / f"{ds.Modality}.dcm"))
        assert back.SOPClassUID == sop_class
        assert back.StudyInstanceUID == ct.study_uid
        assert back.PatientID == ct.patient_id
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_uid
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == {
        d.SOPInstanceUID for d in ct.datasets
    }
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == (
        rtstruct.SOPInstanceUID
    )
    assert float(plan.DoseReferenceSequence[0].TargetPrescriptionDose) == 50.0
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert dose_array_gy(dose).max() == pytest.approx(52.0, rel=0.02)


@pytest.mark.parametrize("sop_class", ["basic", "enhanced", "comprehensive"])
def test_text_sr_carries_the_text(sop_class: str, tmp_path: Path) -> None:
    ds = make_text_sr("T2N1 adenocarcinoma, left upper lobe", "P1", "1.2.3", sop_class)  # type: ignore[arg-type]

    back = pydicom.dcmread(write_dataset(ds, tmp_path / "sr.dcm"))
    assert back.SOPClassUID == SR_STORAGE[sop_class]
    assert back.ContentSequence[0].TextValue == "T2N1 adenocarcinoma, left upper lobe"
    assert (back.PatientID, back.StudyInstanceUID) == ("P1", "1.2.3")


def test_encapsulated_pdf_holds_a_pdf(tmp_path: Path) -> None:
    ds = make_encapsulated_pdf("Referral: NSCLC (left)", patient_id="P2")

    back = pydicom.dcmread(write_dataset(ds, tmp_path / "doc.dcm"))
    document = bytes(back.EncapsulatedDocument)[: int(back.EncapsulatedDocumentLength)]
    assert back.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert document.startswith(b"%PDF-1.4") and document.rstrip().endswith(b"%%EOF")
    assert b"Referral: NSCLC \\(left\\)" in document
