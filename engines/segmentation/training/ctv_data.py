"""Training samples of the breast CTV models, and the card they are exported with.

A sample is one breast case (:class:`BreastCase`) scanned on a random planning-CT
acquisition (as the thorax phantoms: pixel 0.7..1.3 mm, slices 1.5..5 mm, head- or
feet-first, blur and noise; the scan runs from below the breasts to well above the lung
apex), cropped and preprocessed exactly like the engine does, plus the CTV *parts* of
every possible context on the model grid: each model voxel is split 4 x 4 in-plane
(1 mm), the rules are evaluated there, and the fraction of sub-voxels per part (0..16)
is kept. Any context's soft targets follow from two of the parts
(:meth:`CTVSample.targets`), so one scan serves the factual context and every
counterfactual one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from engines.segmentation.card import InputSpec
from engines.segmentation.context import CONTEXT_LENGTH, CONTEXT_VERSION, BreastContext
from engines.segmentation.processing import (
    body_box,
    crop,
    grid_coordinates_lps,
    margin_px,
    preprocess,
    threshold_box,
    to_metatensor,
)
from engines.segmentation.training.breast import (
    BREAST_SKIN_MM,
    CHESTWALL_SKIN_MM,
    CTV_CLASSES,
    NODES_SKIN_MM,
    PART_BITS,
    BreastCase,
    Scenario,
    case_z_range,
    context_parts,
    render_case_slice,
    scan_case,
)
from engines.segmentation.training.data import acquisition_geometry, random_acquisition
from engines.segmentation.training.phantom import Acquisition

logger = logging.getLogger(__name__)

SPLIT = 4  # in-plane sub-voxels per model voxel and axis
PATCH_SIZE = (128, 128, 32)
SPACING_MM = (4.0, 4.0, 4.0)
CARD_VERSION = "1.3.0"
MULTIMODAL_NAME = "rtnode-breast-ctv-context"
VISION_NAME = "rtnode-breast-ctv-vision-only"


@dataclass(frozen=True)
class CTVSample:
    """One preprocessed case: image (x, y, z) and part counts (parts, x, y, z), 0..16."""

    seed: int
    scenario: Scenario
    image: npt.NDArray[np.float32]
    parts: npt.NDArray[np.uint8]

    def targets(self, context: BreastContext, box: tuple[slice, ...]) -> torch.Tensor:
        """Soft targets (background, primary, nodes) of ``context`` inside ``box``."""
        primary, nodes = context_parts(context)
        scale = np.float32(1.0 / (SPLIT * SPLIT))
        p = self.parts[primary][box].astype(np.float32) * scale
        n = (
            self.parts[nodes][box].astype(np.float32) * scale
            if nodes is not None
            else np.zeros_like(p)
        )
        return torch.from_numpy(np.stack([np.clip(1.0 - p - n, 0.0, 1.0), p, n]))

    def present(self, part: int, min_voxels: int = 50) -> bool:
        """Whether a part has at least ``min_voxels`` model voxels (half or more inside)."""
        return int(np.count_nonzero(self.parts[part] >= SPLIT * SPLIT // 2)) >= min_voxels


def model_spec() -> InputSpec:
    """The input spec of the CTV cards (the training data is made to match it)."""
    return InputSpec.model_validate(card_template(multimodal=True)["input"])


def case_acquisition(
    case: BreastCase, rng: np.random.Generator, full_field: bool = False
) -> Acquisition:
    """A random planning-CT acquisition of ``case`` over a breast scan range."""
    acq = random_acquisition(case.rendered_anatomy(), rng, full_field)
    thickness = abs(float(acq.zs[1] - acq.zs[0]))
    z_lo, z_hi = case_z_range(case, rng)
    zs = np.arange(z_lo, z_hi, thickness, dtype=np.float32)
    if acq.xs[-1] < acq.xs[0]:  # feet first
        zs = zs[::-1]
    return replace(acq, zs=np.ascontiguousarray(zs))


def make_ctv_sample(seed: int, spec: InputSpec) -> CTVSample:
    """Scan case ``seed`` and preprocess it like the engine; render every CTV part."""
    case = BreastCase.sample(seed)
    rng = np.random.default_rng([seed, 7919])
    acq = case_acquisition(case, rng)
    hu, truth, _ = scan_case(case, acq)
    geometry = acquisition_geometry(acq)
    if rng.random() < 0.5:
        box = body_box(truth > 0, margin_px(geometry))
    else:
        box = threshold_box(hu, geometry)
    if box is None:
        raise ValueError(f"case {seed} has no body in its field of view")
    image = preprocess(crop(to_metatensor(hu, geometry), box), spec)
    xs, ys, zs = grid_coordinates_lps(image)
    parts = np.stack([_part_counts(case, xs, ys, float(z)) for z in zs], axis=-1)
    return CTVSample(
        seed=seed,
        scenario=case.scenario,
        image=image[0].numpy().astype(np.float32),
        parts=np.ascontiguousarray(parts),
    )


def _subdivide(coords: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    step = float(coords[1] - coords[0]) if coords.size > 1 else 4.0
    offsets = (np.arange(SPLIT, dtype=np.float32) + 0.5) / SPLIT - 0.5
    return (coords[:, None] + offsets[None, :] * np.float32(step)).ravel().astype(np.float32)


def _part_counts(
    case: BreastCase, xs: npt.NDArray[np.float32], ys: npt.NDArray[np.float32], z: float
) -> npt.NDArray[np.uint8]:
    """(parts, x, y) sub-voxel counts of one model slice."""
    _, _, bits = render_case_slice(case, _subdivide(xs), _subdivide(ys), z, with_ctv=True)
    assert bits is not None
    blocks = bits.reshape(ys.size, SPLIT, xs.size, SPLIT)
    counts = [((blocks >> b) & 1).sum(axis=(1, 3), dtype=np.uint8).T for b in range(len(PART_BITS))]
    return np.stack(counts)


# --------------------------------------------------------------------------- card

_INTENDED_USE = (
    "Draft clinical target volume for adjuvant breast radiotherapy on axial planning CT "
    "(supine, head- or feet-first): the whole breast after breast-conserving surgery or the "
    "chest wall after mastectomy, on the treated side, with the regional nodes (axillary "
    "levels I-III, supraclavicular, internal mammary) when the strategy includes them. "
    "{conditioning} For review and editing by a qualified person before any clinical use. "
    "Trained only on synthetic phantoms with rule-based CTVs; demonstrates context-aware "
    "contouring on the node and is not validated on patient CT."
)
_LIMITATIONS = (
    "Trained on synthetic phantoms only; the CTV rules are simplified stand-ins for the "
    "ESTRO/RTOG contouring guidelines, not the guidelines themselves.",
    "Supine HFS/FFS axial CT only; no arms-up board, implants, reconstruction or boost volumes.",
    "Model grid 4 mm: expect boundary differences of about 2 mm.",
)


def card_template(
    multimodal: bool,
    training: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of the multimodal model (``multimodal``) or of its vision-only twin."""
    conditioning = (
        "The strategy from the validated clinical text enters as the context vector "
        f"'context' ({CONTEXT_VERSION}, engines/segmentation/context.py); run by the "
        "segment_ctv step."
        if multimodal
        else "Vision-only twin of the context model (no clinical input): kept for comparison, "
        "not for use."
    )
    extra = [
        {
            "name": "context",
            "kind": "context_vector",
            "length": CONTEXT_LENGTH,
            "required": True,
            "description": f"{CONTEXT_VERSION}: left, right, breast, chest wall, regional "
            "nodes, SCL ESTRO, SCL RTOG, context given (0/1 each)",
        }
    ]
    return {
        "name": MULTIMODAL_NAME if multimodal else VISION_NAME,
        "version": CARD_VERSION,
        "intended_use": _INTENDED_USE.format(conditioning=conditioning),
        "modality": "CT",
        "precision": "fp32",
        "input": {
            "name": "image",
            "spacing_mm": list(SPACING_MM),
            "orientation": "RAS",
            "intensity": {
                "window_hu": [-1000.0, 1000.0],
                "normalisation": {"kind": "zscore", "mean": -300.0, "std": 300.0},
            },
            "patch_size": list(PATCH_SIZE),
            "overlap": 0.25,
        },
        "extra_inputs": extra if multimodal else [],
        "outputs": {
            "name": "logits",
            "activation": "softmax",
            "channels": len(CTV_CLASSES),
            "labels": [
                {
                    "index": 1,
                    "name": "CTVp",
                    "color_rgb": [255, 128, 0],
                    "interpreted_type": "CTV",
                    "postprocess": {
                        # the rules' margins: the smaller one without a context
                        "skin_margin_mm": CHESTWALL_SKIN_MM,
                        "skin_margin_mm_by_context": (
                            {
                                "target_breast": BREAST_SKIN_MM,
                                "target_chestwall": CHESTWALL_SKIN_MM,
                            }
                            if multimodal
                            else {}
                        ),
                        "largest_component": True,
                        "fill_holes": True,
                    },
                },
                {
                    "index": 2,
                    "name": "CTVn",
                    "color_rgb": [255, 128, 0],
                    "interpreted_type": "CTV",
                    "postprocess": {
                        "skin_margin_mm": NODES_SKIN_MM,
                        "largest_component": False,
                        "fill_holes": True,
                    },
                },
            ],
        },
        "limitations": list(_LIMITATIONS),
        "training": training or {},
        "validation": validation or {},
    }
