"""Pipeline step ``segment_ctv``: the breast CTV the clinical text asks for (LLMSeg-style).

The text stage leaves its validated result in ``ctx.clinical`` (site, laterality,
strategy). For a breast case with a side, a target (whole breast or chest wall) and a
regional-nodes decision, this step encodes the strategy as the context vector
(:mod:`engines.segmentation.context`), runs the context-aware model of the card
``ctx.params["ctv_model"]`` (default ``config/models/breast_ctv.yaml``) through the
segmentation runtime and processing of ``segment_onnx``, and adds:

* ``CTVp_Breast_L``/``_R`` (whole breast) or ``CTVp_Chestwall_L``/``_R`` (chest wall):
  the primary CTV;
* ``CTVn_Breast_L``/``_R``: the regional nodal CTV of the breast cancer (axillary levels
  I-III, supraclavicular, internal mammary), only when the strategy includes the nodes.

TG-263 target naming: type ``CTV``, classifier ``p`` (primary) or ``n`` (nodal), the
anatomy, the side. Colour and RT ROI Interpreted Type come from the structure template
(``CTV`` prefix: CTV). The CTV is kept on the treated side of the patient's midline;
anything the model put across it is removed, with a note. Without a clinical result,
for another site, or with a fact missing, nothing is added and the notes say why: the
job goes on (organs still come from the other steps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np

from engines.base import EngineContext, EngineError, Structure
from engines.classical.body_lungs import segment_body
from engines.segmentation.card import BREAST_CTV_CARD, ModelCardError, OutputLabel
from engines.segmentation.context import (
    CONTEXT_LENGTH,
    FIELDS,
    BreastContext,
    breast_context,
    missing_facts,
)
from engines.segmentation.engine import segment_ct
from engines.segmentation.processing import BoolArray, VolumeGeometry
from engines.segmentation.runtime import ModelRuntime, RuntimeSettings, SessionCache
from engines.structures import StructureTemplate, TemplateError, UnknownStructure, load_template
from engines.volume import CTVolume, VolumeError

logger = logging.getLogger(__name__)

DEFAULT_CTV_CARD = BREAST_CTV_CARD
PRIMARY_LABEL = "CTVp"
NODAL_LABEL = "CTVn"


class ContextCTVEngine:
    """Adds the context-aware breast CTV to ``ctx`` (or nothing, with a note)."""

    name: ClassVar[str] = "segment_ctv"
    inputs: ClassVar[tuple[str, ...]] = ("ct", "clinical", "structures")
    outputs: ClassVar[tuple[str, ...]] = ("structures",)

    def __init__(self, card: str | Path | None = None) -> None:
        self.default_card = Path(card) if card else DEFAULT_CTV_CARD
        self.sessions = SessionCache()

    def run(self, ctx: EngineContext) -> None:
        """Contour the CTV of ``ctx.clinical``'s strategy on ``ctx.ct``."""
        context = breast_context(ctx.clinical)
        if context is None:
            ctx.notes.append(f"{self.name}: no CTV added: {missing_facts(ctx.clinical)}")
            return
        runtime = self._runtime(ctx)
        ct = _volume(ctx)
        geometry = VolumeGeometry.of(ct)
        body = _body(ctx, ct)
        ctx.notes.append(f"{self.name}: context {context.describe()}")
        labels = context_labels(runtime.card.outputs.labels, context)
        try:
            masks = segment_ct(
                ct.hu,
                geometry,
                runtime,
                labels,
                body=body,
                extra_inputs={_context_input(runtime): context.vector()},
            )
        except ValueError as exc:
            raise EngineError(f"{self.name}: {exc}") from exc
        treated = treated_side(geometry, body, context)
        template = _template(ctx)
        for label in labels:
            name = structure_name(label.name, context)
            found = masks.get(label.name)
            mask = found.full(ct.shape) if found is not None else np.zeros(ct.shape, dtype=bool)
            across = mask & ~treated
            if across.any():
                ctx.notes.append(
                    f"{self.name}: {name}: removed {across.sum() * ct.voxel_volume_cm3:.1f} cm3 "
                    "the model put across the midline"
                )
                mask &= treated
            if not mask.any():
                ctx.notes.append(f"{self.name}: {name} not found by {runtime.card.name}")
                continue
            ctx.add_structure(_structure(name, mask, template, runtime))
            logger.info("job %s: %s %.1f cm3", ctx.job_id, name, mask.sum() * ct.voxel_volume_cm3)

    def _runtime(self, ctx: EngineContext) -> ModelRuntime:
        card_path = Path(ctx.params.get("ctv_model") or self.default_card)
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


def structure_name(label_name: str, context: BreastContext) -> str:
    """TG-263 name of a model output for ``context`` (``CTVp`` -> ``CTVp_Chestwall_L``)."""
    if label_name == PRIMARY_LABEL:
        anatomy = "Breast" if context.target == "breast" else "Chestwall"
        return f"{PRIMARY_LABEL}_{anatomy}_{context.side_suffix}"
    if label_name == NODAL_LABEL:
        return f"{NODAL_LABEL}_Breast_{context.side_suffix}"
    return f"{label_name}_{context.side_suffix}"


