"""Pipeline step ``segment_onnx``: organs from CT with an exported model and its card.

Which model: ``ctx.params["segmentation_model"]``, the path of a model card (default
``config/models/thorax.yaml``, the thorax model this project trains). Runtime options
(``segmentation_providers``, ``segmentation_threads``) are described in
:mod:`engines.segmentation.runtime`; optional extra model inputs come from
``ctx.params["segmentation_inputs"]`` (name -> list of numbers).

An External already in ``ctx.structures`` (from the classical engine, say) is kept: the
model's External is then not added, and the model only looks inside that External's
box. Structures of the same name from earlier engines are replaced, with a note.

A card's ``refined_by`` models (a cascade) run after it, each inside the box around the
structures its ``region`` names, and replace those structures (:func:`refine`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from monai.data import MetaTensor
from scipy import ndimage

from engines.base import EngineContext, EngineError, Structure
from engines.classical.body_lungs import fill_holes_per_slice
from engines.segmentation.card import THORAX_CARD, ModelCardError, OutputLabel, Postprocess
from engines.segmentation.processing import (
    BoolArray,
    BoxMask,
    FloatArray,
    VolumeGeometry,
    body_box,
    crop,
    infer,
    margin_px,
    mask_on_grid,
    preprocess,
    threshold_box,
    to_metatensor,
)
from engines.segmentation.runtime import ModelRuntime, RuntimeSettings, SessionCache
from engines.volume import CTVolume, VolumeError

logger = logging.getLogger(__name__)

DEFAULT_CARD = THORAX_CARD


class SegmentationEngine:
    """Adds the structures of a model card's outputs to ``ctx`` (ONNX Runtime)."""

    name: ClassVar[str] = "segment_onnx"
    inputs: ClassVar[tuple[str, ...]] = ("ct", "structures")
    outputs: ClassVar[tuple[str, ...]] = ("structures",)

    def __init__(self, card: str | Path | None = None) -> None:
        self.default_card = Path(card) if card else DEFAULT_CARD
        self.sessions = SessionCache()

    def run(self, ctx: EngineContext) -> None:
        """Segment ``ctx.ct`` and add one Structure per model output found."""
        runtime = self._runtime(ctx)
        ct = _volume(ctx)
        external = _existing_external(ctx.structures)
        labels = [label for label in runtime.card.outputs.labels if not _skip(label, external)]
        if external is not None and len(labels) < len(runtime.card.outputs.labels):
            ctx.notes.append(
                f"{self.name}: kept the existing {external.name}; the model's External was not added"
            )
        try:
            masks = segment_ct(
                ct.hu,
                VolumeGeometry.of(ct),
                runtime,
                labels,
                body=external.mask if external is not None else None,
                extra_inputs=ctx.params.get("segmentation_inputs"),
            )
        except ValueError as exc:
            raise EngineError(f"{self.name}: {exc}") from exc
        self._add(ctx, runtime, labels, masks, ct)

    def _runtime(self, ctx: EngineContext) -> ModelRuntime:
        card_path = Path(ctx.params.get("segmentation_model") or self.default_card)
        try:
            settings = RuntimeSettings.from_params(ctx.params)
            runtime, opened = self.sessions.get(card_path, settings)
        except (ModelCardError, ValueError) as exc:
            raise EngineError(f"{self.name}: {exc}") from exc
        ctx.notes.append(f"{self.name}: {runtime.summary()}")
        ctx.notes.extend(f"{self.name}: {note}" for note in runtime.notes)
        if opened:
            logger.info("job %s: opened %s", ctx.job_id, runtime.summary())
        return runtime

    def _add(
        self,
        ctx: EngineContext,
        runtime: ModelRuntime,
        labels: list[OutputLabel],
        masks: Mapping[str, BoxMask],
        ct: CTVolume,
    ) -> None:
        card = runtime.card
        earlier = {s.name for s in ctx.structures}
        for label in labels:
            found = masks.get(label.name)
            if found is None:
                ctx.notes.append(f"{self.name}: {label.name} not found by {card.name}")
                continue
            if label.name in earlier:
                ctx.notes.append(f"{self.name}: {label.name} from an earlier step replaced")
            ctx.add_structure(
                Structure(
                    name=label.name,
                    mask=found.full(ct.shape),
                    color_rgb=label.color_rgb,
                    interpreted_type=label.interpreted_type,
                    description=f"{card.name} {card.version} (AI draft, review required)",
                )
            )
            logger.info(
                "job %s: %s %.1f cm3",
                ctx.job_id,
                label.name,
                np.count_nonzero(found.mask) * ct.voxel_volume_cm3,
            )


