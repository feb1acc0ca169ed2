"""RTSTRUCTs from the engines, checked by real peers: dciodvfy and plastimatch.

dciodvfy (dicom3tools) must report no errors; plastimatch rasterizes the contours on the
referenced CT, and its masks must match the engine's (Dice >= 0.98 for every structure
over 10 cm3) on head-first, feet-first and non-square-pixel series.
"""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset

from engines.base import EngineContext
from engines.classical.body_lungs import BodyLungsEngine
from engines.rtstruct.engine import RTStructWriterEngine
from engines.volume import CTVolume
from tests.factories import (
    dice,
    make_ct_series,
    make_encapsulated_pdf,
    make_rtdose,
    make_rtplan,
    make_rtstruct,
    make_text_sr,
    write_dataset,
    write_series,
)

DCIODVFY = Path("/usr/bin/dciodvfy")
PLASTIMATCH = Path("/usr/bin/plastimatch")
MIN_VOLUME_CM3 = 10.0
MIN_DICE = 0.98

pytestmark = pytest.mark.integration

needs_dciodvfy = pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy not installed")
needs_plastimatch = pytest.mark.skipif(not PLASTIMATCH.exists(), reason="plastimatch not installed")

SERIES: dict[str, dict[str, Any]] = {
    "hfs": {"n_slices": 24, "rows": 512, "cols": 512, "seed": 11},
    "ffs": {"n_slices": 20, "rows": 512, "cols": 512, "patient_position": "FFS", "seed": 12},
    "non_square": {
        "n_slices": 20,
        "rows": 512,
        "cols": 400,
        "pixel_spacing_mm": (0.8, 1.25),
        "seed": 13,
    },
}


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dciodvfy; print its report and return the lines that are errors."""
    result = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    report = (result.stdout + result.stderr).splitlines()
    for line in report:
        if line.startswith("Warning"):
            print(f"dciodvfy {path.name}: {line}")
    return [line for line in report if line.startswith("Error")]


def read_metaimage(path: Path) -> tuple[npt.NDArray[Any], dict[str, str]]:
    """A MetaImage (.mha, data LOCAL) as an (k, j, i) array and its header fields."""
    raw = path.read_bytes()
    header: dict[str, str] = {}
    offset = 0
    while True:
        end = raw.index(b"\n", offset)
        key, _, value = raw[offset:end].decode("ascii").partition("=")
        header[key.strip()] = value.strip()
        offset = end + 1
        if key.strip() == "ElementDataFile":
            break
    if header["ElementDataFile"] != "LOCAL":
        raise ValueError(f"{path}: only LOCAL data is supported")
    dtype = {"MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_FLOAT": np.float32}
    data = raw[offset:]
    if header.get("CompressedData", "False") == "True":
        data = zlib.decompress(data)
    size_ijk = [int(v) for v in header["DimSize"].split()]
    array = np.frombuffer(data, dtype=dtype[header["ElementType"]])
    return array.reshape(size_ijk[::-1]), header


def metaimage_on_ct(path: Path, ct: CTVolume) -> npt.NDArray[np.bool_]:
    """Resample a plastimatch mask onto ``ct``'s (slice, row, column) grid (nearest)."""
    array, header = read_metaimage(path)
    offset = np.array([float(v) for v in header["Offset"].split()])
    spacing = np.array([float(v) for v in header["ElementSpacing"].split()])
    axes = np.array([float(v) for v in header["TransformMatrix"].split()]).reshape(3, 3)
    k, j, i = np.nonzero(array)
    patient = offset + (np.stack([i, j, k], axis=1) * spacing) @ axes  # rows of axes: i, j, k
    origin = np.array([float(v) for v in ct.headers[0].ImagePositionPatient])
    dz, dr, dc = ct.spacing_mm
    to_index = np.stack([ct.normal / dz, ct.column_cosines / dr, ct.row_cosines / dc])
    index = np.rint((patient - origin) @ to_index.T).astype(int)
    inside = np.all((index >= 0) & (index < np.array(ct.shape)), axis=1)
    mask = np.zeros(ct.shape, dtype=bool)
    mask[tuple(index[inside].T)] = True
    return mask


def engine_rtstruct(case: str, tmp_path: Path) -> tuple[EngineContext, Path, Path]:
    """Run the classical engine and the writer on a synthetic series written to disk."""
    series = make_ct_series(**SERIES[case])
    ct_dir = tmp_path / "ct"
    ctx = EngineContext(
        job_id=1, input_files=write_series(series, ct_dir), output_dir=tmp_path / "out"
    )
    BodyLungsEngine().run(ctx)
    RTStructWriterEngine().run(ctx)
    (rtstruct,) = ctx.outputs
    return ctx, rtstruct, ct_dir


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out_dir: Path) -> dict[str, Path]:
    subprocess.run(
        [
            str(PLASTIMATCH),
            "convert",
            "--input",
            str(rtstruct),
            "--referenced-ct",
            str(ct_dir),
            "--output-prefix",
            str(out_dir),
            "--prefix-format",
            "mha",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {p.stem: p for p in out_dir.glob("*.mha")}


@needs_dciodvfy
@needs_plastimatch
@pytest.mark.parametrize("case", list(SERIES))
def test_engine_rtstruct_passes_dciodvfy_and_plastimatch(case: str, tmp_path: Path) -> None:
    ctx, rtstruct, ct_dir = engine_rtstruct(case, tmp_path)

    assert dciodvfy_errors(rtstruct) == []
    peer_masks = plastimatch_masks(rtstruct, ct_dir, tmp_path / "plastimatch")
    assert set(peer_masks) == {s.name for s in ctx.structures}
    for structure in ctx.structures:
        volume_cm3 = structure.voxel_count * ctx.ct.voxel_volume_cm3
        if volume_cm3 <= MIN_VOLUME_CM3:
            continue
        score = dice(metaimage_on_ct(peer_masks[structure.name], ctx.ct), structure.mask)
        print(f"{case} {structure.name}: {volume_cm3:.0f} cm3, Dice {score:.4f}")
        assert score >= MIN_DICE, f"{structure.name} Dice {score:.4f}"


def _factory_objects() -> dict[str, Dataset]:
    ct = make_ct_series(n_slices=4, rows=128, cols=128, patient_position="FFS")
    rtstruct = make_rtstruct(ct)
    plan = make_rtplan(ct, rtstruct)
    return {
        "ct": ct.datasets[0],
        "rtstruct": rtstruct,
        "rtplan": plan,
        "rtdose": make_rtdose(ct, plan, bits_allocated=16),  # dciodvfy aborts on 32 bits
        "sr_basic": make_text_sr("cT2 N0 M0", ct.patient_id, ct.study_uid),
        "sr_enhanced": make_text_sr("cT2 N0 M0", sop_class="enhanced"),
        "sr_comprehensive": make_text_sr("cT2 N0 M0", sop_class="comprehensive"),
        "pdf": make_encapsulated_pdf("Referral"),
    }


@needs_dciodvfy
def test_factory_objects_pass_dciodvfy(tmp_path: Path) -> None:
    for name, ds in _factory_objects().items():
        assert dciodvfy_errors(write_dataset(ds, tmp_path / f"{name}.dcm")) == [], name