def treated_side(
    geometry: VolumeGeometry, body: BoolArray | None, context: BreastContext
) -> BoolArray:
    """Voxels on the treated side of the patient's midline, (slice, row, column).

    The midline is the median, over the slices, of the centre of the body's posterior
    half (the back is symmetric; breasts and a mastectomy are not); without a body, the
    centre of the field of view.
    """
    x_mm = _column_x_mm(geometry)
    midline = midline_x_mm(geometry, body) if body is not None else float(np.median(x_mm))
    sign = 1.0 if context.laterality == "left" else -1.0  # LPS: +x is the patient's left
    side = (x_mm - midline) * sign > 0
    return np.broadcast_to(side[None, :, :], geometry.shape)


def midline_x_mm(geometry: VolumeGeometry, body: BoolArray) -> float:
    """Patient x (LPS mm) of the body's midline (see :func:`treated_side`)."""
    x_mm = _column_x_mm(geometry)
    centres = []
    for index in np.flatnonzero(body.any(axis=(1, 2))):
        rows = np.flatnonzero(body[index].any(axis=1))
        y_mm = _row_y_mm(geometry)[rows]
        posterior = rows[y_mm >= np.median(y_mm)]
        for row in posterior[:: max(1, posterior.size // 20)]:
            cols = np.flatnonzero(body[index, row])
            centres.append(0.5 * (x_mm[row, cols[0]] + x_mm[row, cols[-1]]))
    if not centres:
        return float(np.median(x_mm))
    return float(np.median(centres))


def _column_x_mm(geometry: VolumeGeometry) -> np.ndarray:
    """Patient x (LPS mm) of every (row, column) of a slice."""
    _, dr, dc = geometry.spacing_mm
    rows = np.arange(geometry.shape[1])[:, None]
    cols = np.arange(geometry.shape[2])[None, :]
    return (
        geometry.origin_mm[0]
        + cols * dc * geometry.row_cosines[0]
        + rows * dr * geometry.column_cosines[0]
    )


def _row_y_mm(geometry: VolumeGeometry) -> np.ndarray:
    """Patient y (LPS mm) of every row at the first column (axial slices)."""
    _, dr, _ = geometry.spacing_mm
    return geometry.origin_mm[1] + np.arange(geometry.shape[1]) * dr * geometry.column_cosines[1]


def context_labels(labels: Iterable[OutputLabel], context: BreastContext) -> list[OutputLabel]:
    """The outputs this context asks for (no nodal CTV without regional nodes), each with
    the skin margin its card gives for the context's flags (whole breast vs chest wall)."""
    flags = {name for name, value in zip(FIELDS, context.vector(), strict=True) if value > 0}
    out = []
    for label in labels:
        if label.name == NODAL_LABEL and not context.regional_nodes:
            continue
        steps = label.postprocess
        margins = [m for flag, m in steps.skin_margin_mm_by_context.items() if flag in flags]
        if margins:
            steps = steps.model_copy(update={"skin_margin_mm": max(margins)})
            label = label.model_copy(update={"postprocess": steps})
        out.append(label)
    return out


def _context_input(runtime: ModelRuntime) -> str:
    for spec in runtime.card.extra_inputs:
        if spec.kind == "context_vector" and spec.length == CONTEXT_LENGTH:
            return spec.name
    raise EngineError(
        f"segment_ctv: model {runtime.card.name} declares no context_vector input of length "
        f"{CONTEXT_LENGTH}; it is not a context-aware CTV model"
    )


def _body(ctx: EngineContext, ct: CTVolume) -> BoolArray | None:
    for s in ctx.structures:
        if s.interpreted_type == "EXTERNAL" or s.name == "External":
            return s.mask
    try:
        return segment_body(ct.hu, ct.spacing_mm)
    except EngineError as exc:
        ctx.notes.append(f"segment_ctv: no body outline ({exc}); midline at the field's centre")
        return None


def _template(ctx: EngineContext) -> StructureTemplate:
    try:
        return load_template(ctx.params.get("structure_template"))
    except TemplateError as exc:
        raise EngineError(f"structure template unusable: {exc}") from exc


def _structure(
    name: str, mask: BoolArray, template: StructureTemplate, runtime: ModelRuntime
) -> Structure:
    try:
        colour, kind = template.colour(name), template.interpreted_type(name)
    except UnknownStructure as exc:
        raise EngineError(f"structure template has no entry for {name}") from exc
    card = runtime.card
    return Structure(
        name=name,
        mask=mask,
        color_rgb=colour,
        interpreted_type=kind,
        description=f"{card.name} {card.version} (AI draft, review required)",
    )


def _volume(ctx: EngineContext) -> CTVolume:
    try:
        return ctx.ct
    except VolumeError as exc:
        raise EngineError(f"cannot build a CT volume: {exc}") from exc
