"""Training crops of the refinement models look like what the engine will feed them."""

from __future__ import annotations

import numpy as np

from engines.segmentation.card import ModelCard
from engines.segmentation.training.phantom import BREAST_L, BREAST_R, Anatomy
from engines.segmentation.training.refine import (
    BOX_JITTER_MM,
    REFINERS,
    make_refine_sample,
)


def test_an_esophagus_crop_holds_the_organ_with_its_margin() -> None:
    refiner = REFINERS["esophagus"]
    spec = refiner.input_spec()
    sample = make_refine_sample(11, refiner.labels, spec, refiner.margin_mm)
    assert sample is not None and sample.channels == 2
    assert sample.sub_labels.shape == (4, *sample.image.shape)
    assert set(np.unique(sample.sub_labels)) == {0, 1}
    organ = sample.sub_labels.max(axis=0).astype(bool)
    # In-plane, the box edge lies at least margin - jitter - one CT pixel beyond the organ.
    least = int((refiner.margin_mm - BOX_JITTER_MM) / spec.spacing_mm[0]) - 2
    for axis in (0, 1):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(organ.any(axis=others))
        assert hits[0] >= least and organ.shape[axis] - 1 - hits[-1] >= least
    # Soft targets: fractions of the four sub-positions, summing to one per voxel.
    box = tuple(slice(0, n) for n in sample.image.shape)
    targets = sample.targets(box).numpy()  # type: ignore[arg-type]
    assert targets.shape == (2, *sample.image.shape)
    assert np.allclose(targets.sum(axis=0), 1.0)
    assert set(np.unique(targets[1])) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    # Soft tissue around the organ: the crop is inside the body, not a patch of air.
    assert np.median(sample.image) > -1.0


def test_a_phantom_without_the_organ_gives_no_sample() -> None:
    seed = next(s for s in range(200) if not Anatomy.sample(s).breasts)
    assert (
        make_refine_sample(seed, (BREAST_L, BREAST_R), REFINERS["esophagus"].input_spec()) is None
    )


def test_refiner_cards_are_valid_refinement_cards() -> None:
    for refiner in REFINERS.values():
        card = ModelCard.model_validate(
            {**refiner.card_template({}), "model_file": "m.onnx", "sha256": "0" * 64}
        )
        assert card.region is not None and set(card.region.around) == set(refiner.names)
        assert card.outputs.channels == len(refiner.labels) + 1
        assert [label.name for label in card.outputs.labels] == list(refiner.names)
