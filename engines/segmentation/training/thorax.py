"""The shipped thorax model's card template: what the training script exports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.segmentation.training.phantom import LABELS

CARD_NAME = "rtnode-thorax-phantom"
CARD_VERSION = "1.1.0"  # 1.1.0: exported slices first (SAR); refinements trained 2,000 steps
PATCH_SIZE = (128, 128, 32)
# The networks train on an RAS grid (x, y, z: the short patch axis last, PyTorch's fast
# layout on this CPU) and are exported slices first (SAR: z, y, x), where ONNX Runtime
# runs them about 1.3x faster per patch (engines/segmentation/export.py; docs/segmentation.md).
EXPORT_AXIS_ORDER = (2, 1, 0)

# TG-263 name -> (display colour, RT ROI Interpreted Type, post-processing); colours as
# in config/structures.yaml.
OUTPUTS: dict[str, tuple[tuple[int, int, int], str, dict[str, bool]]] = {
    "External": ((0, 255, 0), "EXTERNAL", {"largest_component": True, "fill_holes": True}),
    "Lung_L": ((0, 200, 255), "ORGAN", {"largest_component": True, "fill_holes": False}),
    "Lung_R": ((255, 200, 0), "ORGAN", {"largest_component": True, "fill_holes": False}),
    "Heart": ((255, 0, 128), "ORGAN", {"largest_component": True, "fill_holes": True}),
    "SpinalCord": ((255, 255, 0), "ORGAN", {"largest_component": True, "fill_holes": True}),
    "Esophagus": ((160, 100, 40), "ORGAN", {"largest_component": True, "fill_holes": True}),
    "Breast_L": ((255, 150, 200), "ORGAN", {"largest_component": True, "fill_holes": True}),
    "Breast_R": ((255, 180, 220), "ORGAN", {"largest_component": True, "fill_holes": True}),
}

INTENDED_USE = (
    "Draft contours of External, Lung_L, Lung_R, Heart, SpinalCord, Esophagus, Breast_L and "
    "Breast_R on axial thorax planning CT (supine, head- or feet-first), for review and "
    "editing by a qualified person before any clinical use. Trained only on synthetic "
    "phantoms: it shows the node works end to end and is a baseline to replace with a "
    "model trained and validated on the site's own data."
)

LIMITATIONS = (
    "Trained on synthetic phantoms only; never validated on patient CT.",
    "Supine HFS/FFS axial CT only; no prone, decubitus, or gantry tilt.",
    "No implants, contrast agent in the esophagus, lung pathology, or arms down in training.",
    "SpinalCord follows the synthetic cord inside the canal; Breast follows a synthetic "
    "ellipsoid bounded by the pectoral muscle.",
)


def card_template(
    training: dict[str, Any],
    validation: dict[str, Any] | None = None,
    refined_by: Sequence[str] = (),
) -> dict[str, Any]:
    """The thorax card (without model_file and sha256, which the export fills in);
    ``refined_by``: the refinement cards (engines/segmentation/training/refine.py)."""
    labels = []
    for index, name in enumerate(LABELS[1:], start=1):
        key = "External" if name == "Body" else name
        colour, kind, post = OUTPUTS[key]
        entry: dict[str, Any] = {
            "index": index,
            "name": key,
            "color_rgb": list(colour),
            "interpreted_type": kind,
            "postprocess": post,
        }
        if key == "External":
            entry["covers"] = list(range(1, len(LABELS)))
        labels.append(entry)
    return {
        "name": CARD_NAME,
        "version": CARD_VERSION,
        "intended_use": INTENDED_USE,
        "modality": "CT",
        "precision": "fp32",
        "input": {
            "name": "image",
            "spacing_mm": [2.0, 2.0, 3.0],
            "orientation": "RAS",
            "intensity": {
                "window_hu": [-1000.0, 1000.0],
                "normalisation": {"kind": "zscore", "mean": -300.0, "std": 300.0},
            },
            "patch_size": list(PATCH_SIZE),
            "overlap": 0.25,
        },
        "extra_inputs": [],
        "outputs": {
            "name": "logits",
            "activation": "softmax",
            "channels": len(LABELS),
            "labels": labels,
        },
        "refined_by": list(refined_by),
        "limitations": list(LIMITATIONS),
        "training": training,
        "validation": validation or {},
    }
