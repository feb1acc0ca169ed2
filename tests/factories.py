"""Synthetic DICOM objects for tests: CT series, RTSTRUCT, RTPLAN, RTDOSE, SR and PDF.

No patient data: every UID is generated and every name is made up. The CT is a numeric
thorax phantom defined in DICOM patient coordinates (LPS: +x patient left, +y posterior,
+z superior), so head-first and feet-first series show the same anatomy and the
ground-truth masks are exact at voxel centres.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

from engines.segmentation.training.phantom import Acquisition, Anatomy

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
SR_STORAGE = {
    "basic": "1.2.840.10008.5.1.4.1.1.88.11",
    "enhanced": "1.2.840.10008.5.1.4.1.1.88.22",
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
}
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"

DEFAULT_PATIENT_ID = "RTNODE-TEST-0001"
DEFAULT_PATIENT_NAME = "PHANTOM^THORAX"
STUDY_DATE = "20240115"
STUDY_TIME = "093000"
FOV_MM = 500.0

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]

_IOP = {"HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}


# --------------------------------------------------------------------------- CT series


@dataclass
class CTSeries:
    """A synthetic CT series and its ground truth.

    ``datasets`` and every mask in ``masks`` share one order: ascending position along the
    slice normal, i.e. the order of :class:`engines.volume.CTVolume`. Masks are boolean
    (slice, row, column) arrays keyed ``body``, ``lung_l``, ``lung_r``, ``couch``,
    ``trachea``.
    """

    datasets: list[Dataset]
    masks: dict[str, BoolArray]
    spacing_mm: tuple[float, float, float]
    patient_position: str

    @property
    def body(self) -> BoolArray:
        return self.masks["body"]

    @property
    def lung_l(self) -> BoolArray:
        return self.masks["lung_l"]

    @property
    def lung_r(self) -> BoolArray:
        return self.masks["lung_r"]

    @property
    def couch(self) -> BoolArray:
        return self.masks["couch"]

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        return (len(self.datasets), int(first.Rows), int(first.Columns))

    @property
    def patient_id(self) -> str:
        return str(self.datasets[0].PatientID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    def z_positions_mm(self) -> list[float]:
        return [float(d.ImagePositionPatient[2]) for d in self.datasets]


@dataclass(frozen=True)
class _Grid:
    """Patient x of each column, y of each row and z of each slice (volume order), mm."""

    xs: FloatArray
    ys: FloatArray
    zs: list[float]
    origin_xy: tuple[float, float]


def make_ct_series(
    n_slices: int = 40,
    rows: int = 512,
    cols: int = 512,
    pixel_spacing_mm: tuple[float, float] | None = None,
    slice_thickness_mm: float = 3.0,
    patient_position: Literal["HFS", "FFS"] = "HFS",
    seed: int = 0,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_uid: str | None = None,
    series_description: str = "CHEST",
    series_number: int = 2,
    noise_sigma_hu: float = 15.0,
    z_centre_mm: float = -120.0,
    signed: bool = True,
    gantry_tilt_deg: float = 0.0,
) -> CTSeries:
    """Build a thorax CT series in memory.

    ``pixel_spacing_mm`` is (row spacing, column spacing) as in DICOM PixelSpacing; the
    default fits a 500 mm field of view. ``gantry_tilt_deg`` shifts each slice along y
    as a tilted acquisition would (the volume reader must refuse it). ``signed`` selects
    int16 (PixelRepresentation 1) or uint16 pixel data; both use intercept -1024.
    """
    if patient_position not in _IOP:
        raise ValueError(f"patient_position must be HFS or FFS, not {patient_position!r}")
    spacing = pixel_spacing_mm or (FOV_MM / rows, FOV_MM / cols)
    row_mm, col_mm = round(spacing[0], 4), round(spacing[1], 4)
    grid = _grid(n_slices, rows, cols, (row_mm, col_mm), slice_thickness_mm, patient_position)
    grid = _with_z_offset(grid, z_centre_mm)
    rng = np.random.default_rng(seed)
    images, masks = _render(grid, noise_sigma_hu, rng)
    shared = _ct_shared(patient_id, patient_name, study_uid, series_description, series_number)
    shared.PatientPosition = patient_position
    shared.ImageOrientationPatient = [_ds(v) for v in _IOP[patient_position]]
    shared.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
    shared.SliceThickness = _ds(slice_thickness_mm)
    shared.GantryDetectorTilt = _ds(gantry_tilt_deg)
    tilt_step_mm = math.tan(math.radians(gantry_tilt_deg))
    datasets = []
    for k, image in enumerate(images):
        y0 = grid.origin_xy[1] + tilt_step_mm * (grid.zs[k] - grid.zs[0])
        position = (grid.origin_xy[0], y0, grid.zs[k])
        datasets.append(_ct_slice(shared, image, position, k, signed))
    return CTSeries(
        datasets=datasets,
        masks=masks,
        spacing_mm=(float(slice_thickness_mm), row_mm, col_mm),
        patient_position=patient_position,
    )


def write_series(series: CTSeries, directory: Path) -> list[Path]:
    """Write every slice as ``CT_0000.dcm``... (DICOM file format) and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(series.datasets):
        path = directory / f"CT_{k:04d}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    return paths


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write one dataset in the DICOM file format (explicit VR little endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _grid(
    n_slices: int,
    rows: int,
    cols: int,
    spacing_mm: tuple[float, float],
    thickness_mm: float,
    position: str,
) -> _Grid:
    row_mm, col_mm = spacing_mm
    x_sign = 1.0 if position == "HFS" else -1.0
    x0 = round(-x_sign * (cols - 1) / 2.0 * col_mm, 4)
    y0 = round(-(rows - 1) / 2.0 * row_mm, 4)
    xs = (x0 + x_sign * col_mm * np.arange(cols)).astype(np.float32)
    ys = (y0 + row_mm * np.arange(rows)).astype(np.float32)
    offsets = [round((k - (n_slices - 1) / 2.0) * thickness_mm, 4) for k in range(n_slices)]
    zs = offsets if position == "HFS" else offsets[::-1]  # ascending along the normal
    return _Grid(xs=xs, ys=ys, zs=zs, origin_xy=(x0, y0))


def _with_z_offset(grid: _Grid, z_centre_mm: float) -> _Grid:
    zs = [round(z + z_centre_mm, 4) for z in grid.zs]
    return _Grid(xs=grid.xs, ys=grid.ys, zs=zs, origin_xy=grid.origin_xy)


# --------------------------------------------------------------------------- phantom


@dataclass(frozen=True)
class _Ellipse:
    """A (super-)ellipse in the axial plane, patient mm."""

    cx: float
    cy: float
    ax: float
    ay: float
    power: float = 2.0

    def mask(self, xs: FloatArray, ys: FloatArray) -> BoolArray:
        out = np.zeros((ys.size, xs.size), dtype=bool)
        if self.ax <= 0 or self.ay <= 0:
            return out
        dx = np.abs((xs - self.cx) / self.ax) ** self.power
        dy = np.abs((ys - self.cy) / self.ay) ** self.power
        cols, rows = np.flatnonzero(dx <= 1.0), np.flatnonzero(dy <= 1.0)
        if cols.size and rows.size:  # evaluate inside the bounding box only
            c0, c1, r0, r1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
            out[r0:r1, c0:c1] = (dy[r0:r1, None] + dx[None, c0:c1]) <= 1.0
        return out


BODY_AX_MM, BODY_AY_MM, FAT_MM = 165.0, 105.0, 12.0
COUCH_TOP_MM = BODY_AY_MM * 1.03 + 6.0  # 6..12 mm air gap under the back
CARINA_T = 0.62
_VESSELS = ((0.35, 0.2, 4.0), (-0.3, -0.35, 3.0), (0.1, 0.5, 3.5), (-0.4, 0.3, 2.5))


def _render(
    grid: _Grid, noise_sigma_hu: float, rng: np.random.Generator
) -> tuple[list[FloatArray], dict[str, BoolArray]]:
    """Paint every slice; returns HU images and ground-truth masks in volume order."""
    z_lo, z_hi = min(grid.zs), max(grid.zs)
    images: list[FloatArray] = []
    keys = ("body", "lung_l", "lung_r", "couch", "trachea")
    stacks: dict[str, list[BoolArray]] = {k: [] for k in keys}
    for z in grid.zs:
        t = 0.5 if z_hi == z_lo else (z - z_lo) / (z_hi - z_lo)
        hu, masks = _slice_phantom(grid.xs, grid.ys, t)
        noise = rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sigma_hu)
        images.append(hu + noise)
        for key in keys:
            stacks[key].append(masks[key])
    return images, {k: np.stack(v) for k, v in stacks.items()}


