"""Dice of a model on held-out phantoms, through the engine's own inference path.

Held-out phantoms use seeds from ``HELD_OUT_SEED`` on (training uses 0..N-1), are scanned
like a planning CT (512 x 512, 500 mm field, random slice thickness, head- or
feet-first, noise and blur) and segmented by :func:`engines.segmentation.engine.segment_ct`
with the exported ONNX model; Dice is computed on the CT grid against the exact labels.

    .venv/bin/python -m engines.segmentation.training.evaluate --card config/models/thorax.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.segmentation.engine import segment_ct
from engines.segmentation.runtime import ModelRuntime, RuntimeSettings, open_runtime
from engines.segmentation.training.data import acquisition_geometry, random_acquisition
from engines.segmentation.training.phantom import Anatomy, scan

logger = logging.getLogger(__name__)

HELD_OUT_SEED = 1_000_000


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def evaluate(runtime: ModelRuntime, count: int, first_seed: int = HELD_OUT_SEED) -> dict[str, Any]:
    """Per-structure Dice over ``count`` held-out phantoms (present structures only).

    Breasts absent from a phantom are scored by the volume the model still finds there
    (``false_positive_cm3``), not by Dice.
    """
    per_label: dict[str, list[float]] = {label.name: [] for label in runtime.card.outputs.labels}
    false_positive: dict[str, list[float]] = {}
    seconds: list[float] = []
    for seed in range(first_seed, first_seed + count):
        anatomy = Anatomy.sample(seed)
        acq = random_acquisition(anatomy, np.random.default_rng([seed, 31]), full_field=True)
        hu, truth = scan(anatomy, acq)
        geometry = acquisition_geometry(acq)
        start = time.perf_counter()
        masks = segment_ct(hu, geometry, runtime)
        seconds.append(time.perf_counter() - start)
        voxel_cm3 = float(np.prod(geometry.spacing_mm)) / 1000.0
        for label in runtime.card.outputs.labels:
            expected = np.isin(truth, label.indices())
            found = masks[label.name].full(geometry.shape) if label.name in masks else None
            predicted = found if found is not None else np.zeros_like(expected)
            if expected.any():
                per_label[label.name].append(dice(predicted, expected))
            else:
                false_positive.setdefault(label.name, []).append(float(predicted.sum()) * voxel_cm3)
        logger.info("held-out phantom %d: %s, %.1f s", seed, _line(per_label), seconds[-1])
    return {
        "phantoms": count,
        "first_seed": first_seed,
        "dice_mean": {k: round(float(np.mean(v)), 4) for k, v in per_label.items() if v},
        "dice_min": {k: round(float(np.min(v)), 4) for k, v in per_label.items() if v},
        "cases": {k: len(v) for k, v in per_label.items()},
        "false_positive_cm3_max": {
            k: round(float(np.max(v)), 2) for k, v in false_positive.items()
        },
        "seconds_per_ct_mean": round(float(np.mean(seconds)), 2),
    }


def _line(per_label: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {v[-1]:.3f}" for k, v in per_label.items() if v)


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the Dice results."""
    rows = ["| structure | mean Dice | min Dice | phantoms |", "|---|---|---|---|"]
    for name, mean in result["dice_mean"].items():
        rows.append(
            f"| {name} | {mean:.3f} | {result['dice_min'][name]:.3f} | {result['cases'][name]} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, default=Path("config/models/thorax.yaml"))
    parser.add_argument("--phantoms", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    runtime = open_runtime(args.card, RuntimeSettings(intra_op_threads=args.threads))
    result = evaluate(runtime, args.phantoms, args.first_seed)
    print(format_table(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
