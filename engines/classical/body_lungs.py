"""Classical External and lung segmentation of a CT (numpy and scipy only, no ML).

External: threshold, in-plane opening so the couch and positioning devices come loose,
the largest 3-D component, then per-slice hole filling so lungs and airways lie inside.
Lungs: low-HU voxels inside the External, minus the trachea and main bronchi, holes
(vessels) filled per slice, small components dropped, split into left and right in
patient coordinates (+x is patient left), so head-first and feet-first series both
come out right. Joined lungs are separated by erosion and a seeded watershed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from engines.base import EngineContext, EngineError, Structure
from engines.structures import StructureTemplate, TemplateError, UnknownStructure, load_template
from engines.volume import CTVolume, VolumeError

logger = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]

# 4-connected in the axial plane only: per-slice morphology on a (slice, row, col) volume.
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndimage.generate_binary_structure(2, 1)
_SIDE_FRACTION = 0.85  # a component this much on one side of the midline is that side's


@dataclass(frozen=True)
class BodyLungsSettings:
    """Thresholds and sizes of the classical segmentation; every value has a default."""

    body_threshold_hu: float = -400.0
    lung_threshold_hu: float = -400.0
    opening_radius_mm: float = 5.0
    airway_max_area_cm2: float = 6.0
    airway_midline_mm: float = 30.0
    min_component_cm3: float = 1.0
    min_component_fraction: float = 0.05
    max_split_erosions: int = 40

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> BodyLungsSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EngineError(f"unknown body/lung settings: {', '.join(unknown)}")
        return cls(**options)


class BodyLungsEngine:
    """External, Lung_L and Lung_R from CT by thresholds and morphology."""

    name: ClassVar[str] = "classical_body_lungs"
    inputs: ClassVar[tuple[str, ...]] = ("ct",)
    outputs: ClassVar[tuple[str, ...]] = ("structures",)

    def __init__(self, **options: Any) -> None:
        self.settings = BodyLungsSettings.from_options(options)

    def run(self, ctx: EngineContext) -> None:
        """Add External and, where lung tissue is found, Lung_L and Lung_R to ``ctx``."""
        template = _template(ctx)
        ct = _volume(ctx)
        body = segment_body(
            ct.hu,
            ct.spacing_mm,
            threshold_hu=self.settings.body_threshold_hu,
            opening_radius_mm=self.settings.opening_radius_mm,
        )
        left, right = segment_lungs(ct, body, self.settings)
        ctx.add_structure(_structure("External", body, template))
        for name, mask in (("Lung_L", left), ("Lung_R", right)):
            if mask.any():
                ctx.add_structure(_structure(name, mask, template))
            else:
                ctx.notes.append(f"{self.name}: no {name} found (no lung tissue on this side)")
        logger.info(
            "job %s: External %.0f cm3, Lung_L %.0f cm3, Lung_R %.0f cm3",
            ctx.job_id,
            body.sum() * ct.voxel_volume_cm3,
            left.sum() * ct.voxel_volume_cm3,
            right.sum() * ct.voxel_volume_cm3,
        )


def segment_body(
    hu: npt.NDArray[np.float32],
    spacing_mm: Spacing,
    *,
    threshold_hu: float = -400.0,
    opening_radius_mm: float = 5.0,
) -> BoolArray:
    """The patient's outline: couch, air and loose devices excluded, holes filled.

    Parameters
    ----------
    hu
        CT in Hounsfield units, (slice, row, column).
    spacing_mm
        (slice, row, column) voxel spacing in mm.
    threshold_hu
        Voxels above this are tissue candidates.
    opening_radius_mm
        In-plane opening radius; thinner bridges (to the couch, to devices) are cut.

    Raises
    ------
    EngineError
        When no voxel above ``threshold_hu`` survives the opening.
    """
    candidate = hu > threshold_hu
    radius_px = _radius_px(opening_radius_mm, spacing_mm)
    opened = ndimage.binary_opening(candidate, _INPLANE, iterations=radius_px)
    core = _largest_component(opened)
    if not core.any():
        raise EngineError(
            f"no patient body found: no tissue above {threshold_hu:g} HU thicker than "
            f"{2 * opening_radius_mm:g} mm in this CT"
        )
    regrown = ndimage.binary_dilation(core, _INPLANE, iterations=radius_px) & candidate
    return fill_holes_per_slice(_components_touching(regrown, core))


def segment_lungs(
    ct: CTVolume, body: BoolArray, settings: BodyLungsSettings | None = None
) -> tuple[BoolArray, BoolArray]:
    """Left and right lung masks (patient left is +x) inside ``body``."""
    settings = settings or BodyLungsSettings()
    left, right = np.zeros_like(body), np.zeros_like(body)
    box = _bounding_box(body)
    if box is None:
        return left, right
    geometry = _Geometry.of(ct).cropped(box)
    inside = body[box]
    midline_x = geometry.centroid_x(inside)
    low = (ct.hu[box] < settings.lung_threshold_hu) & inside
    airway = _airway(low, geometry, midline_x, settings)
    lungs = _drop_small(fill_holes_per_slice(low & ~airway), ct.voxel_volume_cm3, settings)
    left[box], right[box] = _split_left_right(lungs, geometry, midline_x, settings)
    return left, right


def fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """Fill holes in each axial slice separately (2-D hole filling).

    Background not connected in-plane to the edge of the mask's bounding box (grown by one
    pixel, within the image) is a hole.
    """
    filled = mask.copy()
    box = _bounding_box(mask, pad_px=1)
    if box is None:
        return filled
    background, count = ndimage.label(~mask[box], structure=_INPLANE)
    rims = (background[:, [0, -1], :], background[:, :, [0, -1]])
    outside = np.unique(np.concatenate([r.ravel() for r in rims]))
    filled[box] = ~_select(background, count, outside[outside > 0])
    return filled


def _bounding_box(mask: BoolArray, pad_px: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding ``mask``, grown in-plane by ``pad_px``."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        pad = pad_px if axis > 0 else 0
        box.append(slice(max(hits[0] - pad, 0), min(hits[-1] + 1 + pad, mask.shape[axis])))
    return tuple(box)


def _select(labels: npt.NDArray[np.int32], count: int, chosen: npt.ArrayLike) -> BoolArray:
    """Mask of the voxels whose label is in ``chosen`` (a lookup table, not ``np.isin``)."""
    table = np.zeros(count + 1, dtype=bool)
    table[np.asarray(chosen, dtype=np.int64)] = True
    selected: BoolArray = table[labels]
    return selected


@dataclass(frozen=True)
class _Geometry:
    """Index (slice, row, column) -> patient x in mm, for left/right decisions."""

    origin_x_mm: float
    step_x_mm: tuple[float, float, float]
    pixel_cm2: float

    @classmethod
    def of(cls, ct: CTVolume) -> _Geometry:
        origin = float(ct.headers[0].ImagePositionPatient[0])
        dz, dr, dc = ct.spacing_mm
        steps = (
            float(ct.normal[0]) * dz,
            float(ct.column_cosines[0]) * dr,
            float(ct.row_cosines[0]) * dc,
        )
        return cls(origin_x_mm=origin, step_x_mm=steps, pixel_cm2=dr * dc / 100.0)

    def cropped(self, box: tuple[slice, ...]) -> _Geometry:
        """The same mapping for indices counted from the corner of ``box``."""
        shift = sum(b.start * step for b, step in zip(box, self.step_x_mm, strict=True))
        return _Geometry(self.origin_x_mm + shift, self.step_x_mm, self.pixel_cm2)

    def x_mm(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient x of (..., 3) index coordinates."""
        return self.origin_x_mm + np.asarray(index, dtype=np.float64) @ np.array(self.step_x_mm)

    def centroid_x(self, mask: BoolArray) -> float:
        """Patient x of the centroid of ``mask`` (projections keep this cheap)."""
        total = max(int(np.count_nonzero(mask)), 1)
        centre = []
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            profile = np.count_nonzero(mask, axis=others)
            centre.append(float(profile @ np.arange(mask.shape[axis])) / total)
        return float(self.x_mm(centre))