def _slice_phantom(
    xs: FloatArray, ys: FloatArray, t: float
) -> tuple[FloatArray, dict[str, BoolArray]]:
    """One axial slice at relative height ``t`` (0 = diaphragm, 1 = lung apex)."""
    wobble = 1.0 + 0.03 * math.sin(2.0 * math.pi * t)
    body = _Ellipse(0.0, 0.0, BODY_AX_MM * wobble, BODY_AY_MM * wobble, 2.5).mask(xs, ys)
    inner = _Ellipse(0.0, 0.0, BODY_AX_MM * wobble - FAT_MM, BODY_AY_MM * wobble - FAT_MM, 2.5)
    inner_mask = inner.mask(xs, ys)
    hu = np.full((ys.size, xs.size), -1000.0, dtype=np.float32)
    hu[body] = -100.0
    hu[inner_mask] = 40.0
    heart = _heart(t).mask(xs, ys)
    airway = _airway(xs, ys, t)
    lung_l, lung_r = (_lung(xs, ys, t, side) & inner_mask & ~heart for side in (1.0, -1.0))
    hu[lung_l | lung_r] = -850.0
    hu[_vessels(xs, ys, t) & (lung_l | lung_r)] = 40.0
    hu[airway] = -1000.0
    _paint_bones(hu, xs, ys)
    couch = _paint_couch(hu, xs, ys)
    masks = {"body": body, "lung_l": lung_l, "lung_r": lung_r, "couch": couch, "trachea": airway}
    return hu, masks


