"""The CLI as a subprocess, the way operators and harnesses call it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, write_config

RTNODE = [sys.executable, "-m", "appliance.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RTNODE, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_check_config_ok_on_shipped_config() -> None:
    out = _run("check-config", "--config", "config/rtnode.yaml")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_check_config_lists_every_problem_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: r\n    pipeline: [nope]\n")
    cfg = tmp_path / "rtnode.yaml"
    cfg.write_text("node:\n  port: 0\nworkers:\n  count: 0\n")
    out = _run("check-config", "--config", str(cfg))
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert any(f"{cfg}:2: node.port" in line for line in lines)
    assert any(f"{cfg}:4: workers.count" in line for line in lines)
    assert any("rules.yaml:3: rules.0.pipeline.0: unknown engine 'nope'" in line for line in lines)


def test_status_audit_and_resend_on_a_fresh_data_dir(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    status = _run("status", "--config", cfg, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["jobs"] == {} and "tps" in report["destinations"]
    assert _run("audit", "--config", cfg, "--verify").returncode == 0
    resend = _run("resend", "--config", cfg, "42")
    assert resend.returncode == 1 and "no job 42" in resend.stderr


def test_audit_verify_fails_on_tampering(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    _run("status", "--config", cfg)  # creates the database
    db = tmp_path / "var" / "rtnode.sqlite3"
    con = sqlite3.connect(db)
    for i in range(3):
        prev = con.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        con.execute(
            "INSERT INTO audit (id, ts, event, patient_id, study_uid, series_uid, job_id, detail,"
            " prev_hash, hash) VALUES (?, 't', 'x', '', '', '', NULL, '{}', ?, 'bogus')",
            (i + 1, prev[0] if prev else "0" * 64),
        )
    con.commit()
    out = _run("audit", "--config", cfg, "--verify")
    assert out.returncode == 1
    assert "row 1" in out.stderr


def test_check_config_checks_the_model_cards_rules_name(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    card = (REPO / "config" / "models" / "thorax.yaml").read_text()
    (models / "site.yaml").write_text(card)  # the card without its model file next to it
    rules = [
        {
            "name": "site",
            "match": {"Modality": "^CT$"},
            "pipeline": ["segment_onnx", "rtstruct_writer"],
            "destinations": ["tps"],
            "params": {"segmentation_model": "models/site.yaml"},
        }
    ]
    out = _run("check-config", "--config", str(write_config(tmp_path, rules=rules)))
    assert out.returncode == 1, out.stdout
    assert "rules.0.params.segmentation_model" in out.stderr
    assert f"model file {models / 'thorax.onnx'} does not exist" in out.stderr
    (models / "thorax.onnx").write_bytes(b"not the model")
    out = _run("check-config", "--config", str(write_config(tmp_path, rules=rules)))
    assert out.returncode == 1 and "sha256 mismatch for thorax.onnx" in out.stderr


def test_check_config_checks_the_clinical_protocols(tmp_path: Path) -> None:
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    (protocols / "breast.yaml").write_text("site: breast\nbogus: 1\n")
    config = write_config(tmp_path, engines={"clinical_protocols": str(protocols)})
    out = _run("check-config", "--config", str(config))
    assert out.returncode == 1
    assert f"{protocols / 'breast.yaml'}:2: bogus: Extra inputs are not permitted" in out.stderr


def test_check_config_checks_the_node_configs_model_card(tmp_path: Path) -> None:
    rules = [
        {
            "name": "ct",
            "match": {"Modality": "^CT$"},
            "pipeline": ["segment_onnx"],
            "destinations": ["tps"],
        }
    ]
    missing = tmp_path / "nowhere.yaml"
    config = write_config(tmp_path, rules=rules, engines={"segmentation_model": str(missing)})
    out = _run("check-config", "--config", str(config))
    assert out.returncode == 1 and f"{missing}: cannot read model card" in out.stderr