def _airway(
    low: BoolArray, geometry: _Geometry, midline_x: float, settings: BodyLungsSettings
) -> BoolArray:
    """Per-slice air components that are small and near the midline: trachea, bronchi."""
    labels, count = ndimage.label(low, structure=_INPLANE)
    if count == 0:
        return np.zeros_like(low)
    sizes, centres = _label_stats(labels, count)
    small = sizes * geometry.pixel_cm2 <= settings.airway_max_area_cm2
    central = np.abs(geometry.x_mm(centres) - midline_x) <= settings.airway_midline_mm
    return _select(labels, count, np.flatnonzero(small & central) + 1)


def _label_stats(
    labels: npt.NDArray[np.int32], count: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Voxel count and mean (slice, row, column) index of labels 1..count."""
    where = np.nonzero(labels)
    flat = labels[where]
    sizes = np.bincount(flat, minlength=count + 1)[1:].astype(np.float64)
    sums = [np.bincount(flat, weights=axis, minlength=count + 1)[1:] for axis in where]
    centres = np.stack(sums, axis=1) / np.maximum(sizes, 1.0)[:, None]
    return sizes, centres


def _drop_small(lungs: BoolArray, voxel_cm3: float, settings: BodyLungsSettings) -> BoolArray:
    labels, count = ndimage.label(lungs)
    if count == 0:
        return lungs
    volumes_cm3 = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_cm3
    floor = max(settings.min_component_cm3, settings.min_component_fraction * volumes_cm3.max())
    return _select(labels, count, np.flatnonzero(volumes_cm3 >= floor) + 1)


def _split_left_right(
    lungs: BoolArray, geometry: _Geometry, midline_x: float, settings: BodyLungsSettings
) -> tuple[BoolArray, BoolArray]:
    left = np.zeros_like(lungs)
    right = np.zeros_like(lungs)
    labels, _ = ndimage.label(lungs)
    for label, component in enumerate(ndimage.find_objects(labels), start=1):
        if component is None:
            continue
        part = labels[component] == label
        share_left = _left_share(part, component, geometry, midline_x)
        if share_left >= _SIDE_FRACTION:
            left[component] |= part
        elif share_left <= 1.0 - _SIDE_FRACTION:
            right[component] |= part
        else:
            part_left, part_right = _separate(part, component, geometry, midline_x, settings)
            left[component] |= part_left
            right[component] |= part_right
    return left, right


def _left_share(
    part: BoolArray, box: tuple[slice, ...], geometry: _Geometry, midline_x: float
) -> float:
    """Fraction of the voxels of ``part`` (cropped to ``box``) on the patient's left."""
    offset = np.array([b.start for b in box])
    xs = geometry.x_mm(np.argwhere(part) + offset)
    return float(np.mean(xs > midline_x))


def _separate(
    part: BoolArray,
    box: tuple[slice, ...],
    geometry: _Geometry,
    midline_x: float,
    settings: BodyLungsSettings,
) -> tuple[BoolArray, BoolArray]:
    """Split one component holding both lungs into (left, right)."""
    on_left = _left_of_midline(part.shape, box, geometry, midline_x)
    seeds = _erosion_seeds(part, box, geometry, midline_x, settings.max_split_erosions)
    if seeds is None:
        logger.warning("lungs joined and not separable by erosion; splitting at the midline")
        return part & on_left, part & ~on_left
    grown = _grow_seeds(seeds, part, on_left)
    return grown == 1, grown == 2


def _grow_seeds(
    seeds: npt.NDArray[np.int32], part: BoolArray, on_left: BoolArray
) -> npt.NDArray[np.int32]:
    """Geodesic growth of seeds 1 (left) and 2 (right) inside ``part``, one voxel per step.

    Voxels reached by both at the same step, or never reached, go by the midline.
    """
    labels = seeds.copy()
    step = ndimage.generate_binary_structure(3, 1)
    while True:
        free = part & (labels == 0)
        grow_left = ndimage.binary_dilation(labels == 1, step) & free
        grow_right = ndimage.binary_dilation(labels == 2, step) & free
        if not (grow_left.any() or grow_right.any()):
            break
        both = grow_left & grow_right
        labels[grow_left & ~both] = 1
        labels[grow_right & ~both] = 2
        labels[both] = np.where(on_left[both], 1, 2)
    rest = part & (labels == 0)
    labels[rest] = np.where(on_left[rest], 1, 2)
    return labels


def _erosion_seeds(
    part: BoolArray,
    box: tuple[slice, ...],
    geometry: _Geometry,
    midline_x: float,
    max_erosions: int,
) -> npt.NDArray[np.int32] | None:
    """Erode in-plane until a left and a right core separate; seeds 1 = left, 2 = right."""
    eroded = part
    for _ in range(max_erosions):
        eroded = ndimage.binary_erosion(eroded, _INPLANE)
        labels, count = ndimage.label(eroded)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = ndimage.sum_labels(eroded, labels, np.arange(1, count + 1))
        first, second = np.argsort(sizes)[::-1][:2] + 1
        if sizes[second - 1] < 0.05 * sizes[first - 1]:
            continue
        seeds = _sided_seeds(labels, (int(first), int(second)), box, geometry, midline_x)
        if seeds is not None:
            return seeds
    return None


def _sided_seeds(
    labels: npt.NDArray[np.int32],
    pair: tuple[int, int],
    box: tuple[slice, ...],
    geometry: _Geometry,
    midline_x: float,
) -> npt.NDArray[np.int32] | None:
    offset = np.array([b.start for b in box])
    centres = ndimage.center_of_mass(labels > 0, labels, list(pair))
    xs = [float(geometry.x_mm(np.asarray(c) + offset)) for c in centres]
    if (xs[0] > midline_x) == (xs[1] > midline_x):
        return None
    left, right = pair if xs[0] > xs[1] else pair[::-1]
    seeds = np.zeros(labels.shape, dtype=np.int32)
    seeds[labels == left] = 1
    seeds[labels == right] = 2
    return seeds


def _left_of_midline(
    shape: tuple[int, ...], box: tuple[slice, ...], geometry: _Geometry, midline_x: float
) -> BoolArray:
    """Voxels of the cropped ``box`` whose patient x is left of the midline."""
    index = np.indices(shape).reshape(3, -1).T + np.array([b.start for b in box])
    on_left: BoolArray = (geometry.x_mm(index) > midline_x).reshape(shape)
    return on_left


def _radius_px(radius_mm: float, spacing_mm: Spacing) -> int:
    return max(1, round(radius_mm / min(spacing_mm[1], spacing_mm[2])))


def _largest_component(mask: BoolArray) -> BoolArray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _components_touching(mask: BoolArray, core: BoolArray) -> BoolArray:
    """Connected components of ``mask`` that overlap ``core``."""
    labels, count = ndimage.label(mask)
    touched = np.unique(labels[core & mask])
    return _select(labels, count, touched[touched > 0])


def _template(ctx: EngineContext) -> StructureTemplate:
    try:
        return load_template(ctx.params.get("structure_template"))
    except TemplateError as exc:
        raise EngineError(f"structure template unusable: {exc}") from exc


def _volume(ctx: EngineContext) -> CTVolume:
    try:
        return ctx.ct
    except VolumeError as exc:
        raise EngineError(f"cannot build a CT volume: {exc}") from exc


def _structure(name: str, mask: BoolArray, template: StructureTemplate) -> Structure:
    try:
        colour, kind = template.colour(name), template.interpreted_type(name)
    except UnknownStructure as exc:
        raise EngineError(f"structure template has no entry for {name}") from exc
    return Structure(
        name=name,
        mask=mask,
        color_rgb=colour,
        interpreted_type=kind,
        description="classical threshold segmentation (AI draft, review required)",
    )
