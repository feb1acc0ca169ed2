"""Train the default thorax model on synthetic phantoms, export it, and measure it.

One command, fixed seeds, about 30 minutes on a 2-core CPU:

    .venv/bin/python -m engines.segmentation.training.train --out config/models/thorax

Steps: generate ``--phantoms`` training phantoms (seeds 0..N-1, cached under ``--work``),
train the MONAI residual U-Net (:func:`engines.segmentation.network.thorax_network_spec`)
on random 128 x 128 x 32 patches (one per step, channels-last: the fastest on this CPU)
with soft Dice + cross-entropy for ``--steps`` steps,
export ``OUT.onnx`` and ``OUT.yaml`` (the card, with sha256) through
:mod:`engines.segmentation.export`, then score the exported model on held-out phantoms
(seeds from 1 000 000) and write the Dice figures into the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.segmentation.card import InputSpec
from engines.segmentation.export import export_model
from engines.segmentation.network import build_network, save_checkpoint, thorax_network_spec
from engines.segmentation.processing import air_value
from engines.segmentation.training.data import Sample, make_sample
from engines.segmentation.training.evaluate import format_table
from engines.segmentation.training.loop import fit
from engines.segmentation.training.phantom import BREAST_L, BREAST_R, CORD, ESOPHAGUS, HEART, LABELS
from engines.segmentation.training.refine import REFINERS, evaluate_cascade, train_refiner
from engines.segmentation.training.thorax import EXPORT_AXIS_ORDER, PATCH_SIZE, card_template

logger = logging.getLogger("rtnode.train")

DATA_VERSION = 3
# Small organs get most patches; lungs and the body are in nearly every patch anyway.
_FOCUS = {ESOPHAGUS: 0.35, CORD: 0.25, BREAST_L: 0.125, BREAST_R: 0.125, HEART: 0.15}
_FOCUS_PROBABILITY = 0.6


def model_spec() -> InputSpec:
    """The input spec of the shipped card (the training data is made to match it)."""
    return InputSpec.model_validate(card_template({})["input"])


# --------------------------------------------------------------------------- data


def load_samples(seeds: Sequence[int], work: Path, jobs: int) -> list[Sample]:
    """Training samples for ``seeds``, generated in ``jobs`` processes and cached in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    missing = [s for s in seeds if not _cache_path(work, s).exists()]
    if missing:
        logger.info("generating %d phantoms with %d processes", len(missing), jobs)
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=one_torch_thread) as pool:
            for sample in pool.imap_unordered(_generate, missing):
                np.savez(
                    _cache_path(work, sample.seed), image=sample.image, sub_labels=sample.sub_labels
                )
        logger.info("phantoms generated in %.0f s", time.perf_counter() - start)
    return [_load(work, s) for s in seeds]


def _cache_path(work: Path, seed: int) -> Path:
    return work / f"phantom_v{DATA_VERSION}_{seed:07d}.npz"


def _load(work: Path, seed: int) -> Sample:
    with np.load(_cache_path(work, seed)) as data:
        return Sample(seed=seed, image=data["image"], sub_labels=data["sub_labels"])


def one_torch_thread() -> None:
    """Pool initializer: one torch thread per phantom-generating process."""
    torch.set_num_threads(1)


def _generate(seed: int) -> Sample:
    return make_sample(seed, model_spec())


