"""Decision thresholds and test-time mirroring for the breast CTV cards, on calibration cases.

The networks are trained with soft targets and under-segment thin structures (the chest
wall, the nodal tubes) at the argmax. This command sets, per card, the ``threshold`` of
the primary and the nodal CTV label, whether ``test_time_mirror`` is used and the
sliding-window overlap (more overlap averages more patch positions along the body), from
calibration cases that neither the training (seeds 0..N-1) nor the held-out evidence
(``evaluate_ctv``, seeds from 3 000 000) uses: breast cases from seed 4 000 000, scanned
and run exactly as ``evaluate_ctv`` does, each with its own context (the vision-only twin
with none). For each card the probabilities are computed once per case for each pair
(mirroring, overlap), every pair (primary, nodal) from the threshold grid is scored, and
the setting with the best mean CTV Dice goes into the card with a record under
``training.calibration``. Ties keep the default (no mirroring, overlap 0.25, 0.5 / 0.5).

    .venv/bin/python -m engines.segmentation.training.calibrate_ctv --cases 12

Only the cards change (the ONNX files and their sha256 do not); run ``evaluate_ctv``
afterwards for the held-out figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from engines.segmentation.card import MirrorSpec, ModelCard, OutputLabel, load_card, write_card
from engines.segmentation.context import CONTEXT_LENGTH, FIELDS
from engines.segmentation.ctv_engine import NODAL_LABEL, PRIMARY_LABEL
from engines.segmentation.runtime import ModelRuntime, RuntimeSettings, open_runtime
from engines.segmentation.training.evaluate_ctv import HeldOutCase
from engines.segmentation.training.metrics import dice

logger = logging.getLogger("rtnode.calibrate_ctv")

CALIBRATION_SEED = 4_000_000
PRIMARY_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
NODAL_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
OVERLAP_GRID = (0.25, 0.5)
# no mirroring, the card schema's default overlap, argmax-equivalent thresholds
DEFAULT = (False, 0.25, 0.5, 0.5)

Setting = tuple[bool, float, float, float]  # mirror, overlap, primary, nodal threshold


def mirror_spec(card: ModelCard) -> MirrorSpec:
    """Left-right mirroring (RAS axis 0); the context's left and right flags swap (the CTV
    channels are not sided)."""
    if card.input.orientation[0] not in "LR":
        raise ValueError(f"{card.name}: the first model axis is not left-right")
    sides = (FIELDS.index("laterality_left"), FIELDS.index("laterality_right"))
    swaps: dict[str, tuple[tuple[int, int], ...]] = {
        spec.name: (sides,) for spec in card.extra_inputs if spec.length == CONTEXT_LENGTH
    }
    return MirrorSpec(axis=0, swap_inputs=swaps)


def with_labels(labels: Sequence[OutputLabel], primary: float, nodal: float) -> list[OutputLabel]:
    """The labels with the primary and nodal thresholds set."""
    wanted = {PRIMARY_LABEL: primary, NODAL_LABEL: nodal}
    return [
        label.model_copy(update={"threshold": wanted[label.name]})
        if label.name in wanted
        else label
        for label in labels
    ]


def variant(runtime: ModelRuntime, mirror: bool, overlap: float) -> ModelRuntime:
    """The runtime with its card's mirroring and sliding-window overlap replaced."""
    card = runtime.card
    update = {
        "test_time_mirror": mirror_spec(card) if mirror else None,
        "input": card.input.model_copy(update={"overlap": overlap}),
    }
    return dataclasses.replace(runtime, card=card.model_copy(update=update))


