"""Train the context-aware breast CTV model and its vision-only twin, export both.

One command, fixed seeds, about 50 minutes for both on a 2-core CPU (2 400 steps each):

    .venv/bin/python -m engines.segmentation.training.train_ctv --out config/models/breast_ctv

Steps: generate ``--phantoms`` breast cases (seeds 0..N-1, cached under ``--work``; see
:mod:`engines.segmentation.training.breast`), then train two networks of
:mod:`engines.segmentation.context_network` on the same patch stream (same seeds, same
steps): the multimodal one (FiLM by the context vector) and the vision-only twin (no
context). The multimodal model sees the case's own context in half of the steps and a
counterfactual context in the other half (another side, surgery-type target or nodal
extent, with the CTV the rules give for it on the same CT), so it learns the rules rather
than the co-occurrence of scenario and image; the vision-only twin can only learn from
the image, so it always gets the case's own CTV. Both are exported to ONNX with their
cards (``OUT.onnx``/``OUT.yaml`` and ``OUT_vision.onnx``/``OUT_vision.yaml``). Held-out
figures come from :mod:`engines.segmentation.training.evaluate_ctv`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.segmentation.card import load_card, write_card
from engines.segmentation.context import (
    CONTEXT_LENGTH,
    BreastContext,
    Guideline,
    Laterality,
    Target,
)
from engines.segmentation.context_network import context_network_spec
from engines.segmentation.export import ExportReport, export_model
from engines.segmentation.network import build_network, load_checkpoint, save_checkpoint
from engines.segmentation.processing import air_value
from engines.segmentation.training.breast import BreastCase, context_parts
from engines.segmentation.training.ctv_data import (
    PATCH_SIZE,
    CTVSample,
    card_template,
    make_ctv_sample,
    model_spec,
)
from engines.segmentation.training.loop import fit_steps
from engines.segmentation.training.losses import present_dice_ce
from engines.segmentation.training.train import one_torch_thread

logger = logging.getLogger("rtnode.train_ctv")

DATA_VERSION = 1
COUNTERFACTUAL_PROBABILITY = 0.5
_FOCUS_PROBABILITY = 0.75
_JITTER_VOXELS = 8
_NODE_OPTIONS: tuple[tuple[bool, Guideline | None], ...] = (
    (False, None),
    (True, "ESTRO"),
    (True, "RTOG"),
    (True, None),
)


# --------------------------------------------------------------------------- data


def load_samples(seeds: Sequence[int], work: Path, jobs: int) -> list[CTVSample]:
    """Samples for ``seeds``, generated in ``jobs`` processes and cached in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    missing = [s for s in seeds if not _cache_path(work, s).exists()]
    if missing:
        logger.info("generating %d breast cases with %d processes", len(missing), jobs)
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=one_torch_thread) as pool:
            for sample in pool.imap_unordered(_generate, missing):
                np.savez(_cache_path(work, sample.seed), image=sample.image, parts=sample.parts)
        logger.info("cases generated in %.0f s", time.perf_counter() - start)
    return [_load(work, s) for s in seeds]


def _cache_path(work: Path, seed: int) -> Path:
    return work / f"breast_v{DATA_VERSION}_{seed:07d}.npz"


def _load(work: Path, seed: int) -> CTVSample:
    with np.load(_cache_path(work, seed)) as data:
        scenario = BreastCase.sample(seed).scenario
        return CTVSample(seed=seed, scenario=scenario, image=data["image"], parts=data["parts"])


def _generate(seed: int) -> CTVSample:
    return make_ctv_sample(seed, model_spec())


def valid_contexts(sample: CTVSample) -> list[BreastContext]:
    """Every context whose primary CTV exists on this case (no breast CTV on the side of
    a mastectomy)."""
    out = []
    sides: tuple[Laterality, ...] = ("left", "right")
    targets: tuple[Target, ...] = ("breast", "chestwall")
    for side in sides:
        for target in targets:
            for nodes, guideline in _NODE_OPTIONS:
                context = BreastContext(side, target, nodes, guideline)
                if sample.present(context_parts(context)[0]):
                    out.append(context)
    return out


