"""Training data and training for *refinement* models: organs redrawn around them.

The thorax model sees the CT on a 2 x 2 x 3 mm grid and shares its training between eight
structures. A refinement model runs second, only in the box around the thorax model's
contours of its organs (plus a margin), on its own grid, and replaces those contours
(card fields ``refined_by`` and ``region``; docs/segmentation.md, "Cascades"). Two are
defined in :data:`REFINERS`: the esophagus on a 1 x 1 x 2 mm grid (a 15-20 mm tube is
7-10 thorax-model voxels across, so one voxel of boundary error costs a large share of
its volume) and the breasts, whose shape the thorax model learns poorly.

Training samples imitate what the engine will feed a refinement: a phantom scanned on a
random acquisition (like :mod:`engines.segmentation.training.data`), cropped to the
organs' box with each side moved by up to ``jitter_mm`` (the first model's contour is not
exact) plus the region's margin, and preprocessed with the refinement card's input spec.
Only a window around the organs is rendered, so a sample costs a fraction of a whole
scan. Targets are soft, from 2 x 2 in-plane sub-positions, as for the thorax model.

    .venv/bin/python -m engines.segmentation.training.refine --organ esophagus
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from engines.segmentation.card import InputSpec, load_card, write_card
from engines.segmentation.export import export_model
from engines.segmentation.network import build_network, save_checkpoint, thorax_network_spec
from engines.segmentation.processing import (
    VolumeGeometry,
    air_value,
    crop,
    grid_coordinates_lps,
    margin_px,
    preprocess,
    to_metatensor,
)
from engines.segmentation.runtime import RuntimeSettings, open_runtime
from engines.segmentation.training import thorax
from engines.segmentation.training.data import (
    SUB_OFFSETS,
    acquisition_geometry,
    random_acquisition,
)
from engines.segmentation.training.evaluate import HELD_OUT_SEED, evaluate, format_table
from engines.segmentation.training.loop import fit
from engines.segmentation.training.phantom import (
    BREAST_L,
    BREAST_R,
    ESOPHAGUS,
    LABELS,
    Acquisition,
    Anatomy,
    render_labels,
    scan,
)

logger = logging.getLogger("rtnode.train")

REGION_MARGIN_MM = 20.0
BOX_JITTER_MM = 6.0
_WINDOW_EXTRA_MM = 12.0  # rendered beyond the crop so blur and noise see no window edge
_LOCATE_STEP = 4  # every 4th CT column and row finds the organ's box


@dataclass(frozen=True)
class RefineSample:
    """One preprocessed crop: image (x, y, z) and sub-position labels (4, x, y, z).

    Label values are 0 (background) and 1..K, the position of the phantom label in the
    ``labels`` the sample was made for (the refinement model's output channels).
    """

    seed: int
    image: npt.NDArray[np.float32]
    sub_labels: npt.NDArray[np.uint8]
    channels: int

    def targets(self, box: tuple[slice, slice, slice]) -> torch.Tensor:
        """Soft targets (channels, x, y, z): the fraction of sub-positions per class."""
        sub = self.sub_labels[(slice(None), *box)]
        share = np.float32(1.0 / sub.shape[0])
        counts = [
            np.count_nonzero(sub == c, axis=0).astype(np.float32) for c in range(self.channels)
        ]
        return torch.from_numpy(np.stack(counts) * share)


def make_refine_sample(
    seed: int,
    labels: Sequence[int],
    spec: InputSpec,
    margin_mm: float = REGION_MARGIN_MM,
    jitter_mm: float = BOX_JITTER_MM,
) -> RefineSample | None:
    """Phantom ``seed`` scanned, cropped around ``labels`` and preprocessed (None if absent)."""
    anatomy = Anatomy.sample(seed)
    rng = np.random.default_rng([seed, 104729])
    acq = random_acquisition(anatomy, rng)
    found = _organ_extent(anatomy, acq, labels)
    if found is None:
        return None
    lo, hi = found
    reach = margin_mm + jitter_mm + _WINDOW_EXTRA_MM
    window = _window(acq, lo - reach, hi + reach)
    hu, truth = scan(anatomy, window)
    geometry = acquisition_geometry(window)
    organ = np.isin(truth, labels)
    if not organ.any():
        return None
    box = _jittered_box(organ, geometry, margin_mm, jitter_mm, rng)
    image = preprocess(crop(to_metatensor(hu, geometry), box), spec)
    xs, ys, zs = grid_coordinates_lps(image)
    step_x = float(abs(xs[1] - xs[0])) if xs.size > 1 else spec.spacing_mm[0]
    step_y = float(abs(ys[1] - ys[0])) if ys.size > 1 else spec.spacing_mm[1]
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[list(labels)] = np.arange(1, len(labels) + 1)
    subs = [
        lookup[render_labels(anatomy, xs + ox * step_x, ys + oy * step_y, zs).transpose(2, 1, 0)]
        for ox in SUB_OFFSETS
        for oy in SUB_OFFSETS
    ]
    return RefineSample(
        seed=seed,
        image=image[0].numpy().astype(np.float32),
        sub_labels=np.ascontiguousarray(np.stack(subs)),
        channels=len(labels) + 1,
    )


def _organ_extent(
    anatomy: Anatomy, acq: Acquisition, labels: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """LPS (x, y, z) mm of the organ's lowest and highest voxel centres on a sparse grid."""
    xs, ys = acq.xs[::_LOCATE_STEP], acq.ys[::_LOCATE_STEP]
    where = np.argwhere(np.isin(render_labels(anatomy, xs, ys, acq.zs), labels))
    if where.size == 0:
        return None
    points = np.stack([xs[where[:, 2]], ys[where[:, 1]], acq.zs[where[:, 0]]], axis=1)
    step = _LOCATE_STEP * abs(float(acq.xs[1] - acq.xs[0]))
    pad = np.array([step, step, 0.0])
    return points.min(axis=0) - pad, points.max(axis=0) + pad


def _window(
    acq: Acquisition, lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]
) -> Acquisition:
    """The acquisition restricted to the columns, rows and slices inside [lo, hi]."""

    def keep(coords: npt.NDArray[np.float32], axis: int) -> npt.NDArray[np.float32]:
        return coords[(coords >= lo[axis]) & (coords <= hi[axis])]

    return Acquisition(
        xs=keep(acq.xs, 0),
        ys=keep(acq.ys, 1),
        zs=keep(acq.zs, 2),
        blur_px=acq.blur_px,
        noise_hu=acq.noise_hu,
        noise_seed=acq.noise_seed,
    )