def _lung_scale(t: float) -> float:
    return 0.55 + 0.45 * math.sin(math.pi * (0.12 + 0.8 * t))


def _lung(xs: FloatArray, ys: FloatArray, t: float, side: float) -> BoolArray:
    s = _lung_scale(t)
    ax, ay = (52.0, 66.0) if side > 0 else (56.0, 68.0)
    cx = side * (22.0 + ax)  # medial border 22 mm from the midline at full size
    return _Ellipse(cx, -5.0, ax * s, ay * s).mask(xs, ys)


def _heart(t: float) -> _Ellipse:
    if t > 0.55:
        return _Ellipse(0.0, 0.0, 0.0, 0.0)
    grow = (0.55 - t) / 0.55
    return _Ellipse(14.0, -32.0, 40.0 + 12.0 * grow, 34.0 + 8.0 * grow)


def _airway(xs: FloatArray, ys: FloatArray, t: float) -> BoolArray:
    """Trachea above the carina, two main bronchi diverging just below it."""
    if t >= CARINA_T:
        return _Ellipse(0.0, -20.0, 9.0, 8.0).mask(xs, ys)
    depth = (CARINA_T - t) / 0.12
    if depth > 1.0:
        return np.zeros((ys.size, xs.size), dtype=bool)
    offset = 6.0 + 30.0 * depth
    left = _Ellipse(offset, -18.0, 6.0, 6.0).mask(xs, ys)
    return left | _Ellipse(-offset, -18.0, 6.5, 6.5).mask(xs, ys)


def _vessels(xs: FloatArray, ys: FloatArray, t: float) -> BoolArray:
    s = _lung_scale(t)
    out = np.zeros((ys.size, xs.size), dtype=bool)
    for side in (1.0, -1.0):
        cx = side * (22.0 + 54.0)
        for u, v, r in _VESSELS:
            du = 0.1 * math.sin(6.0 * t + r)
            ex = _Ellipse(cx + side * (u + du) * 50.0 * s, -5.0 + v * 60.0 * s, r, r)
            out |= ex.mask(xs, ys)
    return out


def _paint_bones(hu: FloatArray, xs: FloatArray, ys: FloatArray) -> None:
    hu[_Ellipse(0.0, 62.0, 17.0, 15.0).mask(xs, ys)] = 700.0  # vertebral body
    hu[_Ellipse(0.0, 88.0, 13.0, 11.0).mask(xs, ys)] = 500.0  # posterior arch
    hu[_Ellipse(0.0, 88.0, 7.0, 6.0).mask(xs, ys)] = 30.0  # spinal cord
    hu[_Ellipse(0.0, -86.0, 15.0, 6.0).mask(xs, ys)] = 400.0  # sternum


def _paint_couch(hu: FloatArray, xs: FloatArray, ys: FloatArray) -> BoolArray:
    """A flat couch top: two +150 HU carbon skins around a -300 HU core, 480 mm wide."""
    across = np.abs(xs) <= 240.0
    skins = ((ys >= COUCH_TOP_MM) & (ys < COUCH_TOP_MM + 3.0)) | (
        (ys >= COUCH_TOP_MM + 25.0) & (ys < COUCH_TOP_MM + 28.0)
    )
    core = (ys >= COUCH_TOP_MM + 3.0) & (ys < COUCH_TOP_MM + 25.0)
    hu[np.outer(core, across)] = -300.0
    hu[np.outer(skins, across)] = 150.0
    return np.outer(skins | core, across)


