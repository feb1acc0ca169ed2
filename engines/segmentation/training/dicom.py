"""Phantom scans as DICOM CT series (for benchmarks, evaluation and peer tests).

Every UID is generated and every name is made up: no patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engines.dicom_output import CT_IMAGE_STORAGE, new_file_meta
from engines.segmentation.training.data import acquisition_geometry
from engines.segmentation.training.phantom import Acquisition, FloatArray


def ct_datasets(
    hu: FloatArray,
    acq: Acquisition,
    *,
    patient_id: str = "RTNODE-PHANTOM",
    study_uid: str | None = None,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of a phantom scan, in volume order."""
    geometry = acquisition_geometry(acq)
    shared = _shared(patient_id, study_uid or generate_uid(), acq, geometry.spacing_mm)
    shared.ImageOrientationPatient = [
        _ds(v) for v in (*geometry.row_cosines, *geometry.column_cosines)
    ]
    out = []
    for k, image in enumerate(hu):
        position = (float(acq.xs[0]), float(acq.ys[0]), float(acq.zs[k]))
        out.append(_slice(shared, image, position, k))
    return out


def write_ct(datasets: list[Dataset], directory: Path) -> list[Path]:
    """Write ``CT_0000.dcm``... and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = directory / f"CT_{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _shared(
    patient_id: str, study_uid: str, acq: Acquisition, spacing_mm: tuple[float, float, float]
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = "PHANTOM^THORAX", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.StudyInstanceUID, ds.StudyID = study_uid, "1"
    ds.StudyDate, ds.StudyTime = "20240115", "093000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.StudyDescription = "SYNTHETIC THORAX PHANTOM"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", generate_uid(), 2
    ds.SeriesDescription = "PHANTOM CHEST"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
    ds.Manufacturer, ds.ManufacturerModelName = "rtnode", "thorax phantom"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS" if acq.xs[-1] > acq.xs[0] else "FFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.ConvolutionKernel = "120", "STANDARD"
    ds.SliceThickness = _ds(spacing_mm[0])
    ds.PixelSpacing = [_ds(spacing_mm[1]), _ds(spacing_mm[2])]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _slice(
    shared: Dataset, image: FloatArray, position: tuple[float, float, float], k: int
) -> Dataset:
    ds = Dataset()
    ds.update(shared)
    sop_uid = generate_uid()
    ds.file_meta = new_file_meta(CT_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position[2])
    ds.Rows, ds.Columns = image.shape
    ds.PixelData = np.clip(np.rint(image + 1024.0), 0, 4095).astype(np.int16).tobytes()
    return ds


def _ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
