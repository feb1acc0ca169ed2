"""Evidence for the context-aware breast CTV: multimodal vs vision-only, counterfactuals.

Held-out breast cases (seeds from ``HELD_OUT_SEED``; training uses 0..N-1) are scanned
as 512 x 512 planning CTs with a 500 mm field (random slice thickness, head- or
feet-first, noise and blur), run through the engine's inference path (crop to the
External, preprocessing, sliding window on ONNX Runtime, masks on the CT grid,
post-processing; the multimodal model also through ``segment_ctv``'s treated-side
restriction) and compared on the CT grid with the rule CTV:

* Dice and HD95 (mm) of the CTV (primary + nodes) for the multimodal model and its
  vision-only twin, on every case and on the cases where the text decides;
* the laterality correct rate (the raw model output, before the side restriction, lies
  on the treated side of the midline);
* the counterfactual test: the same CT with only the context changed (left <-> right,
  N0 <-> N1, breast-conserving surgery -> mastectomy), scored against the rule CTV of the
  changed context, with the direction checks the rules imply.

    .venv/bin/python -m engines.segmentation.training.evaluate_ctv --cases 20 \
        --markdown docs/context_ctv.md --write-cards
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from engines.segmentation.card import OutputLabel, load_card, write_card
from engines.segmentation.context import BreastContext, Laterality
from engines.segmentation.ctv_engine import (
    NODAL_LABEL,
    PRIMARY_LABEL,
    context_labels,
    treated_side,
)
from engines.segmentation.engine import SkinDepth, postprocess
from engines.segmentation.processing import (
    BoolArray,
    body_box,
    crop,
    infer,
    margin_px,
    mask_on_grid,
    preprocess,
    to_metatensor,
)
from engines.segmentation.runtime import ModelRuntime, RuntimeSettings, open_runtime
from engines.segmentation.training.breast import NODES, BreastCase, ctv_labels, scan_case
from engines.segmentation.training.ctv_data import case_acquisition
from engines.segmentation.training.data import acquisition_geometry
from engines.segmentation.training.metrics import dice, hd95_mm

logger = logging.getLogger(__name__)

HELD_OUT_SEED = 3_000_000


@dataclass(frozen=True)
class Prediction:
    """A model's CTV on the CT grid: primary and nodal masks (nodes may be empty)."""

    primary: BoolArray
    nodes: BoolArray
    raw_on_side: float  # share of the raw output's volume on the treated side

    @property
    def ctv(self) -> BoolArray:
        return self.primary | self.nodes


class HeldOutCase:
    """One held-out case: scanned CT, exact rule parts, preprocessed model input."""

    def __init__(self, seed: int, spec_runtime: ModelRuntime) -> None:
        self.seed = seed
        self.case = BreastCase.sample(seed)
        acq = case_acquisition(self.case, np.random.default_rng([seed, 31]), full_field=True)
        hu, truth, bits = scan_case(self.case, acq, with_ctv=True)
        assert bits is not None
        self.bits = bits
        self.geometry = acquisition_geometry(acq)
        self.body = truth > 0
        self.skin = SkinDepth(self.body, self.geometry.spacing_mm)
        box = body_box(self.body, margin_px(self.geometry))
        assert box is not None
        image = crop(to_metatensor(hu, self.geometry), box)
        self.image: MetaTensor = preprocess(image, spec_runtime.card.input)
        self.voxel_cm3 = float(np.prod(self.geometry.spacing_mm)) / 1000.0

    def truth(self, context: BreastContext) -> np.ndarray:
        """Rule CTV labels (0, 1 primary, 2 nodes) of ``context`` on the CT grid."""
        return ctv_labels(self.bits, context)

    def predict(self, runtime: ModelRuntime, context: BreastContext | None) -> Prediction:
        """Run a model as the engine does (``context`` None: the vision-only twin)."""
        probs = self.probabilities(runtime, context)
        return self.prediction(probs, runtime.card.outputs.labels, context)

    def probabilities(self, runtime: ModelRuntime, context: BreastContext | None) -> MetaTensor:
        """The model's probabilities on its grid (``context`` None: the vision-only twin)."""
        feeds = {runtime.card.extra_inputs[0].name: context.vector()} if context else None
        return infer(self.image, runtime.predictor(feeds), runtime.card.input)

    def prediction(
        self,
        probs: MetaTensor,
        labels: Sequence[OutputLabel],
        context: BreastContext | None,
    ) -> Prediction:
        """Masks on the CT grid from the probabilities, with the labels' thresholds and
        post-processing, as ``segment_ctv`` makes them."""
        masks = {}
        for label in context_labels(labels, context) if context is not None else labels:
            found = mask_on_grid(probs, label.indices(), self.geometry, label.threshold)
            if found is not None:
                found = postprocess(found, label.postprocess, self.skin)
                masks[label.name] = found.full(self.geometry.shape)
        empty = np.zeros(self.geometry.shape, dtype=bool)
        primary, nodes = masks.get(PRIMARY_LABEL, empty), masks.get(NODAL_LABEL, empty)
        factual = context or self.case.scenario.context
        side = treated_side(self.geometry, self.body, factual)
        raw = primary | nodes
        share = float((raw & side).sum() / max(1, raw.sum()))
        if context is not None:  # segment_ctv keeps the treated side only
            primary, nodes = primary & side, nodes & side
        return Prediction(primary=primary, nodes=nodes, raw_on_side=share)


