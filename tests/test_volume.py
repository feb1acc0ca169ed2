"""CTVolume geometry: order, spacing, orientation and refusal of irregular series."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engines.volume import CTVolume, VolumeError
from tests.factories import make_ct_series


def _z(volume: CTVolume) -> list[float]:
    return [float(h.ImagePositionPatient[2]) for h in volume.headers]


def test_hfs_volume_is_ordered_by_ascending_z() -> None:
    series = make_ct_series(n_slices=5, rows=64, cols=64, slice_thickness_mm=2.5)
    shuffled = list(series.datasets)
    random.Random(1).shuffle(shuffled)

    volume = CTVolume.from_datasets(shuffled)

    assert volume.shape == (5, 64, 64)
    assert volume.spacing_mm == pytest.approx((2.5, 500 / 64, 500 / 64), abs=1e-3)
    assert _z(volume) == sorted(_z(volume))
    np.testing.assert_allclose(volume.normal, [0, 0, 1])
    assert np.median(volume.hu[series.lung_l]) < -700  # same order as the ground truth


def test_ffs_volume_follows_the_normal_and_keeps_spacing_positive() -> None:
    series = make_ct_series(n_slices=5, rows=64, cols=64, patient_position="FFS")

    volume = CTVolume.from_datasets(series.datasets[::-1])

    np.testing.assert_allclose(volume.normal, [0, 0, -1])
    np.testing.assert_allclose(volume.row_cosines, [-1, 0, 0])
    assert volume.spacing_mm[0] == pytest.approx(3.0)
    assert _z(volume) == sorted(_z(volume), reverse=True)
    assert np.median(volume.hu[series.lung_l]) < -700
    assert np.median(volume.hu[series.body & ~series.lung_l & ~series.lung_r]) > -200


def test_non_square_pixels_keep_row_and_column_spacing_apart() -> None:
    series = make_ct_series(n_slices=3, rows=96, cols=80, pixel_spacing_mm=(4.5, 6.0))

    volume = CTVolume.from_datasets(series.datasets)

    assert volume.shape == (3, 96, 80)
    assert volume.spacing_mm == pytest.approx((3.0, 4.5, 6.0))
    assert volume.voxel_volume_cm3 == pytest.approx(3.0 * 4.5 * 6.0 / 1000)


def test_single_slice_uses_slice_thickness() -> None:
    series = make_ct_series(n_slices=1, rows=64, cols=64, slice_thickness_mm=5.0)

    assert CTVolume.from_datasets(series.datasets).spacing_mm[0] == pytest.approx(5.0)


def test_tilted_series_is_refused() -> None:
    series = make_ct_series(n_slices=4, rows=64, cols=64, gantry_tilt_deg=15.0)

    with pytest.raises(VolumeError, match="tilt"):
        CTVolume.from_datasets(series.datasets)


def test_tilt_tag_alone_is_refused() -> None:
    series = make_ct_series(n_slices=4, rows=64, cols=64)
    for ds in series.datasets:
        ds.GantryDetectorTilt = "12"

    with pytest.raises(VolumeError, match="tilt"):
        CTVolume.from_datasets(series.datasets)


def test_missing_slice_is_refused() -> None:
    series = make_ct_series(n_slices=5, rows=64, cols=64)

    with pytest.raises(VolumeError, match="evenly"):
        CTVolume.from_datasets(series.datasets[:2] + series.datasets[3:])


def test_two_series_are_refused() -> None:
    first = make_ct_series(n_slices=2, rows=32, cols=32)
    second = make_ct_series(n_slices=2, rows=32, cols=32)

    with pytest.raises(VolumeError, match="one CT series"):
        CTVolume.from_datasets(first.datasets + second.datasets)


def test_non_axial_series_is_refused() -> None:
    from engines.volume import CTVolume, VolumeError
    from tests.factories import make_ct_series

    series = make_ct_series(n_slices=3, rows=16, cols=16)
    series.datasets[0].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal (shared)
    with pytest.raises(VolumeError, match="axial"):
        CTVolume.from_datasets(series.datasets)


def test_mixed_pixel_spacing_is_refused() -> None:
    from engines.volume import CTVolume, VolumeError
    from tests.factories import make_ct_series

    series = make_ct_series(n_slices=3, rows=16, cols=16)
    import copy

    odd = copy.deepcopy(series.datasets[1])  # factory slices share element objects
    odd.PixelSpacing = [0.5, 0.5]
    series.datasets[1] = odd
    with pytest.raises(VolumeError, match="pixel spacings"):
        CTVolume.from_datasets(series.datasets)
