"""Training samples: phantoms scanned like a CT and preprocessed like the engine does.

Each sample is one phantom (``Anatomy.sample(seed)``) scanned on a random acquisition
(pixel spacing, slice thickness, head- or feet-first, blur, noise), cropped like the
engine crops (to the patient's box, or to everything above -500 HU, couch included) and
put through :func:`engines.segmentation.processing.preprocess`, so the
network trains on exactly what the engine will feed it. Targets are soft: the labels are
rendered at 2 x 2 in-plane sub-positions of every model voxel, and the fractions become
the training probabilities (a network that learns partial volume puts its 0.5 contour
within a fraction of a model voxel, which matters for the spinal cord and esophagus).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from engines.segmentation.card import InputSpec
from engines.segmentation.processing import (
    VolumeGeometry,
    body_box,
    crop,
    grid_coordinates_lps,
    margin_px,
    preprocess,
    threshold_box,
    to_metatensor,
)
from engines.segmentation.training.phantom import (
    LABELS,
    Acquisition,
    Anatomy,
    LabelArray,
    render_labels,
    scan,
    z_range,
)

logger = logging.getLogger(__name__)

SUB_OFFSETS = (-0.25, 0.25)  # in-plane sub-positions, fractions of a model voxel
_THICKNESS_MM = (1.5, 2.0, 2.5, 3.0, 3.0, 3.0, 4.0, 5.0)
_FIELD_MARGIN_MM = 40.0


@dataclass(frozen=True)
class Sample:
    """One preprocessed phantom: image (x, y, z) and sub-position labels (4, x, y, z)."""

    seed: int
    image: npt.NDArray[np.float32]
    sub_labels: npt.NDArray[np.uint8]

    def targets(self, box: tuple[slice, slice, slice]) -> torch.Tensor:
        """Soft targets (classes, x, y, z) of a box: the fraction of sub-positions per class."""
        sub = self.sub_labels[(slice(None), *box)]
        share = np.float32(1.0 / sub.shape[0])
        counts = [np.count_nonzero(sub == c, axis=0).astype(np.float32) for c in range(len(LABELS))]
        return torch.from_numpy(np.stack(counts) * share)


def random_acquisition(
    a: Anatomy, rng: np.random.Generator, full_field: bool = False
) -> Acquisition:
    """A plausible planning-CT acquisition of ``a`` (only the patient's region unless
    ``full_field``: a 500 mm, 512 x 512 field)."""
    pixel = rng.uniform(0.7, 1.3)
    thickness = float(rng.choice(_THICKNESS_MM))
    if full_field:
        n = 512
        pixel = 500.0 / n
        xs = (np.arange(n) - (n - 1) / 2) * pixel
        ys = xs.copy()
    else:
        half_x = a.body_ax + _FIELD_MARGIN_MM
        half_y = a.body_ay + max(b.depth for b in a.breasts) if a.breasts else a.body_ay
        half_y += _FIELD_MARGIN_MM
        xs = np.arange(a.shift_x - half_x, a.shift_x + half_x, pixel)
        ys = np.arange(a.shift_y - half_y, a.shift_y + half_y + 40.0, pixel)
    z_lo, z_hi = z_range(a, rng)
    zs = np.arange(z_lo, z_hi, thickness)
    feet_first = rng.random() < 0.25
    if feet_first:
        xs, zs = xs[::-1], zs[::-1]
    return Acquisition(
        xs=xs.astype(np.float32),
        ys=ys.astype(np.float32),
        zs=zs.astype(np.float32),
        blur_px=(float(rng.uniform(0.2, 0.5)), *(float(rng.uniform(0.3, 0.8)),) * 2),
        noise_hu=float(rng.uniform(5, 35)),
        noise_seed=int(rng.integers(1 << 31)),
    )


def acquisition_geometry(acq: Acquisition) -> VolumeGeometry:
    """The DICOM-style geometry of an acquisition grid (axis-aligned HFS or FFS)."""
    sx = 1.0 if acq.xs[-1] > acq.xs[0] else -1.0
    sy = 1.0 if acq.ys[-1] > acq.ys[0] else -1.0
    row, col = np.array([sx, 0.0, 0.0]), np.array([0.0, sy, 0.0])
    normal = np.cross(row, col)
    dz = float(acq.zs[1] - acq.zs[0]) if acq.zs.size > 1 else 1.0
    if dz * normal[2] <= 0:
        raise ValueError("slices must be ordered along the slice normal (HFS: z up, FFS: z down)")
    return VolumeGeometry(
        origin_mm=(float(acq.xs[0]), float(acq.ys[0]), float(acq.zs[0])),
        spacing_mm=(abs(dz), abs(float(acq.ys[1] - acq.ys[0])), abs(float(acq.xs[1] - acq.xs[0]))),
        row_cosines=(sx, 0.0, 0.0),
        column_cosines=(0.0, sy, 0.0),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        shape=(acq.zs.size, acq.ys.size, acq.xs.size),
    )


def make_sample(seed: int, spec: InputSpec) -> Sample:
    """Scan phantom ``seed`` on a random acquisition and preprocess it like the engine."""
    anatomy = Anatomy.sample(seed)
    rng = np.random.default_rng([seed, 7919])
    acq = random_acquisition(anatomy, rng)
    hu, truth = scan(anatomy, acq)
    geometry = acquisition_geometry(acq)
    # The engine crops to the classical External's box when it has one, else to
    # everything above -500 HU (couch included): train on both.
    if rng.random() < 0.5:
        box = body_box(truth > 0, margin_px(geometry))
    else:
        box = threshold_box(hu, geometry)
    if box is None:
        raise ValueError(f"phantom {seed} has no body in its field of view")
    image = preprocess(crop(to_metatensor(hu, geometry), box), spec)
    xs, ys, zs = grid_coordinates_lps(image)
    step_x = float(abs(xs[1] - xs[0])) if xs.size > 1 else spec.spacing_mm[0]
    step_y = float(abs(ys[1] - ys[0])) if ys.size > 1 else spec.spacing_mm[1]
    subs = [
        _labels_xyz(render_labels(anatomy, xs + ox * step_x, ys + oy * step_y, zs))
        for ox in SUB_OFFSETS
        for oy in SUB_OFFSETS
    ]
    return Sample(
        seed=seed,
        image=image[0].numpy().astype(np.float32),
        sub_labels=np.stack(subs),
    )


def _labels_xyz(labels: LabelArray) -> npt.NDArray[np.uint8]:
    """(slice, row, column) label rendering -> (x, y, z) like the model-grid image."""
    return np.ascontiguousarray(labels.transpose(2, 1, 0))