class PatchSampler:
    """Random training patches (image, soft targets), some centred on small organs."""

    def __init__(
        self, samples: list[Sample], patch: tuple[int, int, int], air: float, seed: int
    ) -> None:
        self.samples = [_padded(s, patch, air) for s in samples]
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.focus = [self._focus_points(s) for s in self.samples]

    @staticmethod
    def _focus_points(sample: Sample) -> dict[int, np.ndarray]:
        points = {}
        for label in _FOCUS:
            where = np.argwhere(sample.sub_labels[0] == label)
            if len(where):
                points[label] = where[:: max(1, len(where) // 2000)]
        return points

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for _ in range(size):
            index = int(self.rng.integers(len(self.samples)))
            box = self._box(index)
            sample = self.samples[index]
            images.append(torch.from_numpy(self._augment(sample.image[box]))[None])
            targets.append(sample.targets(box))
        return torch.stack(images), torch.stack(targets)

    def _box(self, index: int) -> tuple[slice, slice, slice]:
        shape = self.samples[index].image.shape
        focus = self.focus[index]
        if focus and self.rng.random() < _FOCUS_PROBABILITY:
            labels = list(focus)
            weights = np.array([_FOCUS[label] for label in labels])
            label = labels[int(self.rng.choice(len(labels), p=weights / weights.sum()))]
            points = focus[label]
            centre = points[int(self.rng.integers(len(points)))]
            jitter = self.rng.integers(-np.array(self.patch) // 4, np.array(self.patch) // 4 + 1)
            start = centre - np.array(self.patch) // 2 + jitter
        else:
            start = np.array(
                [self.rng.integers(0, n - p + 1) for n, p in zip(shape, self.patch, strict=True)]
            )
        start = np.clip(start, 0, np.array(shape) - np.array(self.patch))
        return tuple(slice(int(s), int(s) + p) for s, p in zip(start, self.patch, strict=True))  # type: ignore[return-value]

    def _augment(self, image: np.ndarray) -> np.ndarray:
        scale = self.rng.uniform(0.92, 1.08)
        shift = self.rng.uniform(-0.1, 0.1)
        noise = self.rng.uniform(0.0, 0.08)
        out = image * np.float32(scale) + np.float32(shift)
        out += self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
        return out.astype(np.float32)


def _padded(sample: Sample, patch: tuple[int, int, int], air: float) -> Sample:
    pad = [(0, max(0, p - n)) for n, p in zip(sample.image.shape, patch, strict=True)]
    if not any(after for _, after in pad):
        return sample
    image = np.pad(sample.image, pad, constant_values=air)
    labels = np.pad(sample.sub_labels, [(0, 0), *pad], constant_values=0)
    return Sample(seed=sample.seed, image=image, sub_labels=labels)


# --------------------------------------------------------------------------- training


def train(
    samples: list[Sample], steps: int, batch: int, lr: float, seed: int
) -> tuple[torch.nn.Module, list[float]]:
    """Train the thorax network; returns it (eval mode) and the loss every 50 steps."""
    torch.manual_seed(seed)
    spec = thorax_network_spec(len(LABELS))
    network = build_network(spec)
    sampler = PatchSampler(samples, PATCH_SIZE, air_value(model_spec()), seed)
    return fit(network, lambda: sampler.batch(batch), steps, lr)


# --------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train, export and evaluate the thorax model.")
    parser.add_argument(
        "--out", type=Path, default=Path("config/models/thorax"), help="OUT.onnx and OUT.yaml"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("var/segmentation-training"),
        help="phantom cache, checkpoint, logs",
    )
    parser.add_argument("--phantoms", type=int, default=48, help="training phantoms (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--jobs", type=int, default=2, help="processes generating phantoms")
    parser.add_argument(
        "--eval-phantoms", type=int, default=8, help="held-out phantoms scored after export"
    )
    parser.add_argument(
        "--refiners",
        default=",".join(REFINERS),
        help=f"refinement models to train after the thorax model, comma-separated "
        f"({', '.join(REFINERS)}; empty for none); written as OUT_<organ>.onnx/.yaml",
    )
    parser.add_argument(
        "--refiner-steps", type=int, help="override every refiner's steps (quick trials)"
    )
    parser.add_argument(
        "--refiner-phantoms", type=int, help="override every refiner's phantom count"
    )
    args = parser.parse_args(argv)
    refiners = [
        REFINERS[key].adjusted(args.refiner_steps, args.refiner_phantoms)
        for key in args.refiners.split(",")
        if key
    ]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    samples = load_samples(range(args.phantoms), args.work, args.jobs)
    generated = time.perf_counter()
    network, history = train(samples, args.steps, args.batch, args.lr, args.seed)
    trained = time.perf_counter()
    save_checkpoint(args.work / "thorax.pt", thorax_network_spec(len(LABELS)), network)

    provenance: dict[str, Any] = {
        "command": "python -m engines.segmentation.training.train " + " ".join(argv or []),
        "data": f"{args.phantoms} synthetic thorax phantoms, seeds 0..{args.phantoms - 1} "
        "(engines/segmentation/training/phantom.py)",
        "network": thorax_network_spec(len(LABELS)),
        "steps": args.steps,
        "batch": args.batch,
        "patch_size": list(PATCH_SIZE),
        "exported_axis_order": list(EXPORT_AXIS_ORDER),
        "loss": "soft Dice + cross-entropy (MONAI DiceCELoss), soft targets from 2x2 sub-voxel labels",
        "optimiser": f"AdamW lr {args.lr} cosine, weight decay 1e-4",
        "seed": args.seed,
        "loss_every_50_steps": history,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "minutes": {
            "phantoms": round((generated - started) / 60, 1),
            "training": round((trained - generated) / 60, 1),
        },
    }
    onnx_path = args.out.with_suffix(".onnx")
    outs = [args.out.parent / f"{args.out.name}_{r.key}" for r in refiners]
    refined_by = [f"{out.name}.yaml" for out in outs]
    report = export_model(
        network,
        card_template(provenance, refined_by=refined_by),
        onnx_path,
        axis_order=EXPORT_AXIS_ORDER,
    )
    logger.info(
        "exported %s (%.1f MB), max |PyTorch - ORT| %.2g",
        onnx_path,
        report.size_bytes / 1e6,
        report.max_abs_diff,
    )
    for refiner, out in zip(refiners, outs, strict=True):
        train_refiner(refiner, args.work, out, seed=args.seed, jobs=args.jobs, threads=args.threads)
    refined = time.perf_counter()

    result = evaluate_cascade(report.card_path, args.eval_phantoms, args.threads)
    provenance["minutes"]["refiners"] = round((refined - trained) / 60, 1)
    provenance["minutes"]["total"] = round((time.perf_counter() - started) / 60, 1)
    provenance["export_max_abs_diff"] = float(f"{report.max_abs_diff:.3g}")
    final = export_model(
        network,
        card_template(provenance, result, refined_by=refined_by),
        onnx_path,
        axis_order=EXPORT_AXIS_ORDER,
    )
    (args.work / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"model {final.onnx_path} ({final.size_bytes / 1e6:.1f} MB), card {final.card_path}")
    print(f"total {provenance['minutes']['total']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
