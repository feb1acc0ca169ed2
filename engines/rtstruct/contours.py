"""Mask <-> planar contour conversion on a CT grid.

Contours are traced with rt-utils (OpenCV) on a 2x nearest-neighbour upsampled slice, so
each polygon runs a quarter pixel inside the mask's pixel edges: every pixel centre of the
mask lies inside the polygon and every other pixel centre outside, and a peer that fills
polygons by pixel centre (even-odd rule for holes) gets the mask back. Raw rt-utils
contours run through the boundary pixel centres instead (half the boundary is lost when
rasterized) and map columns with the row spacing (wrong for non-square pixels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.rtstruct._rtutils import cv2, find_mask_contours
from engines.volume import CTVolume

logger = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# Explicit VR encodes DS lengths in 16 bits: one ContourData value must fit in 65534 bytes.
MAX_CONTOUR_BYTES = 65_534
SIMPLIFY_TOLERANCE_PX = 0.2  # below 0.25 px the polygon still separates pixel centres


@dataclass(frozen=True)
class SliceGeometry:
    """Pixel (row, column) <-> patient mm on one slice of a CT volume."""

    origin_mm: FloatArray
    row_step_mm: FloatArray  # patient displacement of one row down (column cosines * dr)
    col_step_mm: FloatArray  # patient displacement of one column right (row cosines * dc)

    @classmethod
    def of(cls, ct: CTVolume, index: int) -> SliceGeometry:
        origin = np.array([float(v) for v in ct.headers[index].ImagePositionPatient])
        _, row_mm, col_mm = ct.spacing_mm
        return cls(
            origin_mm=origin,
            row_step_mm=ct.column_cosines * row_mm,
            col_step_mm=ct.row_cosines * col_mm,
        )

    def to_patient(self, rc: FloatArray) -> FloatArray:
        """(N, 2) fractional (row, column) -> (N, 3) patient mm."""
        return (
            self.origin_mm[None, :]
            + rc[:, :1] * self.row_step_mm[None, :]
            + rc[:, 1:2] * self.col_step_mm[None, :]
        )


def slice_polygons(
    mask2d: BoolArray, tolerance_px: float = SIMPLIFY_TOLERANCE_PX
) -> list[FloatArray]:
    """Closed polygons as (N, 2) fractional (row, column) arrays tracing ``mask2d``.

    Outer boundaries and holes both come back as polygons (even-odd semantics).
    """
    upsampled = np.repeat(np.repeat(mask2d, 2, axis=0), 2, axis=1)
    traced, _ = find_mask_contours(upsampled, approximate_contours=True)
    polygons = []
    for points in traced:
        rc = np.asarray(points, dtype=np.float64)[:, ::-1] / 2.0 - 0.25  # -> original pixels
        polygons.append(simplify_polygon(rc, tolerance_px))
    return polygons


def simplify_polygon(rc: FloatArray, tolerance_px: float) -> FloatArray:
    """Douglas-Peucker simplification of a closed (N, 2) polygon; deviation <= tolerance."""
    if len(rc) <= 4 or tolerance_px <= 0:
        return rc
    points = rc.astype(np.float32).reshape(-1, 1, 2)
    simplified = cv2.approxPolyDP(points, tolerance_px, True).reshape(-1, 2)
    return simplified.astype(np.float64) if len(simplified) >= 3 else rc


def format_contour_data(points_mm: FloatArray, decimals: int = 2) -> list[str]:
    """Flatten (N, 3) patient points to DS strings of at most 16 characters.

    Vectorised: a 150-slice thorax has ~700,000 coordinates. Adding 0.0 after rounding
    turns -0.0 into 0.0, so no value reads "-0.00".
    """
    rounded = np.round(np.asarray(points_mm, dtype=np.float64).ravel(), decimals) + 0.0
    values: list[str] = np.char.mod(f"%.{decimals}f", rounded).tolist()
    return values


def fits_explicit_vr(values: Sequence[str]) -> bool:
    """Whether the DS values fit one explicit-VR element (backslash separated)."""
    return sum(len(v) for v in values) + len(values) - 1 <= MAX_CONTOUR_BYTES


def _clean(text: str) -> str:
    return "0" if text.strip("-0.") == "" else text
