"""Overlap and surface-distance metrics of two masks on a CT grid (Dice, HD95 in mm)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]


def dice(a: BoolArray, b: BoolArray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def hd95_mm(a: BoolArray, b: BoolArray, spacing_mm: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of ``a`` and
    ``b`` in mm (the larger of the two directed 95th percentiles, as MONAI's
    ``compute_hausdorff_distance(percentile=95)``); 0 when both are empty, ``inf`` when
    only one is."""
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    box = _joint_box(a, b)
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_mm)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_mm)
    return float(max(np.percentile(to_b[surface_a], 95), np.percentile(to_a[surface_b], 95)))


def _surface(mask: BoolArray) -> BoolArray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))
    surface: BoolArray = mask & ~eroded
    return surface


def _joint_box(a: BoolArray, b: BoolArray, pad: int = 2) -> tuple[slice, ...]:
    both = a | b
    box = []
    for axis in range(3):
        others = tuple(i for i in range(3) if i != axis)
        hits = np.flatnonzero(both.any(axis=others))
        box.append(slice(max(int(hits[0]) - pad, 0), int(hits[-1]) + 1 + pad))
    return tuple(box)
