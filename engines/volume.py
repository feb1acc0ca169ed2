"""A CT series decoded into a 3-D volume on its own geometry.

The volume is ordered (slice, row, column). Slices are sorted by their position along
the slice normal (row cosines x column cosines), ascending, which is also the order
the RTSTRUCT writer uses; head-first and feet-first series therefore both come out in
patient-coordinate order. Gantry-tilted and non-uniform series are refused with a clear
message rather than contoured wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from engines.dicom_output import CT_IMAGE_STORAGE

_POSITION_TOLERANCE_MM = 0.05
_AXIAL_MIN_COSINE = 0.99


class VolumeError(ValueError):
    """The files do not form one regular, untilted CT volume."""


@dataclass(frozen=True)
class CTVolume:
    """CT voxels in Hounsfield units with the geometry needed to map them back.

    Attributes
    ----------
    hu : float32 array (slices, rows, columns), Hounsfield units.
    headers : the source datasets without pixel data, in volume slice order.
    spacing_mm : (slice, row, column) voxel spacing in mm; row spacing is the
        distance between rows (PixelSpacing[0]).
    row_cosines, column_cosines, normal : unit vectors in patient coordinates.
    """

    hu: npt.NDArray[np.float32]
    headers: tuple[Dataset, ...]
    files: tuple[Path, ...]
    spacing_mm: tuple[float, float, float]
    row_cosines: npt.NDArray[np.float64]
    column_cosines: npt.NDArray[np.float64]
    normal: npt.NDArray[np.float64]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.hu.shape[0]), int(self.hu.shape[1]), int(self.hu.shape[2]))

    @property
    def voxel_volume_cm3(self) -> float:
        dz, dy, dx = self.spacing_mm
        return dz * dy * dx / 1000.0

    @property
    def study_instance_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> CTVolume:
        """Read CT image files of one series (other objects in ``paths`` are ignored)."""
        datasets = [pydicom.dcmread(p) for p in paths]
        pairs = [(d, Path(p)) for d, p in zip(datasets, paths, strict=True) if _is_ct(d)]
        if not pairs:
            raise VolumeError("no CT Image Storage instances among the job's inputs")
        return cls.from_datasets([d for d, _ in pairs], [p for _, p in pairs])

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset], files: Sequence[Path] = ()) -> CTVolume:
        """Build a volume from decoded CT datasets (any order)."""
        _check_single_series(datasets)
        row, col = _orientation(datasets[0])
        normal = np.cross(row, col)
        if abs(float(normal[2])) < _AXIAL_MIN_COSINE:
            raise VolumeError("only axial CT series are supported (slice normal is not along z)")
        order = sorted(range(len(datasets)), key=lambda i: _position(datasets[i]) @ normal)
        ordered = [datasets[i] for i in order]
        slice_spacing = _slice_spacing(ordered, normal)
        _check_consistent(ordered, row, col)
        hu = np.stack([_to_hu(d) for d in ordered]).astype(np.float32, copy=False)
        ps = [float(v) for v in ordered[0].PixelSpacing]
        headers = tuple(_header_only(d) for d in ordered)
        return cls(
            hu=hu,
            headers=headers,
            files=tuple(files[i] for i in order) if files else (),
            spacing_mm=(slice_spacing, ps[0], ps[1]),
            row_cosines=row,
            column_cosines=col,
            normal=normal,
        )


def _is_ct(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == CT_IMAGE_STORAGE and "PixelData" in ds


def _check_single_series(datasets: Sequence[Dataset]) -> None:
    series = {str(d.SeriesInstanceUID) for d in datasets}
    if len(series) != 1:
        raise VolumeError(f"expected one CT series, got {len(series)}")


def _orientation(ds: Dataset) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise VolumeError("CT slice without ImageOrientationPatient/ImagePositionPatient")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    if abs(float(row @ col)) > 1e-3:
        raise VolumeError("ImageOrientationPatient row and column directions are not perpendicular")
    return row, col


def _position(ds: Dataset) -> npt.NDArray[np.float64]:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


def _slice_spacing(ordered: Sequence[Dataset], normal: npt.NDArray[np.float64]) -> float:
    """Uniform spacing along the normal in mm; refuses tilt, gaps and duplicates."""
    positions = np.array([_position(d) for d in ordered])
    if len(ordered) == 1:
        return float(ordered[0].get("SliceThickness", 1.0) or 1.0)
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < _POSITION_TOLERANCE_MM):
        raise VolumeError("two CT slices share one position")
    off_axis = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if np.any(off_axis > _POSITION_TOLERANCE_MM + 0.01 * along):
        raise VolumeError("slice positions are not along the slice normal (gantry tilt?)")
    if np.ptp(along) > max(_POSITION_TOLERANCE_MM, 0.01 * float(np.median(along))):
        raise VolumeError("CT slices are not evenly spaced (missing slices?)")
    return float(np.mean(along))


def _check_consistent(
    ordered: Sequence[Dataset], row: npt.NDArray[np.float64], col: npt.NDArray[np.float64]
) -> None:
    first = ordered[0]
    for ds in ordered[1:]:
        r, c = _orientation(ds)
        if not (np.allclose(r, row, atol=1e-4) and np.allclose(c, col, atol=1e-4)):
            raise VolumeError("CT slices have different orientations")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise VolumeError("CT slices have different matrix sizes")
        if not np.allclose(_spacing(ds), _spacing(first), atol=1e-4):
            raise VolumeError("CT slices have different pixel spacings")
    tilt = float(first.get("GantryDetectorTilt", 0) or 0)
    if abs(tilt) > 1e-3:
        raise VolumeError(f"gantry tilt {tilt} degrees is not supported")


def _spacing(ds: Dataset) -> npt.NDArray[np.float64]:
    if "PixelSpacing" not in ds:
        raise VolumeError("CT slice without PixelSpacing")
    return np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64)


def _to_hu(ds: Dataset) -> npt.NDArray[np.float32]:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    pixels = ds.pixel_array.astype(np.float32)
    return pixels * np.float32(slope) + np.float32(intercept)


def _header_only(ds: Dataset) -> Dataset:
    header = Dataset()
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    for elem in ds:
        if elem.tag != 0x7FE00010:
            header.add(elem)
    return header
