"""RTSTRUCT contours -> boolean masks on a CT volume's (slice, row, column) grid.

A voxel belongs to a structure when its centre lies inside an odd number of the
structure's closed planar contours on that slice (even-odd rule, so holes drawn as
separate contours are honoured).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from engines.volume import CTVolume

logger = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
_SLICE_TOLERANCE = 0.25  # contour planes further than this (in slices) from a slice are skipped


def rasterize_rtstruct(ds: Dataset, ct: CTVolume) -> dict[str, BoolArray]:
    """Masks of every ROI of an RT Structure Set on ``ct``'s grid, keyed by ROI name.

    ROIs without closed planar contours on the grid come back as empty masks.
    """
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    masks: dict[str, BoolArray] = {}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI-{roi.ReferencedROINumber}")
        masks[name] = rasterize_contours(roi.get("ContourSequence", []), ct)
    return masks


def rasterize_contours(contours: list[Dataset], ct: CTVolume) -> BoolArray:
    """Even-odd fill of CLOSED_PLANAR ``contours`` (ContourSequence items) on ``ct``."""
    n_slices, rows, cols = ct.shape
    parity = np.zeros((n_slices, rows, cols + 1), dtype=np.int32)
    to_index = _patient_to_index(ct)
    for contour in contours:
        if contour.get("ContourGeometricType", "") != "CLOSED_PLANAR":
            continue
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        krc = to_index(points)
        plane = float(np.mean(krc[:, 0]))
        k = round(plane)
        if not 0 <= k < n_slices or abs(plane - k) > _SLICE_TOLERANCE:
            logger.debug("contour off the CT grid (slice %.2f), skipped", plane)
            continue
        _add_crossings(parity[k], krc[:, 1:])
    inside: BoolArray = (np.cumsum(parity, axis=2)[:, :, :cols] % 2).astype(bool)
    return inside


def _patient_to_index(ct: CTVolume) -> _ToIndex:
    origin = np.array([float(v) for v in ct.headers[0].ImagePositionPatient])
    dz, dr, dc = ct.spacing_mm
    axes = np.stack([ct.normal / dz, ct.column_cosines / dr, ct.row_cosines / dc])
    return _ToIndex(origin, axes)


class _ToIndex:
    """Patient mm -> fractional (slice, row, column) for an orthogonal CT grid."""

    def __init__(self, origin_mm: FloatArray, axes: FloatArray) -> None:
        self.origin_mm = origin_mm
        self.axes = axes

    def __call__(self, points_mm: FloatArray) -> FloatArray:
        result: FloatArray = (points_mm - self.origin_mm) @ self.axes.T
        return result


def _add_crossings(parity: npt.NDArray[np.int32], polygon_rc: FloatArray) -> None:
    """Toggle ``parity[row, c]`` for each edge crossing of a row's centre line at column < c.

    Afterwards ``cumsum(parity, axis=1) % 2`` is 1 exactly at pixel centres inside.
    """
    rows = parity.shape[0]
    r0, c0 = polygon_rc[:, 0], polygon_rc[:, 1]
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
    first = np.clip(np.ceil(lo), 0, rows).astype(int)
    last = np.clip(np.ceil(hi), 0, rows).astype(int)  # half-open [lo, hi)
    counts = last - first
    edge = np.repeat(np.arange(len(r0)), counts)
    row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[edge]
    t = (row - r0[edge]) / (r1[edge] - r0[edge])
    col = c0[edge] + t * (c1[edge] - c0[edge])
    start = np.clip(np.floor(col).astype(int) + 1, 0, parity.shape[1] - 1)
    np.add.at(parity, (row, start), 1)