def score(case: HeldOutCase, prediction: Prediction, context: BreastContext) -> dict[str, float]:
    """Dice and HD95 of the CTV (and Dice of its parts) against the rule CTV."""
    truth = case.truth(context)
    expected = truth > 0
    spacing = case.geometry.spacing_mm
    out = {
        "dice": round(dice(prediction.ctv, expected), 4),
        "hd95_mm": round(hd95_mm(prediction.ctv, expected, spacing), 1),
        "dice_primary": round(dice(prediction.primary, truth == 1), 4),
        "volume_cm3": round(float(prediction.ctv.sum()) * case.voxel_cm3, 1),
        "truth_cm3": round(float(expected.sum()) * case.voxel_cm3, 1),
    }
    if context.regional_nodes:
        out["dice_nodes"] = round(dice(prediction.nodes, truth == NODES), 4)
    return out


def counterfactuals(case: BreastCase) -> dict[str, BreastContext]:
    """The changed contexts of the counterfactual test that the rules define on this CT."""
    factual = case.scenario.context
    other: Laterality = "right" if factual.laterality == "left" else "left"
    out = {"side": replace(factual, laterality=other)}
    if factual.regional_nodes:
        out["nodes"] = replace(factual, regional_nodes=False, scl_guideline=None)
    else:
        out["nodes"] = replace(factual, regional_nodes=True, scl_guideline="ESTRO")
    if factual.target == "breast":
        out["surgery"] = replace(factual, target="chestwall")
    return out


def direction_checks(
    case: HeldOutCase, kind: str, before: Prediction, after: Prediction, changed: BreastContext
) -> bool:
    """Whether the contour changed the way the rules say."""
    midline = case.case.anatomy.shift_x
    if kind == "side":
        return _side_of(case, after.ctv, midline) == changed.laterality
    if kind == "nodes":
        if changed.regional_nodes:
            added = after.ctv & ~before.ctv
            return bool(after.nodes.any()) and _z_mean(case, added) > _z_mean(case, before.ctv)
        return not after.nodes.any() and after.ctv.sum() < before.ctv.sum()
    # breast -> chest wall: the contour now covers the chest wall beyond the breast CTV
    # (pectoral muscle, tissue near the skin) that the factual contour left out
    before_truth = case.truth(case.case.scenario.context) == 1
    gained = (case.truth(changed) == 1) & ~before_truth
    if not gained.any():
        return False
    share_after = float((after.primary & gained).sum()) / float(gained.sum())
    share_before = float((before.primary & gained).sum()) / float(gained.sum())
    return share_after > 0.5 > share_before


