"""Helpers for in-process node tests: config files, a node on a free port, a pynetdicom SCU."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE

from appliance.clock import Clock
from appliance.config import load_config
from appliance.service import Node

REPO = Path(__file__).resolve().parent.parent
TEST_ENGINES = {
    "copy_inputs": "tests.engines_for_tests:CopyInputs",
    "crash": "tests.engines_for_tests:Crash",
    "refuse": "tests.engines_for_tests:Refuse",
    "slow": "tests.engines_for_tests:Slow",
    "record_clinical": "tests.engines_for_tests:RecordClinical",
    "record_no_text": "tests.engines_for_tests:RecordNoText",
    "record_params": "tests.engines_for_tests:RecordParams",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    tmp_path: Path, *, rules: list[dict[str, Any]] | None = None, **sections: Any
) -> Path:
    """A node config in ``tmp_path`` (data in tmp_path/var) with test-friendly timings."""
    cfg: dict[str, Any] = {
        "node": {"ae_title": "RTNODE", "port": free_port(), "data_dir": str(tmp_path / "var")},
        "security": {"allowed_callers": [{"ae_title": "TPS"}]},
        "completion": {"quiet_seconds": 2},
        "workers": {"count": 1, "max_attempts": 2, "job_timeout_s": 60},
        "delivery": {"max_attempts": 3, "backoff_initial_s": 1, "backoff_max_s": 4},
        "destinations": {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": free_port()}},
        "rules_file": "rules.yaml",
        "structure_template": str(REPO / "config" / "structures.yaml"),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    default_rules = [
        {
            "name": "ct",
            "match": {"Modality": "^CT$"},
            "pipeline": ["copy_inputs"],
            "destinations": ["tps"],
        }
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"rules": rules or default_rules}))
    path = tmp_path / "rtnode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_node(config_path: Path, clock: Clock | None = None) -> Node:
    return Node(load_config(config_path), clock, extra_engines=TEST_ENGINES)


def wait_until_closed(node: Node, timeout_s: float = 10.0) -> None:
    """Wait for the node to finish the association just released by the SCU.

    The SCU sees the A-RELEASE-RP slightly before the node's EVT_RELEASED handler has
    armed the completion timers.
    """
    deadline = time.monotonic() + timeout_s
    while node.intake.busy_series() and time.monotonic() < deadline:
        time.sleep(0.01)


def send(port: int, datasets: list[Dataset], calling_ae: str = "TPS") -> list[int]:
    """C-STORE ``datasets`` on one association; returns the statuses (-1: no response)."""
    ae = AE(ae_title=calling_ae)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="RTNODE")
    if not assoc.is_established:
        raise ConnectionRefusedError("association not established")
    try:
        return [int(getattr(assoc.send_c_store(ds), "Status", -1)) for ds in datasets]
    finally:
        assoc.release()
