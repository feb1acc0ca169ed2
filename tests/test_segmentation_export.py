"""Export: PyTorch -> ONNX (dynamic axes, ir_version 13) agrees with ONNX Runtime; the CLI."""

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

from engines.segmentation.card import ModelCardError, file_sha256, load_card
from engines.segmentation.export import IR_VERSION, OPSET, export_model
from engines.segmentation.network import load_checkpoint, save_checkpoint
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