def _side_of(case: HeldOutCase, mask: BoolArray, midline_mm: float) -> str:
    if not mask.any():
        return "none"
    _, _, cols = np.nonzero(mask)
    g = case.geometry
    x = g.origin_mm[0] + cols.mean() * g.spacing_mm[2] * g.row_cosines[0]
    return "left" if x > midline_mm else "right"


def _z_mean(case: HeldOutCase, mask: BoolArray) -> float:
    if not mask.any():
        return -np.inf
    slices = np.nonzero(mask)[0]
    g = case.geometry
    return float(g.origin_mm[2] + slices.mean() * g.spacing_mm[0] * g.normal[2])


def evaluate(
    multimodal: ModelRuntime, vision: ModelRuntime, count: int, first_seed: int
) -> dict[str, Any]:
    """Per-case results and summaries (see the module docstring)."""
    cases = []
    for seed in range(first_seed, first_seed + count):
        start = time.perf_counter()
        held = HeldOutCase(seed, multimodal)
        scenario = held.case.scenario
        factual = scenario.context
        mm = held.predict(multimodal, factual)
        vo = held.predict(vision, None)
        record: dict[str, Any] = {
            "seed": seed,
            "scenario": f"{scenario.laterality} {scenario.surgery} {scenario.nodal_status}"
            + (" seroma" if scenario.seroma else "")
            + (" clips" if scenario.clips else ""),
            "side_visible": scenario.side_visible,
            "multimodal": score(held, mm, factual) | {"on_side": round(mm.raw_on_side, 3)},
            "vision_only": score(held, vo, factual) | {"on_side": round(vo.raw_on_side, 3)},
            "counterfactual": {},
        }
        for kind, changed in counterfactuals(held.case).items():
            after = held.predict(multimodal, changed)
            record["counterfactual"][kind] = {
                "context": changed.describe(),
                "multimodal": score(held, after, changed),
                "vision_only": score(held, vo, changed),
                "direction_ok": bool(direction_checks(held, kind, mm, after, changed)),
            }
        record["seconds"] = round(time.perf_counter() - start, 1)
        logger.info(
            "case %d (%s): Dice multimodal %.3f, vision-only %.3f; counterfactual %s (%.0f s)",
            seed,
            record["scenario"],
            record["multimodal"]["dice"],
            record["vision_only"]["dice"],
            {k: v["multimodal"]["dice"] for k, v in record["counterfactual"].items()},
            record["seconds"],
        )
        cases.append(record)
    return {"first_seed": first_seed, "cases": cases, "summary": summarise(cases)}


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per subset, laterality rates and counterfactual pass rates."""

    def rows(selected: list[dict[str, Any]]) -> dict[str, Any]:
        if not selected:
            return {"n": 0}
        return {
            "n": len(selected),
            **{
                f"{model}_{metric}": round(float(np.mean([c[model][metric] for c in selected])), 3)
                for model in ("multimodal", "vision_only")
                for metric in ("dice", "hd95_mm")
            },
        }

    factual = cases
    hidden = [c for c in cases if not c["side_visible"]]
    nodal = [c for c in cases if "N0" not in c["scenario"]]
    flips = [c["counterfactual"][k] for c in cases for k in c["counterfactual"]]
    by_kind = {
        kind: [c["counterfactual"][kind] for c in cases if kind in c["counterfactual"]]
        for kind in ("side", "nodes", "surgery")
    }
    return {
        "all": rows(factual),
        "side_not_visible": rows(hidden),
        "regional_nodes": rows(nodal),
        "counterfactual": rows(flips),
        "text_decides": rows(hidden + flips),
        "counterfactual_by_kind": {k: rows(v) for k, v in by_kind.items()},
        "direction_ok": {
            k: f"{sum(bool(x['direction_ok']) for x in v)}/{len(v)}" for k, v in by_kind.items()
        },
        "laterality_correct": {
            model: f"{sum(c[model]['on_side'] >= 0.95 for c in cases)}/{len(cases)}"
            for model in ("multimodal", "vision_only")
        },
        "seconds_per_case_mean": round(float(np.mean([c["seconds"] for c in cases])), 1),
    }


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any], machine: str, command: str) -> str:
    """The tables of ``docs/context_ctv.md``."""
    s = result["summary"]
    lines = [
        f"Machine: {machine}. Command: `{command}`.",
        "",
        "| held-out subset | n | multimodal Dice | vision-only Dice | multimodal HD95 (mm) "
        "| vision-only HD95 (mm) |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "all": "all cases, own context",
        "side_not_visible": "side not visible on the CT (BCS, no seroma, no clips)",
        "regional_nodes": "cases with regional nodes (N1, N2+)",
        "counterfactual": "counterfactual contexts (same CT, changed text)",
        "text_decides": "**text decides** (side not visible + counterfactual)",
    }
    for key, title in names.items():
        lines.append(_row(title, s[key]))
    lines += [
        "",
        "| counterfactual | n | multimodal Dice vs rule CTV | vision-only Dice | contour changed "
        "as the rules say |",
        "|---|---|---|---|---|",
    ]
    titles = {
        "side": "left <-> right",
        "nodes": "N0 <-> N1 (regional nodes on/off)",
        "surgery": "BCS -> mastectomy (breast -> chest wall)",
    }
    for kind, title in titles.items():
        row = s["counterfactual_by_kind"][kind]
        if row["n"]:
            lines.append(
                f"| {title} | {row['n']} | {row['multimodal_dice']:.3f} | "
                f"{row['vision_only_dice']:.3f} | {s['direction_ok'][kind]} |"
            )
    lat = s["laterality_correct"]
    lines += [
        "",
        f"Laterality correct (raw model output, >= 95% of its volume on the treated side of "
        f"the midline, before `segment_ctv`'s side restriction): multimodal "
        f"{lat['multimodal']}, vision-only {lat['vision_only']}.",
        "",
        "| seed | scenario | multimodal Dice | vision-only Dice | multimodal HD95 (mm) | "
        "side flip | nodes | surgery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        cf = c["counterfactual"]
        cells = [
            f"{cf[k]['multimodal']['dice']:.3f}" if k in cf else "n/a"
            for k in ("side", "nodes", "surgery")
        ]
        lines.append(
            f"| {c['seed']} | {c['scenario']} | {c['multimodal']['dice']:.3f} | "
            f"{c['vision_only']['dice']:.3f} | {c['multimodal']['hd95_mm']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _row(title: str, row: dict[str, Any]) -> str:
    if not row["n"]:
        return f"| {title} | 0 | | | | |"
    return (
        f"| {title} | {row['n']} | {row['multimodal_dice']:.3f} | {row['vision_only_dice']:.3f} "
        f"| {row['multimodal_hd95_mm']:.1f} | {row['vision_only_hd95_mm']:.1f} |"
    )


def write_markdown(path: Path, tables: str) -> None:
    """Replace the text between the ``<!-- results -->`` markers of ``path``."""
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- results -->", "<!-- /results -->"
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} section")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{tables}\n{end}{tail}", encoding="utf-8")


def _write_validation(card_path: Path, validation: dict[str, Any]) -> None:
    card = load_card(card_path)
    write_card(card.model_copy(update={"validation": validation}), card_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Held-out evidence for the breast CTV models.")
    parser.add_argument("--card", type=Path, default=Path("config/models/breast_ctv.yaml"))
    parser.add_argument(
        "--vision-card", type=Path, default=Path("config/models/breast_ctv_vision.yaml")
    )
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--markdown", type=Path, help="fill the results section of this file")
    parser.add_argument("--write-cards", action="store_true", help="summary into both cards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    settings = RuntimeSettings(intra_op_threads=args.threads)
    multimodal = open_runtime(args.card, settings)
    vision = open_runtime(args.vision_card, settings)
    result = evaluate(multimodal, vision, args.cases, args.first_seed)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, no GPU"
    command = "python -m engines.segmentation.training.evaluate_ctv " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    tables = markdown(result, machine, command.strip())
    print(tables)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        write_markdown(args.markdown, tables)
    if args.write_cards:
        summary = {"held_out_first_seed": args.first_seed, **result["summary"]}
        _write_validation(args.card, summary)
        _write_validation(args.vision_card, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