def _jittered_box(
    organ: npt.NDArray[np.bool_],
    geometry: VolumeGeometry,
    margin_mm: float,
    jitter_mm: float,
    rng: np.random.Generator,
) -> tuple[slice, slice, slice]:
    """The organ's (slice, row, column) box, each side moved by up to the jitter, plus margin."""
    spacing_mm = geometry.spacing_mm
    margin = margin_px(geometry, margin_mm)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(organ.any(axis=others))
        jitter = [round(rng.uniform(-jitter_mm, jitter_mm) / spacing_mm[axis]) for _ in range(2)]
        lo = max(int(hits[0]) - margin[axis] + jitter[0], 0)
        hi = min(int(hits[-1]) + 1 + margin[axis] + jitter[1], organ.shape[axis])
        box.append(slice(lo, max(hi, lo + 1)))
    return box[0], box[1], box[2]


# --------------------------------------------------------------------------- training


class RefinePatches:
    """Random training patches (image, soft targets), most of them around the organ."""

    def __init__(
        self, samples: list[RefineSample], patch: tuple[int, int, int], air: float, seed: int
    ) -> None:
        self.samples = [_padded(s, patch, air) for s in samples]
        self.patch = np.array(patch)
        self.rng = np.random.default_rng(seed)
        self.points = [np.argwhere(s.sub_labels.max(axis=0))[::7] for s in self.samples]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for _ in range(size):
            index = int(self.rng.integers(len(self.samples)))
            sample, points = self.samples[index], self.points[index]
            shape = np.array(sample.image.shape)
            if len(points) and self.rng.random() < 0.7:
                centre = points[int(self.rng.integers(len(points)))]
                jitter = self.rng.integers(-self.patch // 4, self.patch // 4 + 1)
                start = centre - self.patch // 2 + jitter
            else:
                start = np.array(
                    [
                        self.rng.integers(0, n - p + 1)
                        for n, p in zip(shape, self.patch, strict=True)
                    ]
                )
            start = np.clip(start, 0, shape - self.patch)
            box = tuple(
                slice(int(s), int(s) + int(p)) for s, p in zip(start, self.patch, strict=True)
            )
            image = sample.image[box] * np.float32(self.rng.uniform(0.92, 1.08))
            image += np.float32(self.rng.uniform(-0.1, 0.1))
            image += self.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(
                self.rng.uniform(0.0, 0.08)
            )
            images.append(torch.from_numpy(image.astype(np.float32))[None])
            targets.append(sample.targets(box))  # type: ignore[arg-type]
        return torch.stack(images), torch.stack(targets)


def _padded(sample: RefineSample, patch: tuple[int, int, int], air: float) -> RefineSample:
    pad = [(0, max(0, p - n)) for n, p in zip(sample.image.shape, patch, strict=True)]
    if not any(after for _, after in pad):
        return sample
    return RefineSample(
        seed=sample.seed,
        image=np.pad(sample.image, pad, constant_values=air),
        sub_labels=np.pad(sample.sub_labels, [(0, 0), *pad], constant_values=0),
        channels=sample.channels,
    )


# --------------------------------------------------------------------------- refiners


@dataclass(frozen=True)
class Refiner:
    """One refinement model of the thorax model: which organs, on which grid, trained how."""

    key: str
    labels: tuple[int, ...]  # phantom labels = output channels 1..K
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    margin_mm: float
    jitter_mm: float  # how far each side of the first model's box may be off
    min_volume_cm3: float  # refine only first-model structures at least this large
    phantoms: int  # seeds 0..N-1; those without the organs are skipped
    steps: int
    lr: float
    what: str  # for the intended use

    @property
    def card_name(self) -> str:
        return f"{thorax.CARD_NAME}-{self.key}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(LABELS[label] for label in self.labels)

    def adjusted(self, steps: int | None = None, phantoms: int | None = None) -> Refiner:
        """This refiner with other steps or phantom count (None keeps the default)."""
        return dataclasses.replace(
            self,
            steps=self.steps if steps is None else steps,
            phantoms=self.phantoms if phantoms is None else phantoms,
        )

    def input_spec(self) -> InputSpec:
        return InputSpec.model_validate(self.card_template({})["input"])

    def card_template(
        self, training: dict[str, Any], validation: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The refinement card (without model_file and sha256, which the export fills in)."""
        labels = []
        for index, name in enumerate(self.names, start=1):
            colour, kind, post = thorax.OUTPUTS[name]
            labels.append(
                {
                    "index": index,
                    "name": name,
                    "color_rgb": list(colour),
                    "interpreted_type": kind,
                    "postprocess": post,
                }
            )
        x, y, z = self.spacing_mm
        return {
            "name": self.card_name,
            "version": thorax.CARD_VERSION,
            "intended_use": (
                f"Second stage of {thorax.CARD_NAME}: redraws its {self.what} on a "
                f"{x:g} x {y:g} x {z:g} mm grid inside the box around them (plus "
                f"{self.margin_mm:g} mm). Draft contours for review and editing by a qualified "
                "person before any clinical use. Trained only on synthetic phantoms."
            ),
            "modality": "CT",
            "precision": "fp32",
            "input": {
                "name": "image",
                "spacing_mm": list(self.spacing_mm),
                "orientation": "RAS",
                "intensity": {
                    "window_hu": [-500.0, 500.0],
                    "normalisation": {"kind": "zscore", "mean": -50.0, "std": 200.0},
                },
                "patch_size": list(self.patch_size),
                "overlap": 0.5,
            },
            "extra_inputs": [],
            "outputs": {
                "name": "logits",
                "activation": "softmax",
                "channels": len(self.labels) + 1,
                "labels": labels,
            },
            "region": {
                "around": list(self.names),
                "margin_mm": self.margin_mm,
                "min_volume_cm3": self.min_volume_cm3,
            },
            "limitations": [
                "Trained on synthetic phantoms only; never validated on patient CT.",
                f"Runs only where {thorax.CARD_NAME} found the {self.what}; it cannot add "
                "one that model missed entirely.",
            ],
            "training": training,
            "validation": validation or {},
        }


REFINERS: dict[str, Refiner] = {
    "esophagus": Refiner(
        key="esophagus",
        labels=(ESOPHAGUS,),
        spacing_mm=(1.0, 1.0, 2.0),
        patch_size=(64, 64, 32),
        margin_mm=REGION_MARGIN_MM,
        jitter_mm=BOX_JITTER_MM,
        min_volume_cm3=0.0,
        phantoms=96,
        steps=2000,
        lr=2e-3,
        what="esophagus",
    ),
    "breasts": Refiner(
        key="breasts",
        labels=(BREAST_L, BREAST_R),
        spacing_mm=(2.0, 2.0, 3.0),
        patch_size=(96, 64, 32),
        margin_mm=30.0,
        jitter_mm=BOX_JITTER_MM,
        # calibration phantoms 4 000 000..4 000 015 (neither training nor held out): the
        # thorax model's breasts on flat chests <= 61 cm3, on real breasts >= 187 cm3
        min_volume_cm3=100.0,
        phantoms=160,
        steps=2000,
        lr=2e-3,
        what="breasts",
    ),
}


# --------------------------------------------------------------------------- command

DATA_VERSION = 3


def load_refine_samples(
    refiner: Refiner, work: Path, jobs: int, seeds: Sequence[int] | None = None
) -> list[RefineSample]:
    """Samples of the phantoms (default seeds 0..refiner.phantoms-1) that have the organs,
    generated in ``jobs`` processes and cached in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    seeds = list(range(refiner.phantoms)) if seeds is None else list(seeds)
    missing = [s for s in seeds if not _cache_path(work, refiner, s).exists()]
    if missing:
        logger.info("%s: generating %d crops with %d processes", refiner.key, len(missing), jobs)
        start = time.perf_counter()
        tasks = [(seed, refiner.key) for seed in missing]
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread) as pool:
            for seed, sample in pool.imap_unordered(_generate, tasks):
                path = _cache_path(work, refiner, seed)
                if sample is None:
                    np.savez(path, absent=np.array(True))
                else:
                    np.savez(path, image=sample.image, sub_labels=sample.sub_labels)
        logger.info("%s: crops generated in %.0f s", refiner.key, time.perf_counter() - start)
    samples = []
    for seed in seeds:
        with np.load(_cache_path(work, refiner, seed)) as data:
            if "absent" not in data:
                samples.append(
                    RefineSample(
                        seed=seed,
                        image=data["image"],
                        sub_labels=data["sub_labels"],
                        channels=len(refiner.labels) + 1,
                    )
                )
    return samples


def _cache_path(work: Path, refiner: Refiner, seed: int) -> Path:
    return work / f"refine_{refiner.key}_v{DATA_VERSION}_{seed:07d}.npz"


def _one_thread() -> None:
    torch.set_num_threads(1)


def _generate(task: tuple[int, str]) -> tuple[int, RefineSample | None]:
    seed, key = task
    refiner = REFINERS[key]
    return seed, make_refine_sample(
        seed,
        refiner.labels,
        refiner.input_spec(),
        refiner.margin_mm,
        refiner.jitter_mm,
    )


def train_refiner(
    refiner: Refiner, work: Path, out: Path, *, seed: int = 0, jobs: int = 2, threads: int = 2
) -> Path:
    """Generate the crops, train, export ``out``.onnx + .yaml; returns the card path."""
    started = time.perf_counter()
    samples = load_refine_samples(refiner, work, jobs)
    generated = time.perf_counter()
    torch.manual_seed(seed)
    spec = thorax_network_spec(len(refiner.labels) + 1)
    patches = RefinePatches(samples, refiner.patch_size, air_value(refiner.input_spec()), seed)
    network, history = fit(build_network(spec), lambda: patches.batch(2), refiner.steps, refiner.lr)
    trained = time.perf_counter()
    save_checkpoint(work / f"{out.name}.pt", spec, network)
    provenance: dict[str, Any] = {
        "command": "part of python -m engines.segmentation.training.train (alone: python -m "
        f"engines.segmentation.training.refine --organ {refiner.key} --out {out})",
        "data": f"{len(samples)} crops around {', '.join(refiner.names)} of synthetic thorax "
        f"phantoms (seeds 0..{refiner.phantoms - 1} that have them), box sides moved by up to "
        f"{refiner.jitter_mm:g} mm (engines/segmentation/training/refine.py)",
        "network": spec,
        "steps": refiner.steps,
        "batch": 2,
        "patch_size": list(refiner.patch_size),
        "exported_axis_order": list(thorax.EXPORT_AXIS_ORDER),
        "loss": "soft Dice + cross-entropy (MONAI DiceCELoss), soft targets from 2x2 sub-voxel labels",
        "optimiser": f"AdamW lr {refiner.lr} cosine, weight decay 1e-4",
        "seed": seed,
        "loss_every_50_steps": history,
        "machine": f"{platform.processor() or platform.machine()}, {threads} threads",
        "minutes": {
            "crops": round((generated - started) / 60, 1),
            "training": round((trained - generated) / 60, 1),
        },
    }
    report = export_model(
        network,
        refiner.card_template(provenance),
        out.with_suffix(".onnx"),
        axis_order=thorax.EXPORT_AXIS_ORDER,
    )
    logger.info(
        "exported %s (%.1f MB), max |PyTorch - ORT| %.2g",
        report.onnx_path,
        report.size_bytes / 1e6,
        report.max_abs_diff,
    )
    return report.card_path


def record_validation(card_path: Path, result: dict[str, Any]) -> None:
    """Write a held-out evaluation into a card's ``validation`` (model file untouched)."""
    card = load_card(card_path)
    write_card(card.model_copy(update={"validation": result}), card_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train one refinement model of the thorax model, export it, and score "
        "the thorax model with its refinements on held-out phantoms."
    )
    parser.add_argument("--organ", choices=sorted(REFINERS), required=True)
    parser.add_argument("--out", type=Path, help="OUT.onnx and OUT.yaml (default: beside --thorax)")
    parser.add_argument("--thorax", type=Path, default=Path("config/models/thorax.yaml"))
    parser.add_argument("--work", type=Path, default=Path("var/segmentation-training"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--eval-phantoms", type=int, default=8)
    parser.add_argument("--steps", type=int, help="default: the refiner's own")
    parser.add_argument("--phantoms", type=int, help="default: the refiner's own")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    refiner = REFINERS[args.organ].adjusted(args.steps, args.phantoms)
    out = args.out or args.thorax.parent / f"thorax_{refiner.key}"
    card_path = train_refiner(
        refiner, args.work, out, seed=args.seed, jobs=args.jobs, threads=args.threads
    )
    thorax_card = load_card(args.thorax) if args.thorax.is_file() else None
    listed = thorax_card.refiner_paths(args.thorax) if thorax_card else ()
    if card_path.resolve() not in {p.resolve() for p in listed}:
        print(f"{args.thorax} does not list {card_path.name} in refined_by: not evaluated")
        return 0
    result = evaluate_cascade(args.thorax, args.eval_phantoms, args.threads)
    print(format_table(result))
    return 0


def evaluate_cascade(thorax_card: Path, phantoms: int, threads: int) -> dict[str, Any]:
    """Held-out Dice of the thorax model with its refinements, written into every card."""
    runtime = open_runtime(thorax_card, RuntimeSettings(intra_op_threads=threads))
    result = evaluate(runtime, phantoms, HELD_OUT_SEED)
    record_validation(thorax_card, result)
    for refiner in runtime.refiners:
        names = {label.name for label in refiner.card.outputs.labels}
        mine = {
            key: {k: v for k, v in value.items() if k in names}
            if isinstance(value, dict)
            else value
            for key, value in result.items()
        }
        record_validation(refiner.card_path, {**mine, "through": thorax_card.name})
    return result


if __name__ == "__main__":
    raise SystemExit(main())
