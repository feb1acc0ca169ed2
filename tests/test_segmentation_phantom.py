"""The synthetic thorax phantom: deterministic, realistic HU, plausible organ volumes."""

from __future__ import annotations

import numpy as np
import pytest

from engines.segmentation.training.data import acquisition_geometry, random_acquisition
from engines.segmentation.training.phantom import (
    BODY,
    BREAST_L,
    CORD,
    ESOPHAGUS,
    HEART,
    LABELS,
    LUNG_L,
    LUNG_R,
    Anatomy,
    render_labels,
    render_slice,
)

GRID = (np.arange(-220.0, 220.0, 4.0) + 2.0).astype(np.float32)


def coarse_labels(seed: int) -> tuple[np.ndarray, float]:
    """Labels on a 4 x 4 x 5 mm grid covering the whole phantom, and the voxel volume (cm3)."""
    a = Anatomy.sample(seed)
    zs = np.arange(-80.0, a.apex_z + 40.0, 5.0).astype(np.float32)
    return render_labels(a, GRID, GRID, zs), 4 * 4 * 5 / 1000.0


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b, c = Anatomy.sample(3), Anatomy.sample(3), Anatomy.sample(4)
    first = render_slice(a, GRID, GRID, 60.0)
    second = render_slice(b, GRID, GRID, 60.0)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], render_slice(c, GRID, GRID, 60.0)[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_organ_volumes_are_plausible(seed: int) -> None:
    labels, voxel_cm3 = coarse_labels(seed)
    volume = {
        name: float(np.count_nonzero(labels == i)) * voxel_cm3 for i, name in enumerate(LABELS)
    }
    assert 500 < volume["Lung_L"] < 3500 and 500 < volume["Lung_R"] < 3500
    assert 250 < volume["Heart"] < 1000
    assert 4 < volume["SpinalCord"] < 40
    assert 5 < volume["Esophagus"] < 60
    breasts = volume["Breast_L"] + volume["Breast_R"]
    assert breasts == 0 or 150 < breasts < 4000


def test_tissue_hounsfield_units_are_realistic() -> None:
    a = Anatomy.sample(2)
    hu, labels = render_slice(a, GRID, GRID, 0.3 * a.apex_z)
    lungs = hu[(labels == LUNG_L) | (labels == LUNG_R)]
    assert -950 < np.median(lungs) < -750
    assert np.percentile(hu[labels == BODY], 99) > 400  # bone
    assert -130 < np.percentile(hu[labels == BODY], 5) < -60  # fat
    assert 25 <= np.median(hu[labels == CORD]) <= 50
    assert np.median(hu[labels == HEART]) >= 30
    assert hu[0, 0] == -1000.0  # air


def test_breasts_only_in_some_phantoms_and_left_is_patient_left() -> None:
    with_breasts = [s for s in range(10) if Anatomy.sample(s).breasts]
    assert 2 <= len(with_breasts) <= 8
    a = Anatomy.sample(with_breasts[0])
    b = a.breasts[0]
    z = b.z - b.sag * b.rz
    _, labels = render_slice(a, GRID, GRID, z)
    cols = np.nonzero(labels == BREAST_L)[1]
    assert GRID[cols].mean() > a.shift_x  # +x is patient left (LPS)


def test_feet_first_grid_is_the_mirror_image() -> None:
    a = Anatomy.sample(5)
    zs = np.array([40.0, 80.0], dtype=np.float32)
    hfs = render_labels(a, GRID, GRID, zs)
    ffs = render_labels(a, GRID[::-1].copy(), GRID, zs[::-1].copy())
    assert np.array_equal(ffs, hfs[::-1, :, ::-1])


def test_random_acquisition_is_a_valid_ct_geometry() -> None:
    a = Anatomy.sample(6)
    for k in range(6):
        acq = random_acquisition(a, np.random.default_rng(k), full_field=k % 2 == 0)
        geometry = acquisition_geometry(acq)
        assert geometry.shape == (acq.zs.size, acq.ys.size, acq.xs.size)
        assert 0.7 <= geometry.spacing_mm[2] <= 1.3 or acq.xs.size == 512
        assert geometry.normal[2] in (1.0, -1.0)
    assert ESOPHAGUS in render_slice(a, GRID, GRID, 50.0)[1]