def segment_ct(
    hu: FloatArray,
    geometry: VolumeGeometry,
    runtime: ModelRuntime,
    labels: Iterable[OutputLabel] | None = None,
    *,
    body: BoolArray | None = None,
    extra_inputs: Mapping[str, Any] | None = None,
) -> dict[str, BoxMask]:
    """Masks of ``labels`` (default: every card output) on the CT grid, by name.

    Parameters
    ----------
    hu
        CT in HU, (slice, row, column), on ``geometry``.
    body
        The patient outline when known: the model then sees only its box (plus a
        margin); otherwise the box of everything above -500 HU.
    """
    spec = runtime.card.input
    clock = _Stopwatch()
    skin = SkinDepth(body, geometry.spacing_mm) if body is not None else None
    margin = margin_px(geometry)
    box = body_box(body, margin) if body is not None else threshold_box(hu, geometry)
    image = to_metatensor(hu, geometry)
    if box is not None:
        image = crop(image, box)
    image = preprocess(image, spec)
    clock.lap("preprocess")
    probs = infer(image, runtime.predictor(extra_inputs), spec)
    clock.lap(f"inference on {'x'.join(str(n) for n in image.shape[1:])}")
    out = _masks(
        probs, labels if labels is not None else runtime.card.outputs.labels, geometry, skin
    )
    clock.lap("masks on the CT grid")
    for refiner in runtime.refiners:
        for name, refined in refine(hu, geometry, refiner, out, skin).items():
            if refined is None:
                del out[name]
            else:
                out[name] = refined
        clock.lap(f"refinement by {refiner.card.name}")
    logger.info("segmentation: %s", clock)
    return out


def refine(
    hu: FloatArray,
    geometry: VolumeGeometry,
    refiner: ModelRuntime,
    found: Mapping[str, BoxMask],
    skin: SkinDepth | None = None,
) -> dict[str, BoxMask | None]:
    """A refinement model's structures, from the box around those of ``found`` its region names.

    Only outputs already in ``found`` are refined (a label the first model did not find,
    or left out, stays out), and only those of at least the region's ``min_volume_cm3``.
    The refinement stands: a structure it does not find maps to None (the caller drops
    the first model's contour), with a log line. Empty when none of the region's
    structures was found.
    """
    region = refiner.card.region
    assert region is not None  # open_runtime checks refiners have one
    voxel_cm3 = float(np.prod(geometry.spacing_mm)) / 1000.0
    names = {*region.around, *(label.name for label in refiner.card.outputs.labels)}
    large = {
        name
        for name in names & found.keys()
        if np.count_nonzero(found[name].mask) * voxel_cm3 >= region.min_volume_cm3
    }
    wanted = [label for label in refiner.card.outputs.labels if label.name in large]
    box = _grown_box(
        [found[name] for name in region.around if name in large], geometry, region.margin_mm
    )
    if box is None or not wanted:
        return {}
    image = preprocess(crop(to_metatensor(hu, geometry), box), refiner.card.input)
    probs = infer(image, refiner.predictor(), refiner.card.input)
    masks = _masks(probs, wanted, geometry, skin)
    out: dict[str, BoxMask | None] = {}
    for label in wanted:
        out[label.name] = masks.get(label.name)
        if out[label.name] is None:
            logger.warning(
                "segmentation: %s found no %s where the first model drew one; dropped",
                refiner.card.name,
                label.name,
            )
    return out


def _grown_box(
    masks: Iterable[BoxMask], geometry: VolumeGeometry, margin_mm: float
) -> tuple[slice, slice, slice] | None:
    """The (slice, row, column) box of the voxels of ``masks``, grown by ``margin_mm`` and
    clipped to the CT grid (what ``body_box`` gives for their union, without drawing the
    union on the whole grid); None when they are all empty."""
    spans = []
    for found in masks:
        inner = body_box(found.mask, (0, 0, 0))
        if inner is not None:
            spans.append(
                [
                    (o.start + i.start, o.start + i.stop)
                    for o, i in zip(found.box, inner, strict=True)
                ]
            )
    if not spans:
        return None
    margin = margin_px(geometry, margin_mm)
    box = [
        slice(
            max(min(span[axis][0] for span in spans) - margin[axis], 0),
            min(max(span[axis][1] for span in spans) + margin[axis], geometry.shape[axis]),
        )
        for axis in range(3)
    ]
    return box[0], box[1], box[2]


