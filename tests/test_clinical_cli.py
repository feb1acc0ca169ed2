"""``rtnode clinical`` as a subprocess: the JSON contract external harnesses rely on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engines.llm.models import bundled_model_path

NOTES = Path(__file__).parent / "data" / "clinical_notes"
HAS_MODEL = importlib.util.find_spec("llama_cpp") is not None and bundled_model_path() is not None
CONTRACT = {
    "site",
    "laterality",
    "T",
    "N",
    "M",
    "surgery",
    "neoadjuvant",
    "age",
    "psa",
    "gleason",
    "svi",
    "disagreements",
    "strategy",
}


def rtnode(
    *args: str, timeout: float = 60, cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).parents[1],
        env=env,
    )


def clinical_json(
    note: Path, *extra: str, timeout: float = 60, cache: Path | None = None
) -> dict[str, Any]:
    result = rtnode("clinical", "--text", str(note), "--json", *extra, timeout=timeout, cache=cache)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()  # one JSON object
    data: dict[str, Any] = json.loads(line)
    return data


def test_breast_contract_without_model() -> None:
    data = clinical_json(NOTES / "b03_neoadjuvant_mastectomy.txt", "--llm-model", "none")
    assert set(data) >= CONTRACT
    assert (data["site"], data["laterality"], data["T"], data["N"], data["M"]) == (
        "breast",
        "left",
        "T3",
        "N1",
        "M0",
    )
    assert (data["surgery"], data["neoadjuvant"], data["age"]) == ("mastectomy", True, 44)
    assert data["svi"] is False and data["disagreements"] == []
    strategy = data["strategy"]
    assert (strategy["breast_or_chestwall"], strategy["regional_nodes"]) == ("chestwall", False)
    assert strategy["scl_guideline"] is None


def test_prostate_contract_without_model() -> None:
    data = clinical_json(NOTES / "p03_very_high_elderly_n1.txt", "--llm-model", "none")
    assert (data["psa"], data["gleason"], data["svi"], data["N"]) == (35.0, "4+5", True, "N1")
    assert data["strategy"]["target"] == "prostate"
    assert data["strategy"]["seminal_vesicles"] is True
    assert data["strategy"]["pelvic_nodes"] is False  # 81 years old
    assert data["protocol_rules"]["pelvic_nodes"] == "PR-PN-AGE"


def test_readable_report_and_errors(tmp_path: Path) -> None:
    result = rtnode(
        "clinical", "--text", str(NOTES / "b07_no_right_sided_disease.txt"), "--llm-model", "none"
    )
    assert result.returncode == 0 and "laterality   left" in result.stdout
    assert "BR-TGT-WB" in result.stdout
    missing = rtnode("clinical", "--text", str(tmp_path / "nope.txt"), "--llm-model", "none")
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    (tmp_path / "breast.yaml").write_text("site: breast\nname: x\nversion: '1'\nbogus: 1\n")
    bad = rtnode(
        "clinical",
        "--text",
        str(NOTES / "b01_consult_left_bcs.txt"),
        "--llm-model",
        "none",
        "--protocols",
        str(tmp_path),
    )
    assert bad.returncode == 1 and "breast.yaml:4: bogus" in bad.stderr


@pytest.mark.skipif(not HAS_MODEL, reason="llama_cpp or the bundled model absent")
def test_default_model_runs_in_a_child_process(tmp_path: Path) -> None:
    data = clinical_json(
        NOTES / "b14_injection_left.txt", "--llm-threads", "1", timeout=240, cache=tmp_path
    )
    assert (data["laterality"], data["T"], data["N"], data["age"]) == ("left", "T1c", "N0", 57)
    assert set(data) >= CONTRACT
    assert isinstance(data["llm_used"], bool)
    for d in data["disagreements"]:
        assert d["used"] == data.get(d["field"], d["used"])  # what is reported is what was used
    assert list((tmp_path / "rtnode").glob("llm_speed.json"))  # the measured speed is kept


@pytest.mark.skipif(not HAS_MODEL, reason="llama_cpp or the bundled model absent")
def test_a_known_slow_model_is_not_started(tmp_path: Path) -> None:
    model = bundled_model_path()
    assert model is not None
    key = f"{model.resolve()}|0|{os.cpu_count()}"
    speed = {key: {"seconds_per_unit": 10.0, "at": time.time()}}
    (tmp_path / "rtnode").mkdir()
    (tmp_path / "rtnode" / "llm_speed.json").write_text(json.dumps(speed))
    data = clinical_json(NOTES / "b01_consult_left_bcs.txt", cache=tmp_path)
    assert data["llm_used"] is False and data["laterality"] == "left"
    assert any("facts skipped: expected" in n for n in data["notes"])