def case_scores(case: HeldOutCase, runtime: ModelRuntime, multimodal: bool) -> dict[Setting, float]:
    """CTV Dice of every (mirror, overlap, primary threshold, nodal threshold) on one case."""
    context = case.case.scenario.context
    truth = case.truth(context) > 0
    given = context if multimodal else None
    labels = runtime.card.outputs.labels
    primary_label = [label for label in labels if label.name == PRIMARY_LABEL]
    nodal_label = [label for label in labels if label.name == NODAL_LABEL]
    scores = {}
    for mirror, overlap in itertools.product((False, True), OVERLAP_GRID):
        probs: MetaTensor = case.probabilities(variant(runtime, mirror, overlap), given)
        primaries = {
            t: case.prediction(probs, with_labels(primary_label, t, t), given).primary
            for t in PRIMARY_GRID
        }
        nodes = {
            t: case.prediction(probs, with_labels(nodal_label, t, t), given).nodes
            for t in NODAL_GRID
        }
        for primary, nodal in itertools.product(PRIMARY_GRID, NODAL_GRID):
            scores[(mirror, overlap, primary, nodal)] = dice(
                primaries[primary] | nodes[nodal], truth
            )
    return scores


def calibrate(
    runtimes: dict[str, ModelRuntime], count: int, first_seed: int
) -> dict[str, dict[str, Any]]:
    """Per card (``multimodal``, ``vision``): the best setting and its mean Dice."""
    per_case: dict[str, list[dict[Setting, float]]] = {k: [] for k in runtimes}
    for seed in range(first_seed, first_seed + count):
        start = time.perf_counter()
        case = HeldOutCase(seed, runtimes["multimodal"])
        for name, runtime in runtimes.items():
            per_case[name].append(case_scores(case, runtime, name == "multimodal"))
        logger.info(
            "case %d (%s): default %s (%.0f s)",
            seed,
            case.case.scenario,
            {k: round(v[-1][DEFAULT], 3) for k, v in per_case.items()},
            time.perf_counter() - start,
        )
    out = {}
    for name, scores in per_case.items():
        means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
        # ties: the default, then the cheaper setting (no mirroring, less overlap)
        best = max(
            means, key=lambda key: (round(means[key], 4), key == DEFAULT, not key[0], -key[1])
        )
        out[name] = {
            "mirror": best[0],
            "overlap": best[1],
            "primary_threshold": best[2],
            "nodal_threshold": best[3],
            "dice": round(means[best], 4),
            "dice_default": round(means[DEFAULT], 4),
            "dice_mirror_only": round(means[(True, DEFAULT[1], 0.5, 0.5)], 4),
        }
    return out


def apply(card_path: Path, result: dict[str, Any], record: dict[str, Any]) -> None:
    """Write the chosen thresholds, mirroring and overlap into a card, with the calibration
    record (a result without ``overlap`` keeps the card's)."""
    card = load_card(card_path)
    labels = with_labels(
        card.outputs.labels, result["primary_threshold"], result["nodal_threshold"]
    )
    outputs = card.outputs.model_copy(update={"labels": tuple(labels)})
    mirror = mirror_spec(card) if result["mirror"] else None
    spec = card.input.model_copy(update={"overlap": result.get("overlap", card.input.overlap)})
    training = {**card.training, "calibration": {**record, **result}}
    updated = card.model_copy(
        update={
            "input": spec,
            "outputs": outputs,
            "test_time_mirror": mirror,
            "training": training,
        }
    )
    write_card(ModelCard.model_validate(updated.model_dump()), card_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate the breast CTV cards' thresholds.")
    parser.add_argument("--card", type=Path, default=Path("config/models/breast_ctv.yaml"))
    parser.add_argument(
        "--vision-card", type=Path, default=Path("config/models/breast_ctv_vision.yaml")
    )
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=CALIBRATION_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print, do not change the cards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    settings = RuntimeSettings(intra_op_threads=args.threads)
    cards = {"multimodal": args.card, "vision": args.vision_card}
    runtimes = {name: open_runtime(path, settings) for name, path in cards.items()}
    started = time.perf_counter()
    results = calibrate(runtimes, args.cases, args.first_seed)
    command = "python -m engines.segmentation.training.calibrate_ctv " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    record = {
        "command": command.strip(),
        "cases": f"{args.cases} breast cases, seeds {args.first_seed}..{args.first_seed + args.cases - 1}",
        "grid": {
            "primary": list(PRIMARY_GRID),
            "nodal": list(NODAL_GRID),
            "mirror": [False, True],
            "overlap": list(OVERLAP_GRID),
        },
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    for name, result in results.items():
        print(f"{name}: {result}")
        if not args.dry_run:
            apply(cards[name], result, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