def _masks(
    probs: MetaTensor,
    labels: Iterable[OutputLabel],
    geometry: VolumeGeometry,
    skin: SkinDepth | None,
) -> dict[str, BoxMask]:
    out: dict[str, BoxMask] = {}
    for label in labels:
        found = mask_on_grid(probs, label.indices(), geometry, label.threshold)
        if found is not None:
            found = postprocess(found, label.postprocess, skin)
        if found is not None and found.mask.any():
            out[label.name] = found
    return out


class _Stopwatch:
    """Seconds per named phase, for one log line."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._laps.append((name, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self._laps)


def postprocess(found: BoxMask, steps: Postprocess, skin: SkinDepth | None = None) -> BoxMask:
    """Skin margin (with the body's ``skin`` depth), largest connected component
    (26-connected) and per-slice hole filling, as asked."""
    mask = found.mask
    if steps.skin_margin_mm > 0 and skin is not None:
        mask = mask & skin.at_least(steps.skin_margin_mm, found.box)
    if steps.largest_component:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            mask = labelled == int(np.argmax(sizes))
    if steps.fill_holes:
        mask = fill_holes_per_slice(mask)
    return BoxMask(box=found.box, mask=mask)


class SkinDepth:
    """Depth under the body's surface (mm, in-plane Euclidean distance on each axial
    slice) on a CT grid, computed once per slice when first asked for: the labels of a
    job (and the thresholds a calibration tries) share it."""

    def __init__(self, body: BoolArray, spacing_mm: tuple[float, float, float]) -> None:
        self.body = body
        self.sampling = spacing_mm[1:]
        self._near: tuple[slice, slice] | None = None
        self._slices: dict[int, FloatArray] = {}

    def at_least(self, margin_mm: float, box: tuple[slice, slice, slice]) -> BoolArray:
        """Inside ``box``: the voxels at least ``margin_mm`` under the surface (whole
        slices are measured, so the box edge is no surface)."""
        z, r, c = (s.indices(n) for s, n in zip(box, self.body.shape, strict=True))
        out = np.zeros((z[1] - z[0], r[1] - r[0], c[1] - c[0]), dtype=bool)
        near = self._near_box()
        if near is None:
            return out
        r0, r1 = max(r[0], near[0].start), min(r[1], near[0].stop)
        c0, c1 = max(c[0], near[1].start), min(c[1], near[1].stop)
        if r0 >= r1 or c0 >= c1:
            return out
        inner = (
            slice(r0 - near[0].start, r1 - near[0].start),
            slice(c0 - near[1].start, c1 - near[1].start),
        )
        for i, index in enumerate(range(z[0], z[1])):
            depth = self._depth(index, near)
            if depth is not None:
                out[i, r0 - r[0] : r1 - r[0], c0 - c[0] : c1 - c[0]] = depth[inner] >= margin_mm
        return out

    def _near_box(self) -> tuple[slice, slice] | None:
        """The body's in-plane box plus one background voxel (where the transform runs)."""
        if self._near is None:
            rows = np.flatnonzero(self.body.any(axis=(0, 2)))
            cols = np.flatnonzero(self.body.any(axis=(0, 1)))
            if rows.size == 0:
                return None
            self._near = (
                slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2),
                slice(max(int(cols[0]) - 1, 0), int(cols[-1]) + 2),
            )
        return self._near

    def _depth(self, index: int, near: tuple[slice, slice]) -> FloatArray | None:
        if index not in self._slices:
            inside = self.body[index][near]
            if not inside.any():
                return None
            self._slices[index] = ndimage.distance_transform_edt(inside, sampling=self.sampling)
        return self._slices[index]


def _existing_external(structures: Iterable[Structure]) -> Structure | None:
    for s in structures:
        if s.interpreted_type == "EXTERNAL" or s.name == "External":
            return s
    return None


def _skip(label: OutputLabel, external: Structure | None) -> bool:
    is_external = label.interpreted_type == "EXTERNAL" or label.name == "External"
    return external is not None and is_external


def _volume(ctx: EngineContext) -> CTVolume:
    try:
        return ctx.ct
    except VolumeError as exc:
        raise EngineError(f"cannot build a CT volume: {exc}") from exc
