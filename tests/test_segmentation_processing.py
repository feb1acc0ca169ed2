"""Pre/post-processing geometry: CT grid -> model grid -> CT grid, by affines.

An ellipsoid is drawn on a CT grid (head-first or feet-first, square or non-square
pixels, odd slice counts); the same ellipsoid's partial-volume fraction on the model
grid the preprocessing produced plays the network's probability; resampled back, it
must land on the CT ellipsoid (Dice, centroid in mm).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.data import MetaTensor

from engines.segmentation.card import InputSpec, Postprocess
from engines.segmentation.engine import SkinDepth, postprocess
from engines.segmentation.processing import (
    BoxMask,
    VolumeGeometry,
    air_value,
    body_box,
    crop,
    grid_coordinates_lps,
    margin_px,
    mask_on_grid,
    preprocess,
    to_metatensor,
)
from tests.factories import dice

SPEC = InputSpec.model_validate(
    {
        "spacing_mm": [2.0, 2.0, 3.0],
        "orientation": "RAS",
        "intensity": {
            "window_hu": [-1000, 1000],
            "normalisation": {"kind": "zscore", "mean": -300, "std": 300},
        },
        "patch_size": [64, 64, 32],
    }
)
CENTRE = np.array([12.0, -7.0, 4.0])  # LPS mm
AXES = np.array([38.0, 27.0, 22.0])

CASES = {
    "hfs_square_odd": dict(
        position="HFS", rows=160, cols=160, row_mm=1.0, col_mm=1.0, slices=37, dz=2.5
    ),
    "ffs_non_square": dict(
        position="FFS", rows=150, cols=120, row_mm=0.8, col_mm=1.25, slices=31, dz=3.0
    ),
    "hfs_thick_odd": dict(
        position="HFS", rows=101, cols=99, row_mm=1.3, col_mm=1.3, slices=15, dz=5.0
    ),
}


def ct_grid(case: dict[str, object]) -> tuple[VolumeGeometry, npt.NDArray[np.float64], ...]:
    rows, cols, slices = int(case["rows"]), int(case["cols"]), int(case["slices"])  # type: ignore[call-overload]
    row_mm, col_mm, dz = float(case["row_mm"]), float(case["col_mm"]), float(case["dz"])  # type: ignore[arg-type]
    sign = 1.0 if case["position"] == "HFS" else -1.0
    xs = sign * (np.arange(cols) - (cols - 1) / 2) * col_mm + 3.3
    ys = (np.arange(rows) - (rows - 1) / 2) * row_mm - 1.7
    zs = sign * (np.arange(slices) - (slices - 1) / 2) * dz + 0.9
    geometry = VolumeGeometry(
        origin_mm=(float(xs[0]), float(ys[0]), float(zs[0])),
        spacing_mm=(dz, row_mm, col_mm),
        row_cosines=(sign, 0.0, 0.0),
        column_cosines=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, sign),
        shape=(slices, rows, cols),
    )
    return geometry, xs, ys, zs


def ellipsoid(xs: npt.ArrayLike, ys: npt.ArrayLike, zs: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """(z, y, x) mask of the test ellipsoid at the given coordinates."""
    x, y, z = np.asarray(xs), np.asarray(ys), np.asarray(zs)
    f = (
        ((z[:, None, None] - CENTRE[2]) / AXES[2]) ** 2
        + ((y[None, :, None] - CENTRE[1]) / AXES[1]) ** 2
        + ((x[None, None, :] - CENTRE[0]) / AXES[0]) ** 2
    )
    out: npt.NDArray[np.bool_] = f <= 1.0
    return out


def fraction_on_model_grid(image: MetaTensor) -> torch.Tensor:
    """Partial-volume fraction of the ellipsoid per model voxel, (x, y, z), 4x4x4 samples."""
    xs, ys, zs = grid_coordinates_lps(image)
    offsets = (np.arange(4) - 1.5) / 4
    total = np.zeros((zs.size, ys.size, xs.size))
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                total += ellipsoid(xs + ox * 2.0, ys + oy * 2.0, zs + oz * 3.0)
    return torch.from_numpy((total / 64).transpose(2, 1, 0).astype(np.float32))


def centroid_mm(
    mask: npt.NDArray[np.bool_], xs: npt.ArrayLike, ys: npt.ArrayLike, zs: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    k, r, c = np.nonzero(mask)
    return np.array([np.asarray(xs)[c].mean(), np.asarray(ys)[r].mean(), np.asarray(zs)[k].mean()])


@pytest.mark.parametrize("name", list(CASES))
def test_model_grid_round_trip_lands_on_the_ct_grid(name: str) -> None:
    geometry, xs, ys, zs = ct_grid(CASES[name])
    truth = ellipsoid(xs, ys, zs)
    hu = np.where(truth, 40.0, -1000.0).astype(np.float32)
    image = preprocess(to_metatensor(hu, geometry), SPEC)

    spacing = np.abs(np.diag(image.affine.numpy()[:3, :3]))
    assert np.allclose(spacing, SPEC.spacing_mm)
    assert np.all(np.diag(image.affine.numpy()[:3, :3]) > 0), "RAS: every axis ascending"

    p = fraction_on_model_grid(image)
    probs = MetaTensor(torch.stack([1.0 - p, p]), affine=image.affine)
    found = mask_on_grid(probs, (1,), geometry)
    assert found is not None
    mask = found.full(geometry.shape)
    assert dice(mask, truth) >= 0.97
    assert np.linalg.norm(centroid_mm(mask, xs, ys, zs) - centroid_mm(truth, xs, ys, zs)) < 0.5


def test_to_metatensor_maps_first_voxel_to_image_position() -> None:
    geometry, xs, ys, zs = ct_grid(CASES["ffs_non_square"])
    image = to_metatensor(np.zeros(geometry.shape, dtype=np.float32), geometry)
    assert image.shape == (1, geometry.shape[2], geometry.shape[1], geometry.shape[0])
    ras = image.affine.numpy() @ np.array([0.0, 0.0, 0.0, 1.0])
    assert np.allclose(ras[:3], [-xs[0], -ys[0], zs[0]])
    last = image.affine.numpy() @ np.array([len(xs) - 1, len(ys) - 1, len(zs) - 1, 1.0])
    assert np.allclose(last[:3], [-xs[-1], -ys[-1], zs[-1]])


def test_crop_keeps_patient_coordinates() -> None:
    geometry, xs, ys, zs = ct_grid(CASES["hfs_square_odd"])
    truth = ellipsoid(xs, ys, zs)
    box = body_box(truth, margin_px(geometry, 10.0))
    assert box is not None
    cropped = crop(to_metatensor(truth.astype(np.float32), geometry), box)
    first = cropped.affine.numpy() @ np.array([0.0, 0.0, 0.0, 1.0])
    zs_, rs_, cs_ = box
    assert np.allclose(first[:3], [-xs[cs_.start], -ys[rs_.start], zs[zs_.start]])
    assert float(cropped.sum()) == float(truth.sum())


def test_intensity_window_and_normalisation() -> None:
    geometry, *_ = ct_grid(CASES["hfs_thick_odd"])
    hu = np.full(geometry.shape, 40.0, dtype=np.float32)
    hu[:, :, :10] = -2000.0  # below the window: clipped to -1000
    image = preprocess(to_metatensor(hu, geometry), SPEC)
    values = image[0].numpy()
    assert np.isclose(values.max(), (40.0 + 300.0) / 300.0, atol=1e-3)
    assert np.isclose(values.min(), air_value(SPEC), atol=1e-3)
    assert np.isclose(air_value(SPEC), (-1000.0 + 300.0) / 300.0)


def test_skin_margin_removes_the_band_under_the_surface_only() -> None:
    # a 100 x 60 mm box body on 2 x 1 mm pixels; the label fills the whole body
    body = np.zeros((3, 80, 120), dtype=bool)
    body[:, 10:70, 10:110] = True
    found = BoxMask(box=(slice(0, 3), slice(0, 80), slice(0, 60)), mask=body[:, :, :60].copy())
    skin = SkinDepth(body, (3.0, 1.0, 2.0))
    kept = postprocess(found, Postprocess(skin_margin_mm=5.0), skin).mask
    columns = kept[1].any(axis=0)  # in the box: columns 0..59, the body from column 10
    rows = kept[1].any(axis=1)
    # 5 mm = 3 columns of 2 mm (distances 2, 4, 6 mm to the first outside pixel centre)
    assert np.flatnonzero(columns)[0] == 12
    assert columns[59]  # the box edge at column 60 is inside the body: no surface there
    # 5 mm = 5 rows of 1 mm
    assert np.flatnonzero(rows)[[0, -1]].tolist() == [14, 65]
    assert not (kept & ~found.mask).any()
    # no body outline, or no margin: unchanged
    unchanged = postprocess(found, Postprocess(skin_margin_mm=5.0), None).mask
    assert np.array_equal(unchanged, found.mask)
    assert np.array_equal(postprocess(found, Postprocess(), skin).mask, found.mask)
