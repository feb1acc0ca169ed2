"""Masks on a CT -> a new RT Structure Set instance marked as an AI draft.

rt-utils fills the patient and study attributes and the referenced frame of reference,
study, series and contour image sequences, and traces the contours (OpenCV); this module
then fixes what rt-utils gets wrong or leaves out, so that the object passes dciodvfy:

* explicit VR little endian file meta (rt-utils writes implicit VR through deprecated
  FileDataset attributes);
* the Frame of Reference module (FrameOfReferenceUID, PositionReferenceIndicator);
* new Series and SOP Instance UIDs, series number, description, date and time;
* Manufacturer and software from rtnode (rt-utils writes its own names);
* type 2 attributes rt-utils omits (OperatorsName, ROIInterpreter, AccessionNumber...);
* contour points from our own pixel-to-patient mapping (rt-utils uses the row spacing
  for columns and a float32 matrix), as DS strings of at most 16 characters;
* NumberOfContourPoints as an integer, ContourNumber, RTROIInterpretedType and
  ROIGenerationAlgorithm AUTOMATIC per ROI; rt-utils' private observation text dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from engines.base import Structure
from engines.dicom_output import RT_STRUCTURE_SET_STORAGE, copy_patient_study, new_file_meta
from engines.rtstruct._rtutils import ds_helper
from engines.rtstruct.contours import (
    SIMPLIFY_TOLERANCE_PX,
    FloatArray,
    SliceGeometry,
    fits_explicit_vr,
    format_contour_data,
    simplify_polygon,
    slice_polygons,
)
from engines.volume import CTVolume

logger = logging.getLogger(__name__)

DRAFT_DESCRIPTION = "AI DRAFT - REVIEW REQUIRED"
_CONTOUR_DATA = 0x30060050

_PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
)


def _package_version() -> str:
    try:
        return metadata.version("rtnode")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class RTStructOptions:
    """How the new structure set is labelled; every value has a default."""

    label: str = "AI DRAFT"
    series_description: str = DRAFT_DESCRIPTION
    manufacturer: str = "rtnode"
    software_version: str = field(default_factory=_package_version)
    algorithm_name: str = "rtnode"
    series_number: int = 901
    sop_instance_uid: str | None = None
    created_at: dt.datetime | None = None


def write_rtstruct(
    ct: CTVolume,
    structures: Sequence[Structure],
    out_path: Path,
    *,
    label: str = "AI DRAFT",
    series_description: str = DRAFT_DESCRIPTION,
    manufacturer: str = "rtnode",
    software_version: str | None = None,
    algorithm_name: str = "rtnode",
    series_number: int = 901,
    sop_instance_uid: str | None = None,
    created_at: dt.datetime | None = None,
) -> Dataset:
    """Write ``structures`` as a new RT Structure Set referencing ``ct``'s series.

    Parameters
    ----------
    ct
        The CT the masks were drawn on (headers only are used).
    structures
        Masks in ``ct``'s (slice, row, column) order; empty masks are skipped.
    out_path
        Destination file (DICOM file format, explicit VR little endian).
    label, series_description
        StructureSetLabel (16 characters at most) and SeriesDescription; both mark the
        object as an AI draft by default.
    software_version
        SoftwareVersions; the installed rtnode version when omitted.
    sop_instance_uid
        The new SOP Instance UID; generated when omitted.
    created_at
        Structure set, series and instance creation time (local); now when omitted.

    Returns
    -------
    Dataset
        The written dataset.
    """
    options = RTStructOptions(
        label=label,
        series_description=series_description,
        manufacturer=manufacturer,
        software_version=software_version or _package_version(),
        algorithm_name=algorithm_name,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        created_at=created_at,
    )
    ds = build_rtstruct(ct, structures, options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(out_path, ds, enforce_file_format=True)
    logger.info("RTSTRUCT %s written: %d ROIs", out_path.name, len(ds.StructureSetROISequence))
    return ds


def build_rtstruct(
    ct: CTVolume, structures: Sequence[Structure], options: RTStructOptions | None = None
) -> Dataset:
    """The RT Structure Set dataset for ``structures`` on ``ct`` (not written)."""
    options = options or RTStructOptions()
    _check_structures(ct, structures)
    base = _rt_utils_base(ct)
    ds = _fixed_header(base, ct, options)
    frame_uid = str(ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    geometries = [SliceGeometry.of(ct, k) for k in range(ct.shape[0])]
    number = 0
    for structure in structures:
        if not structure.mask.any():
            logger.warning("structure %s is empty; not written", structure.name)
            continue
        number += 1
        ds.StructureSetROISequence.append(_ss_roi(number, structure, frame_uid, options))
        ds.ROIContourSequence.append(_roi_contour(number, structure, ct, geometries))
        ds.RTROIObservationsSequence.append(_observation(number, structure))
    return ds


def _check_structures(ct: CTVolume, structures: Sequence[Structure]) -> None:
    names = [s.name for s in structures]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate structure names: {', '.join(duplicates)}")
    for s in structures:
        if s.mask.shape != ct.shape:
            raise ValueError(f"mask of {s.name} has shape {s.mask.shape}, CT is {ct.shape}")


def _reference_headers(ct: CTVolume) -> list[Dataset]:
    """The CT headers as rt-utils wants them (it reads some type 2 attributes unguarded)."""
    first = Dataset()
    first.update(ct.headers[0])
    for keyword in ("StudyDate", "StudyTime", "StudyID"):
        if keyword not in first:
            setattr(first, keyword, "")
    return [first, *ct.headers[1:]]


def _rt_utils_base(ct: CTVolume) -> Dataset:
    """rt-utils' study, series, patient and referenced-frame modules for ``ct``.

    Its ``create_rtstruct_dataset`` is not used: it sets FileDataset.is_little_endian and
    is_implicit_VR (deprecated in pydicom 3) and implicit VR; the file meta is ours.
    """
    headers = _reference_headers(ct)
    base = Dataset()
    ds_helper.add_sequence_lists_to_ds(base)
    ds_helper.add_study_and_series_information(base, headers)
    ds_helper.add_patient_information(base, headers)
    ds_helper.add_refd_frame_of_ref_sequence(base, headers)
    return base


def _fixed_header(ds: Dataset, ct: CTVolume, options: RTStructOptions) -> Dataset:
    for keyword in (*_PATIENT_STUDY_OPTIONAL, "SeriesDate", "SeriesTime"):
        if keyword in ds:
            del ds[keyword]
    sop_uid = options.sop_instance_uid or generate_uid()
    ds.file_meta = new_file_meta(RT_STRUCTURE_SET_STORAGE, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, sop_uid
    _copy_patient_study(ds, ct.headers[0])
    _copy_frame_of_reference(ds, ct.headers[0])
    _set_series(ds, options)
    _set_structure_set(ds, options)
    return ds


def _copy_patient_study(ds: Dataset, ct_header: Dataset) -> None:
    ds.SpecificCharacterSet = ct_header.get("SpecificCharacterSet", "ISO_IR 100")
    copy_patient_study(ds, ct_header, _PATIENT_STUDY_OPTIONAL)


def _copy_frame_of_reference(ds: Dataset, ct_header: Dataset) -> None:
    """Frame of Reference module, part of the current RT Structure Set IOD (dciodvfy checks it)."""
    ds.FrameOfReferenceUID = ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    ds.PositionReferenceIndicator = ct_header.get("PositionReferenceIndicator", "")


def _set_series(ds: Dataset, options: RTStructOptions) -> None:
    created = options.created_at or dt.datetime.now()
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = options.series_number
    ds.SeriesDescription = options.series_description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = options.manufacturer
    ds.ManufacturerModelName = "rtnode"
    ds.SoftwareVersions = options.software_version[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time


def _set_structure_set(ds: Dataset, options: RTStructOptions) -> None:
    ds.StructureSetLabel = options.label[:16]
    ds.StructureSetName = options.series_description[:64]
    ds.StructureSetDescription = (
        f"Generated automatically by {options.algorithm_name}; draft for clinical review"
    )
    ds.InstanceNumber = 1
    ds.ApprovalStatus = "UNAPPROVED"


def _ss_roi(number: int, structure: Structure, frame_uid: str, options: RTStructOptions) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = structure.name[:64]
    if structure.description:
        item.ROIDescription = structure.description[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"{options.algorithm_name} (AI draft, review required)"[:64]
    return item


def _roi_contour(
    number: int, structure: Structure, ct: CTVolume, geometries: list[SliceGeometry]
) -> Dataset:
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = [int(c) for c in structure.color_rgb]
    contours: list[Dataset] = []
    for k in np.flatnonzero(structure.mask.any(axis=(1, 2))):
        header = ct.headers[int(k)]
        for polygon in slice_polygons(structure.mask[k]):
            values = _contour_values(polygon, geometries[int(k)])
            contours.append(_contour(len(contours) + 1, header, values))
    item.ContourSequence = contours
    return item


def _contour_values(polygon: FloatArray, geometry: SliceGeometry) -> list[str]:
    """DS strings of ``polygon``, simplified further only if too long for explicit VR."""
    values = format_contour_data(geometry.to_patient(polygon))
    tolerance = SIMPLIFY_TOLERANCE_PX
    while not fits_explicit_vr(values):  # rare: a very long outline on a fine grid
        tolerance *= 2.0
        logger.warning("contour too long for one DS element; simplifying at %.1f px", tolerance)
        coarse = simplify_polygon(polygon, tolerance)
        values = format_contour_data(geometry.to_patient(coarse))
    return values


def _contour(number: int, header: Dataset, values: list[str]) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID = header.SOPClassUID
    image.ReferencedSOPInstanceUID = header.SOPInstanceUID
    contour = Dataset()
    contour.ContourNumber = number
    contour.ContourImageSequence = [image]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = len(values) // 3
    # The values are already valid DS strings (format_contour_data): store them as the
    # encoded bytes pydicom would write, so it neither re-parses nor re-validates
    # ~700,000 numbers per structure set. pydicom decodes them lazily if read.
    contour[_CONTOUR_DATA] = _raw_ds(_CONTOUR_DATA, values)
    # Declare the item already explicit-VR little endian, the encoding of the file we
    # write, so dcmwrite copies the raw bytes instead of decoding every element.
    contour.set_original_encoding(False, True, contour._character_set)
    return contour


def _raw_ds(tag: int, values: list[str]) -> RawDataElement:
    encoded = "\\".join(values).encode("ascii")
    if len(encoded) % 2:
        encoded += b" "
    return RawDataElement(Tag(tag), "DS", len(encoded), encoded, 0, False, True)


def _observation(number: int, structure: Structure) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.ROIObservationLabel = structure.name[:16]
    item.RTROIInterpretedType = structure.interpreted_type
    item.ROIInterpreter = ""
    return item