# --------------------------------------------------------------------------- CT headers


def _ct_shared(
    patient_id: str,
    patient_name: str,
    study_uid: str | None,
    series_description: str,
    series_number: int,
) -> Dataset:
    ds = Dataset()
    _patient_study(ds, patient_id, patient_name, study_uid or generate_uid())
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "CHEST"
    _equipment(ds, "RTNODE-PHANTOM", "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _ct_slice(
    shared: Dataset,
    image_hu: FloatArray,
    position_mm: tuple[float, float, float],
    index: int,
    signed: bool,
) -> Dataset:
    ds = Dataset()
    ds.update(shared)
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [_ds(v) for v in position_mm]
    ds.SliceLocation = _ds(position_mm[2])
    ds.Rows, ds.Columns = image_hu.shape
    stored = np.rint(image_hu + 1024.0)
    if signed:
        pixels = np.clip(stored, -1024, 3071).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    else:
        pixels = np.clip(stored, 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


# --------------------------------------------------------------------------- shared modules


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RTNODE_TESTS"
    return meta


def _new_instance(sop_class: str) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, STUDY_TIME
    return ds


def _patient_study(ds: Dataset, patient_id: str, patient_name: str, study_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = STUDY_DATE, STUDY_TIME
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "RT PLANNING PHANTOM"


def _copy_patient_study(ds: Dataset, source: Dataset) -> None:
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)


def _new_series(ds: Dataset, modality: str, number: int, description: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME


def _equipment(ds: Dataset, model: str, station: str) -> None:
    ds.Manufacturer = "RTNODE TESTS"
    ds.ManufacturerModelName = model
    ds.StationName = station
    ds.SoftwareVersions = "1"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _image_refs(ct: CTSeries) -> DicomSequence:
    items = []
    for d in ct.datasets:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = d.SOPClassUID, d.SOPInstanceUID
        items.append(item)
    return DicomSequence(items)


# --------------------------------------------------------------------------- RTSTRUCT


@dataclass(frozen=True)
class RoiSpec:
    """An elliptic-cylinder ROI for :func:`make_rtstruct`, in patient mm.

    ``z_range`` is the part of the series height (0 = first slice along z, 1 = last) the
    ROI covers.
    """

    name: str
    centre_xy_mm: tuple[float, float]
    semi_axes_mm: tuple[float, float]
    interpreted_type: str = "ORGAN"
    color_rgb: tuple[int, int, int] = (255, 0, 0)
    z_range: tuple[float, float] = (0.0, 1.0)


DEFAULT_ROIS: tuple[RoiSpec, ...] = (
    RoiSpec("External", (0.0, 0.0), (160.0, 100.0), "EXTERNAL", (0, 255, 0)),
    RoiSpec("Lung_L", (74.0, -5.0), (45.0, 58.0), "ORGAN", (0, 255, 255)),
    RoiSpec("Lung_R", (-78.0, -5.0), (48.0, 60.0), "ORGAN", (255, 255, 0)),
    RoiSpec("Heart", (14.0, -32.0), (40.0, 34.0), "ORGAN", (255, 0, 0), (0.0, 0.5)),
    RoiSpec("SpinalCord", (0.0, 88.0), (6.0, 5.0), "ORGAN", (0, 0, 255)),
    RoiSpec("PTV", (60.0, -10.0), (25.0, 25.0), "PTV", (255, 0, 255), (0.35, 0.65)),
)


def make_rtstruct(
    ct: CTSeries,
    rois: Sequence[RoiSpec] = DEFAULT_ROIS,
    *,
    label: str = "MANUAL",
    points_per_contour: int = 32,
) -> Dataset:
    """An RT Structure Set on ``ct`` with one closed planar polygon per ROI and slice."""
    ds = _new_instance(RT_STRUCTURE_SET_STORAGE)
    _copy_patient_study(ds, ct.datasets[0])
    _new_series(ds, "RTSTRUCT", 3, "Structures")
    ds.OperatorsName = ""
    _equipment(ds, "RTNODE-TPS", "TPS")
    ds.StructureSetLabel = label
    ds.StructureSetDate, ds.StructureSetTime = STUDY_DATE, STUDY_TIME
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(ct)]
    ds.StructureSetROISequence = [_ss_roi(ct, i + 1, r) for i, r in enumerate(rois)]
    ds.ROIContourSequence = [
        _roi_contour(ct, i + 1, r, points_per_contour) for i, r in enumerate(rois)
    ]
    ds.RTROIObservationsSequence = [_observation(i + 1, r) for i, r in enumerate(rois)]
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _referenced_frame(ct: CTSeries) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = ct.series_uid
    series.ContourImageSequence = _image_refs(ct)
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = ct.study_uid
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _ss_roi(ct: CTSeries, number: int, roi: RoiSpec) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
    item.ROIName = roi.name
    item.ROIGenerationAlgorithm = "MANUAL"
    return item


def _roi_contour(ct: CTSeries, number: int, roi: RoiSpec, n_points: int) -> Dataset:
    contours = []
    for d, z in _roi_slices(ct, roi):
        contour = Dataset()
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = (
            d.SOPClassUID,
            d.SOPInstanceUID,
        )
        contour.ContourImageSequence = [image]
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = n_points
        contour.ContourNumber = len(contours) + 1
        contour.ContourData = _ellipse_points(roi, z, n_points)
        contours.append(contour)
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(roi.color_rgb)
    item.ContourSequence = contours
    return item


def _roi_slices(ct: CTSeries, roi: RoiSpec) -> list[tuple[Dataset, float]]:
    """Slices inside ``roi.z_range``; the one nearest its middle when none is."""
    zs = ct.z_positions_mm()
    z_lo, z_hi = min(zs), max(zs)
    heights = [0.5 if z_hi == z_lo else (z - z_lo) / (z_hi - z_lo) for z in zs]
    inside = [
        (d, z)
        for d, z, t in zip(ct.datasets, zs, heights, strict=True)
        if roi.z_range[0] <= t <= roi.z_range[1]
    ]
    if inside:
        return inside
    middle = sum(roi.z_range) / 2.0
    nearest = min(range(len(zs)), key=lambda k: abs(heights[k] - middle))
    return [(ct.datasets[nearest], zs[nearest])]


def _ellipse_points(roi: RoiSpec, z_mm: float, n_points: int) -> list[str]:
    angles = np.linspace(0.0, 2.0 * math.pi, n_points, endpoint=False)
    xs = roi.centre_xy_mm[0] + roi.semi_axes_mm[0] * np.cos(angles)
    ys = roi.centre_xy_mm[1] + roi.semi_axes_mm[1] * np.sin(angles)
    return [_ds(float(v)) for x, y in zip(xs, ys, strict=True) for v in (x, y, z_mm)]


def _observation(number: int, roi: RoiSpec) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIInterpretedType = roi.interpreted_type
    item.ROIInterpreter = ""
    return item


# --------------------------------------------------------------------------- RTPLAN


def make_rtplan(
    ct: CTSeries,
    rtstruct: Dataset | None = None,
    *,
    plan_label: str = "LUNG_L 60/30",
    prescription_gy: float = 60.0,
    fractions: int = 30,
    gantry_angles_deg: Iterable[float] = (0.0, 50.0, 100.0, 150.0, 310.0),
    energy_mv: float = 6.0,
    isocentre_mm: tuple[float, float, float] | None = None,
    machine: str = "LINAC1",
) -> Dataset:
    """A static-field photon plan (one fraction group) on ``ct``'s study."""
    ds = _new_instance(RT_PLAN_STORAGE)
    _copy_patient_study(ds, ct.datasets[0])
    _new_series(ds, "RTPLAN", 4, "Plan")
    ds.OperatorsName = ""
    _equipment(ds, "RTNODE-TPS", "TPS")
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.RTPlanLabel, ds.RTPlanName = plan_label[:16], plan_label
    ds.RTPlanDate, ds.RTPlanTime = STUDY_DATE, STUDY_TIME
    ds.InstanceNumber = 1
    ds.RTPlanGeometry = "PATIENT" if rtstruct is not None else "TREATMENT_DEVICE"
    if rtstruct is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ref.ReferencedSOPInstanceUID = rtstruct.SOPInstanceUID
        ds.ReferencedStructureSetSequence = [ref]
    iso = isocentre_mm or (60.0, -10.0, float(np.mean(ct.z_positions_mm())))
    angles = list(gantry_angles_deg)
    mu = round(prescription_gy / fractions * 100.0 / len(angles) * 1.1, 1)
    ds.DoseReferenceSequence = [_dose_reference(prescription_gy)]
    ds.FractionGroupSequence = [_fraction_group(fractions, len(angles), mu, prescription_gy)]
    ds.BeamSequence = [_beam(i + 1, a, energy_mv, iso, machine) for i, a in enumerate(angles)]
    ds.PatientSetupSequence = [_patient_setup(ct.patient_position)]
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _dose_reference(prescription_gy: float) -> Dataset:
    item = Dataset()
    item.DoseReferenceNumber = 1
    item.DoseReferenceUID = generate_uid()
    item.DoseReferenceStructureType = "SITE"
    item.DoseReferenceDescription = "PTV"
    item.DoseReferenceType = "TARGET"
    item.DeliveryMaximumDose = _ds(prescription_gy * 1.1)
    item.TargetPrescriptionDose = _ds(prescription_gy)
    return item


def _fraction_group(fractions: int, n_beams: int, mu: float, prescription_gy: float) -> Dataset:
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = fractions
    group.NumberOfBeams = n_beams
    group.NumberOfBrachyApplicationSetups = 0
    refs = []
    for number in range(1, n_beams + 1):
        ref = Dataset()
        ref.ReferencedBeamNumber = number
        ref.BeamDose = _ds(prescription_gy / fractions / n_beams)
        ref.BeamMeterset = _ds(mu)
        refs.append(ref)
    group.ReferencedBeamSequence = refs
    return group


def _beam(
    number: int,
    gantry_deg: float,
    energy_mv: float,
    iso_mm: tuple[float, float, float],
    machine: str,
) -> Dataset:
    beam = Dataset()
    beam.BeamNumber, beam.BeamName = number, f"G{int(gantry_deg):03d}"
    beam.BeamType, beam.RadiationType = "STATIC", "PHOTON"
    beam.TreatmentMachineName = machine
    beam.PrimaryDosimeterUnit = "MU"
    beam.SourceAxisDistance = "1000"
    beam.BeamLimitingDeviceSequence = [_bld("ASYMX", 1), _bld("ASYMY", 1)]
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.NumberOfWedges = beam.NumberOfCompensators = 0
    beam.NumberOfBoli = beam.NumberOfBlocks = 0
    beam.FinalCumulativeMetersetWeight = "1"
    beam.NumberOfControlPoints = 2
    beam.ReferencedPatientSetupNumber = 1
    first = _control_point(0, "0", energy_mv, gantry_deg, iso_mm)
    last = Dataset()
    last.ControlPointIndex, last.CumulativeMetersetWeight = 1, "1"
    beam.ControlPointSequence = [first, last]
    return beam


def _bld(kind: str, pairs: int) -> Dataset:
    item = Dataset()
    item.RTBeamLimitingDeviceType = kind
    item.NumberOfLeafJawPairs = pairs
    return item


def _control_point(
    index: int, weight: str, energy_mv: float, gantry_deg: float, iso_mm: tuple[float, ...]
) -> Dataset:
    cp = Dataset()
    cp.ControlPointIndex, cp.CumulativeMetersetWeight = index, weight
    cp.NominalBeamEnergy = _ds(energy_mv)
    cp.DoseRateSet = "600"
    positions = []
    for kind in ("ASYMX", "ASYMY"):
        item = Dataset()
        item.RTBeamLimitingDeviceType = kind
        item.LeafJawPositions = ["-40", "40"]
        positions.append(item)
    cp.BeamLimitingDevicePositionSequence = positions
    cp.GantryAngle, cp.GantryRotationDirection = _ds(gantry_deg), "NONE"
    cp.BeamLimitingDeviceAngle, cp.BeamLimitingDeviceRotationDirection = "0", "NONE"
    cp.PatientSupportAngle, cp.PatientSupportRotationDirection = "0", "NONE"
    cp.TableTopEccentricAngle, cp.TableTopEccentricRotationDirection = "0", "NONE"
    cp.TableTopVerticalPosition = cp.TableTopLongitudinalPosition = ""
    cp.TableTopLateralPosition = ""
    cp.IsocenterPosition = [_ds(v) for v in iso_mm]
    return cp


def _patient_setup(position: str) -> Dataset:
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = position
    setup.SetupTechnique = "ISOCENTRIC"
    return setup


# --------------------------------------------------------------------------- RTDOSE


def make_rtdose(
    ct: CTSeries,
    plan: Dataset | None = None,
    *,
    max_dose_gy: float = 63.0,
    centre_mm: tuple[float, float, float] | None = None,
    sigma_mm: float = 40.0,
    grid_spacing_mm: float = 5.0,
    bits_allocated: Literal[16, 32] = 32,
) -> Dataset:
    """A physical plan dose (Gy) on a coarse grid covering ``ct``: a Gaussian blob.

    The grid uses ``ct``'s orientation; frames follow the slice normal with
    GridFrameOffsetVector relative to the first frame. (dciodvfy 2024 aborts on 32-bit
    pixel data; use ``bits_allocated=16`` to validate with it.)
    """
    ds = _new_instance(RT_DOSE_STORAGE)
    first = ct.datasets[0]
    _copy_patient_study(ds, first)
    _new_series(ds, "RTDOSE", 5, "Dose")
    ds.OperatorsName = ""
    _equipment(ds, "RTNODE-TPS", "TPS")
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    dose_gy, origin_mm = _dose_grid(ct, centre_mm, sigma_mm, max_dose_gy, grid_spacing_mm)
    _dose_image(ds, first, dose_gy, origin_mm, grid_spacing_mm, bits_allocated)
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    if plan is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_PLAN_STORAGE
        ref.ReferencedSOPInstanceUID = plan.SOPInstanceUID
        ds.ReferencedRTPlanSequence = [ref]
    return ds


def dose_array_gy(ds: Dataset) -> npt.NDArray[np.float64]:
    """The dose grid of an RTDOSE dataset in Gy, (frame, row, column)."""
    return np.asarray(ds.pixel_array, dtype=np.float64) * float(ds.DoseGridScaling)


def _dose_grid(
    ct: CTSeries,
    centre_mm: tuple[float, float, float] | None,
    sigma_mm: float,
    max_dose_gy: float,
    step_mm: float,
) -> tuple[npt.NDArray[np.float64], tuple[float, float, float]]:
    zs = ct.z_positions_mm()
    first = ct.datasets[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    _, rows, cols = ct.shape
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    n_x = max(1, int(cols * col_mm // step_mm))
    n_y = max(1, int(rows * row_mm // step_mm))
    n_z = max(1, int(abs(zs[-1] - zs[0]) // step_mm) + 1)
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    centre = np.array(centre_mm or (60.0, -10.0, float(np.mean(zs))))
    ii, jj, kk = np.arange(n_x), np.arange(n_y), np.arange(n_z)
    pts = (
        origin[None, None, None, :]
        + kk[:, None, None, None] * step_mm * normal
        + jj[None, :, None, None] * step_mm * col_dir
        + ii[None, None, :, None] * step_mm * row_dir
    )
    r2 = np.sum((pts - centre) ** 2, axis=-1)
    dose = max_dose_gy * np.exp(-r2 / (2.0 * sigma_mm**2))
    origin_t = (float(origin[0]), float(origin[1]), float(origin[2]))
    return dose, origin_t


def _dose_image(
    ds: Dataset,
    ct_first: Dataset,
    dose_gy: npt.NDArray[np.float64],
    origin_mm: tuple[float, float, float],
    step_mm: float,
    bits: int,
) -> None:
    n_z, n_y, n_x = dose_gy.shape
    top = 4_000_000_000 if bits == 32 else 65_000
    scaling = float(dose_gy.max()) / top if dose_gy.max() > 0 else 1e-6
    stored = np.rint(dose_gy / scaling).astype(np.uint32 if bits == 32 else np.uint16)
    ds.ImagePositionPatient = [_ds(v) for v in origin_mm]
    ds.ImageOrientationPatient = ct_first.ImageOrientationPatient
    ds.PixelSpacing = [_ds(step_mm), _ds(step_mm)]
    ds.SliceThickness = _ds(step_mm)
    ds.GridFrameOffsetVector = [_ds(k * step_mm) for k in range(n_z)]
    ds.FrameIncrementPointer = 0x3004000C
    ds.NumberOfFrames = n_z
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = n_y, n_x
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.DoseGridScaling = f"{scaling:.6E}"
    ds.PixelData = stored.tobytes()


# --------------------------------------------------------------------------- SR and PDF


def make_text_sr(
    text: str,
    patient_id: str = DEFAULT_PATIENT_ID,
    study_uid: str | None = None,
    sop_class: Literal["basic", "enhanced", "comprehensive"] = "basic",
    *,
    title: tuple[str, str, str] = ("11488-4", "LN", "Consult note"),
    concept: tuple[str, str, str] = ("121106", "DCM", "Comment"),
    patient_name: str = DEFAULT_PATIENT_NAME,
) -> Dataset:
    """A text-only SR document (root CONTAINER with one TEXT item holding ``text``)."""
    ds = _new_instance(SR_STORAGE[sop_class])
    _patient_study(ds, patient_id, patient_name, study_uid or generate_uid())
    _new_series(ds, "SR", 10, "Clinical note")
    ds.ReferencedPerformedProcedureStepSequence = []
    _equipment(ds, "RTNODE-EMR", "EMR")
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*title)]
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [_code(*concept)]
    item.TextValue = text
    ds.ContentSequence = [item]
    return ds


def sr_item(
    value_type: str,
    concept: str,
    value: str | tuple[str, str] | None = None,
    children: Sequence[Dataset] = (),
    relationship: str = "CONTAINS",
) -> Dataset:
    """One SR content item: ``concept`` is a code meaning (local code ``99RTN``); ``value``
    is the text (TEXT), a code meaning (CODE), ``(number, UCUM units)`` (NUM), a DICOM date
    (DATE) or None (CONTAINER)."""
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = [
        _code(f"RTN{zlib.crc32(concept.encode()) % 10**6}", "99RTN", concept)
    ]
    if value_type == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    elif value_type == "TEXT":
        item.TextValue = value
    elif value_type == "CODE":
        item.ConceptCodeSequence = [
            _code(f"RTC{zlib.crc32(str(value).encode()) % 10**6}", "99RTN", str(value))
        ]
    elif value_type == "NUM" and value is not None:
        number, units = value if isinstance(value, tuple) else (str(value), "1")
        measured = Dataset()
        measured.NumericValue = number
        measured.MeasurementUnitsCodeSequence = [_code(units, "UCUM", units)]
        item.MeasuredValueSequence = [measured]
    elif value_type == "DATE":
        item.Date = value
    if children:
        item.ContentSequence = list(children)
    return item


def make_structured_sr(
    content: Sequence[Dataset],
    patient_id: str = DEFAULT_PATIENT_ID,
    study_uid: str | None = None,
    sop_class: Literal["basic", "enhanced", "comprehensive"] = "comprehensive",
    *,
    accession_number: str = "",
    title: str = "Radiotherapy consultation",
) -> Dataset:
    """An SR document whose root CONTAINER holds ``content`` (build items with sr_item)."""
    ds = make_text_sr("placeholder", patient_id, study_uid, sop_class)
    ds.AccessionNumber = accession_number
    ds.ConceptNameCodeSequence = [_code("11488-4", "LN", title)]
    ds.ContentSequence = list(content)
    return ds


def make_encapsulated_pdf(
    text: str = "Radiotherapy referral",
    patient_id: str = DEFAULT_PATIENT_ID,
    study_uid: str | None = None,
    *,
    title: str = "Referral letter",
    patient_name: str = DEFAULT_PATIENT_NAME,
) -> Dataset:
    """An Encapsulated PDF instance whose one-page PDF shows ``text``."""
    ds = _new_instance(ENCAPSULATED_PDF_STORAGE)
    _patient_study(ds, patient_id, patient_name, study_uid or generate_uid())
    _new_series(ds, "DOC", 11, "Documents")
    _equipment(ds, "RTNODE-EMR", "EMR")
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.AcquisitionDateTime = STUDY_DATE + STUDY_TIME
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf = minimal_pdf(text)
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds


def minimal_pdf(text: str) -> bytes:
    """A valid one-page PDF 1.4 file showing ``text`` (ASCII, one line per ``\\n``) in
    Helvetica: a PDF with a real text layer."""
    lines = []
    for line in text.split("\n"):
        safe = line.encode("ascii", "replace").decode().replace("\\", "\\\\")
        lines.append("(" + safe.replace("(", "\\(").replace(")", "\\)") + ") Tj")
    stream = f"BT /F1 12 Tf 14 TL 72 720 Td {' T* '.join(lines)} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# --------------------------------------------------------------------------- assertions


def breast_ct_acquisition(anatomy: Anatomy, seed: int) -> Acquisition:
    """A 256 x 256 (1.8 mm) acquisition of a breast phantom, 5 mm slices from 20 mm below
    the breasts to 70 mm above the lung apex, noise 15 HU."""
    xs = ((np.arange(256) - 127.5) * 1.8).astype(np.float32)
    low = min(b.z - b.sag * b.rz - b.rz for b in anatomy.breasts) - 20.0
    zs = np.arange(low, anatomy.apex_z + 70.0, 5.0, dtype=np.float32)
    return Acquisition(xs=xs, ys=xs.copy(), zs=zs, noise_hu=15.0, noise_seed=seed)


def dice(a: BoolArray, b: BoolArray) -> float:
    """Dice similarity of two masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
