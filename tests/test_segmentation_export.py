"""Export: PyTorch -> ONNX (dynamic axes, ir_version 13) agrees with ONNX Runtime, also on a
permuted model grid; the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from scipy import ndimage

from engines.segmentation.card import ModelCardError, file_sha256, load_card
from engines.segmentation.engine import segment_ct
from engines.segmentation.export import IR_VERSION, OPSET, export_model, permute_network
from engines.segmentation.network import load_checkpoint, save_checkpoint
from engines.segmentation.processing import VolumeGeometry
from engines.segmentation.runtime import open_runtime
from tests.test_segmentation_runtime import tiny_network, tiny_template

REPO = Path(__file__).resolve().parents[1]
CLI = (
    "import argparse, sys\n"
    "from appliance.cli_models import add_model_parsers\n"
    "p = argparse.ArgumentParser(prog='rtnode')\n"
    "add_model_parsers(p.add_subparsers(required=True))\n"
    "a = p.parse_args()\n"
    "sys.exit(a.func(a))\n"
)


def test_export_round_trip_agrees_and_writes_card(tmp_path: Path) -> None:
    network = tiny_network()
    report = export_model(network, tiny_template(), tmp_path / "tiny.onnx")

    assert report.max_abs_diff < 1e-4
    assert report.card_path == tmp_path / "tiny.yaml"
    card = load_card(report.card_path)
    assert card.model_file == "tiny.onnx" and card.sha256 == file_sha256(report.onnx_path)
    model = onnx.load(str(report.onnx_path))
    assert model.ir_version == IR_VERSION
    assert model.opset_import[0].version == OPSET

    session = ort.InferenceSession(str(report.onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 24, 40, 8)  # batch and every spatial axis differ from the export
    (actual,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = network(x).numpy()
    assert actual.shape == (3, 3, 24, 40, 8)
    assert float(np.max(np.abs(actual - expected))) < 1e-4


def test_invalid_template_is_refused_before_export(tmp_path: Path) -> None:
    template = tiny_template()
    template["outputs"]["channels"] = 1
    with pytest.raises(ModelCardError, match="invalid card template"):
        export_model(tiny_network(), template, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = {
        "class": "engines.segmentation.network:ResidualUNet",
        "kwargs": dict(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            channels=[4, 8],
            strides=[2],
            num_res_units=1,
            norm="BATCH",
            act="RELU",
        ),
    }
    network = tiny_network()
    save_checkpoint(tmp_path / "c.pt", spec, network)
    loaded, checkpoint = load_checkpoint(tmp_path / "c.pt")
    assert checkpoint["network"] == spec
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), network(x))


def test_export_and_check_model_commands(tmp_path: Path) -> None:
    spec = {
        "class": "engines.segmentation.network:ResidualUNet",
        "kwargs": dict(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            channels=[4, 8],
            strides=[2],
            num_res_units=1,
            norm="BATCH",
            act="RELU",
        ),
    }
    save_checkpoint(tmp_path / "tiny.pt", spec, tiny_network())
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(tiny_template()))
    out = tmp_path / "models" / "tiny.onnx"

    def rtnode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", CLI, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = rtnode(
        "export-model",
        str(tmp_path / "tiny.pt"),
        "--card-template",
        str(tmp_path / "template.yaml"),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "max |PyTorch - ONNX Runtime| = " in done.stdout
    checked = rtnode("check-model", str(out.with_suffix(".yaml")), "--smoke")
    assert checked.returncode == 0, checked.stderr
    assert "OK: model tiny-test-model" in checked.stdout and "patch in" in checked.stdout

    out.write_bytes(out.read_bytes() + b"x")
    failed = rtnode("check-model", str(out.with_suffix(".yaml")))
    assert failed.returncode == 1
    assert "sha256: sha256 mismatch for tiny.onnx" in failed.stderr


def test_export_on_a_permuted_grid_is_the_same_network(tmp_path: Path) -> None:
    """(1, 2, 0) is not its own inverse: a mix-up of the permutation and its inverse fails."""
    network = tiny_network()
    template = tiny_template()
    template["input"]["spacing_mm"] = [1.0, 2.0, 3.0]
    template["test_time_mirror"] = {"axis": 0, "swap_channels": [], "swap_inputs": {}}
    report = export_model(network, template, tmp_path / "p.onnx", axis_order=(1, 2, 0))

    assert report.max_abs_diff < 1e-4
    card = load_card(report.card_path)
    assert card.input.orientation == "ASR"
    assert card.input.spacing_mm == (2.0, 3.0, 1.0)
    assert card.input.patch_size == (32, 16, 32)
    assert card.test_time_mirror is not None and card.test_time_mirror.axis == 2
    session = ort.InferenceSession(str(report.onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 24, 40, 8)
    (actual,) = session.run(None, {"image": x.permute(0, 1, 3, 4, 2).contiguous().numpy()})
    with torch.no_grad():
        expected = network(x).permute(0, 1, 3, 4, 2).numpy()
    assert actual.shape == (2, 3, 40, 8, 24)
    assert float(np.max(np.abs(actual - expected))) < 1e-4


def test_only_axis_free_modules_are_permuted() -> None:
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 2, (3, 1, 1), padding=(1, 0, 0)),
        torch.nn.Upsample(scale_factor=(2, 1, 1)),
    )
    with pytest.raises(ValueError, match=r"cannot permute the axes of 1 \(Upsample\)"):
        permute_network(network, (2, 1, 0))
    with pytest.raises(ValueError, match="permutation"):
        permute_network(tiny_network(), (0, 0, 1))
    conv = permute_network(network[:1], (2, 1, 0))[0]
    assert isinstance(conv, torch.nn.Conv3d)
    assert conv.kernel_size == (1, 1, 3) and conv.padding == (0, 0, 1)
    x = torch.randn(1, 1, 5, 6, 7)
    with torch.no_grad():
        assert torch.allclose(
            conv(x.permute(0, 1, 4, 3, 2)), network[0](x).permute(0, 1, 4, 3, 2), atol=1e-6
        )


def test_the_engine_gives_the_same_contours_on_a_permuted_grid(tmp_path: Path) -> None:
    """The engine resamples the CT onto whatever grid the card describes."""
    network = tiny_network()
    template = tiny_template()
    template["input"]["spacing_mm"] = [3.0, 2.0, 4.0]
    plain = export_model(network, template, tmp_path / "plain.onnx").card_path
    swapped = export_model(network, template, tmp_path / "sar.onnx", axis_order=(2, 1, 0))
    assert load_card(swapped.card_path).input.orientation == "SAR"
    geometry = VolumeGeometry(
        origin_mm=(-60.0, -50.0, 0.0),
        spacing_mm=(2.5, 1.5, 1.0),
        row_cosines=(1.0, 0.0, 0.0),
        column_cosines=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        shape=(20, 70, 90),
    )
    rng = np.random.default_rng(5)
    hu = ndimage.gaussian_filter(rng.normal(0.0, 30000.0, geometry.shape), 2).astype(np.float32)
    hu[:, :, :10] = -1000.0
    runtime = open_runtime(plain)
    # A Heart threshold that makes it a partial volume of this random network's output
    labels = tuple(
        label.model_copy(update={"threshold": 0.4 if label.name == "Heart" else 0.6})
        for label in runtime.card.outputs.labels
    )
    first = segment_ct(hu, geometry, runtime, labels)
    second = segment_ct(hu, geometry, open_runtime(swapped.card_path), labels)
    assert sorted(first) == sorted(second) and first
    for name, found in first.items():
        a, b = found.full(geometry.shape), second[name].full(geometry.shape)
        assert np.count_nonzero(a != b) <= 0.001 * a.sum(), name
    heart = first["Heart"].full(geometry.shape).mean()
    assert 0.01 < heart < 0.9  # a partial volume: the test can see a misplaced voxel