class CTVPatchSampler:
    """Training patches: the same stream of (case, box, intensity augmentation) for both
    models; the multimodal model's context comes from a separate generator."""

    def __init__(self, samples: list[CTVSample], air: float, seed: int, multimodal: bool) -> None:
        self.samples = [_padded(s, PATCH_SIZE, air) for s in samples]
        self.contexts = [valid_contexts(s) for s in samples]
        self.rng = np.random.default_rng(seed)
        self.context_rng = np.random.default_rng([seed, 17])
        self.multimodal = multimodal

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, targets, contexts = [], [], []
        for _ in range(size):
            index = int(self.rng.integers(len(self.samples)))
            sample = self.samples[index]
            box = self._box(sample)
            image = self._augment(sample.image[box])
            context = self._context(index)
            images.append(torch.from_numpy(image)[None])
            targets.append(sample.targets(context, box))
            contexts.append(torch.from_numpy(context.vector()))
        return torch.stack(images), torch.stack(targets), torch.stack(contexts)

    def _context(self, index: int) -> BreastContext:
        factual = self.samples[index].scenario.context
        draw = self.context_rng.random()
        choice = int(self.context_rng.integers(len(self.contexts[index])))
        if not self.multimodal or draw >= COUNTERFACTUAL_PROBABILITY:
            return factual
        return self.contexts[index][choice]

    def _box(self, sample: CTVSample) -> tuple[slice, slice, slice]:
        shape = np.array(sample.image.shape)
        patch = np.array(PATCH_SIZE)
        start = np.array(
            [self.rng.integers(0, n - p + 1) for n, p in zip(shape, patch, strict=True)]
        )
        primary, nodes = context_parts(sample.scenario.context)
        layers = sample.parts[primary].any(axis=(0, 1))
        if nodes is not None:
            layers |= sample.parts[nodes].any(axis=(0, 1))
        where = np.flatnonzero(layers)
        if where.size and self.rng.random() < _FOCUS_PROBABILITY:
            centre = int(where[int(self.rng.integers(where.size))])
            start[2] = np.clip(centre - patch[2] // 2, 0, shape[2] - patch[2])
        return (
            slice(int(start[0]), int(start[0]) + PATCH_SIZE[0]),
            slice(int(start[1]), int(start[1]) + PATCH_SIZE[1]),
            slice(int(start[2]), int(start[2]) + PATCH_SIZE[2]),
        )

    def _augment(self, image: np.ndarray) -> np.ndarray:
        scale = self.rng.uniform(0.92, 1.08)
        shift = self.rng.uniform(-0.1, 0.1)
        noise = self.rng.uniform(0.0, 0.08)
        out = image * np.float32(scale) + np.float32(shift)
        out += self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
        return out.astype(np.float32)


def _padded(sample: CTVSample, patch: tuple[int, int, int], air: float) -> CTVSample:
    """Replicated end slices along z (a quarter patch, as the engine's inference adds),
    then air (and no CTV) on both sides up to the patch size plus ``_JITTER_VOXELS`` where
    the volume is smaller (the sliding window centres a small image; random boxes then
    shift it by up to half the jitter)."""
    ends = [(0, 0), (0, 0), (patch[2] // 4, patch[2] // 4)]
    image = np.pad(sample.image, ends, mode="edge")
    parts = np.pad(sample.parts, [(0, 0), *ends], mode="edge")
    pad = []
    for n, p in zip(image.shape, patch, strict=True):
        extra = max(0, p + _JITTER_VOXELS - n)
        pad.append((extra // 2, extra - extra // 2))
    image = np.pad(image, pad, constant_values=air)
    parts = np.pad(parts, [(0, 0), *pad], constant_values=0)
    return CTVSample(seed=sample.seed, scenario=sample.scenario, image=image, parts=parts)


# --------------------------------------------------------------------------- training


def train(
    samples: list[CTVSample],
    multimodal: bool,
    steps: int,
    lr: float,
    seed: int,
    init: Path | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train one network (multimodal or vision-only); returns it (eval mode) and the loss
    every 50 steps. ``init``: a checkpoint of the same network to continue from (a new
    warm-up and cosine cycle), instead of a seeded initialisation."""
    torch.manual_seed(seed)
    spec = context_network_spec(_context_length(multimodal))
    network = build_network(spec)
    if init is not None:
        previous, checkpoint = load_checkpoint(init)
        if checkpoint["network"] != spec:
            raise ValueError(f"{init}: another network than {spec['class']} {spec['kwargs']}")
        network.load_state_dict(previous.state_dict())
    network.train()
    sampler = CTVPatchSampler(samples, air_value(model_spec()), seed, multimodal)

    def step_loss() -> torch.Tensor:
        images, targets, contexts = sampler.batch(1)
        logits = network(images, contexts) if multimodal else network(images)
        return present_dice_ce(logits, targets)

    label = "multimodal" if multimodal else "vision-only"
    history = fit_steps(network, step_loss, steps, lr, label)
    return network.eval(), history


def _context_length(multimodal: bool) -> int:
    return CONTEXT_LENGTH if multimodal else 0


# --------------------------------------------------------------------------- command


def _provenance(args: argparse.Namespace, multimodal: bool, history: list[float]) -> dict[str, Any]:
    argv = " ".join(args.argv)
    return {
        "command": f"python -m engines.segmentation.training.train_ctv {argv}".strip(),
        "data": f"{args.phantoms} synthetic breast cases, seeds 0..{args.phantoms - 1} "
        "(engines/segmentation/training/breast.py), rule-based CTVs",
        "network": context_network_spec(_context_length(multimodal)),
        "conditioning": (
            f"FiLM on the decoder's skip concatenations; context: the case's own in "
            f"{1 - COUNTERFACTUAL_PROBABILITY:.0%} of steps, a counterfactual one (CTV by the "
            "same rules on the same CT) otherwise"
            if multimodal
            else "none (vision-only twin: same data, patches, steps and seed; the case's own CTV)"
        ),
        "steps": args.steps,
        "initialised_from": (
            f"{args.init_from}/breast_ctv{'' if multimodal else '_vision'}.pt"
            if args.init_from
            else None
        ),
        "batch": 1,
        "patch_size": list(PATCH_SIZE),
        "loss": "soft cross-entropy + soft Dice of the foreground classes present in the patch, "
        "soft targets from 4x4 sub-voxels",
        "optimiser": f"AdamW lr {args.lr} cosine, weight decay 1e-4",
        "seed": args.seed,
        "loss_every_50_steps": history,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export the breast CTV models.")
    parser.add_argument("--out", type=Path, default=Path("config/models/breast_ctv"))
    parser.add_argument("--work", type=Path, default=Path("var/ctv-training"))
    parser.add_argument("--phantoms", type=int, default=40, help="training cases (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=2400, help="steps per model")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="processes generating cases")
    parser.add_argument(
        "--only", choices=("both", "multimodal", "vision"), default="both", help="models to train"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        help="folder with breast_ctv.pt / breast_ctv_vision.pt of an earlier run to continue from",
    )
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    samples = load_samples(range(args.phantoms), args.work, args.jobs)
    minutes = {"cases": round((time.perf_counter() - started) / 60, 1)}
    logger.info("%d cases ready in %.1f min", len(samples), minutes["cases"])
    wanted = {"both": (True, False), "multimodal": (True,), "vision": (False,)}[args.only]
    for multimodal in wanted:
        began = time.perf_counter()
        suffix = "" if multimodal else "_vision"
        init = args.init_from / f"breast_ctv{suffix}.pt" if args.init_from else None
        network, history = train(samples, multimodal, args.steps, args.lr, args.seed, init)
        save_checkpoint(
            args.work / f"breast_ctv{suffix}.pt",
            context_network_spec(_context_length(multimodal)),
            network,
        )
        provenance = _provenance(args, multimodal, history)
        provenance["minutes"] = {
            "cases (shared)": minutes["cases"],
            "training": round((time.perf_counter() - began) / 60, 1),
        }
        onnx_path = args.out.parent / f"{args.out.name}{suffix}.onnx"
        report = _export(network, multimodal, provenance, onnx_path)
        logger.info(
            "exported %s (%.1f MB), max |PyTorch - ORT| %.2g",
            report.onnx_path,
            report.size_bytes / 1e6,
            report.max_abs_diff,
        )
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _export(
    network: torch.nn.Module, multimodal: bool, provenance: dict[str, Any], onnx_path: Path
) -> ExportReport:
    """Export with the card; the card's training section then records the max difference."""
    report = export_model(network, card_template(multimodal, provenance), onnx_path)
    card = load_card(report.card_path)
    training = {**card.training, "export_max_abs_diff": float(f"{report.max_abs_diff:.3g}")}
    write_card(card.model_copy(update={"training": training}), report.card_path)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
