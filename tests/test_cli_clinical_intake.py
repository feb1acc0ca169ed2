"""``rtnode submit-text`` as a subprocess, and a running node noticing what it wrote."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import FakeClock
from tests.factories import make_ct_series, minimal_pdf
from tests.support import REPO, make_node, write_config
from tests.test_clinical_join import NEEDS_TEXT, _receive

RTNODE = [sys.executable, "-m", "appliance.cli"]
STUDY = "1.2.826.0.1.3680043.8.498.1"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RTNODE, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def _submit(cfg: Path, file: Path, *keys: str) -> subprocess.CompletedProcess[str]:
    return _run("submit-text", "--config", str(cfg), *keys, str(file))


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "var" / "rtnode.sqlite3") as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def test_text_file_is_stored_audited_and_shown_by_status(tmp_path: Path, cfg: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("\ufeffLeft breast cancer, pT1c pN0 M0.\r\nBreast-conserving surgery.\n")
    out = _submit(cfg, note, "--patient-id", "P1", "--study-uid", STUDY)
    assert out.returncode == 0, out.stderr
    assert "document 1 stored for patient P1" in out.stdout
    [row] = _rows(
        tmp_path, "SELECT patient_id, study_uid, source_kind, text, state FROM clinical_documents"
    )
    assert row == (
        "P1",
        STUDY,
        "submit-text",
        "Left breast cancer, pT1c pN0 M0.\nBreast-conserving surgery.",
        "new",
    )
    [(detail,)] = _rows(tmp_path, "SELECT detail FROM audit WHERE event='clinical_text_received'")
    assert json.loads(detail)["source"] == "submit-text" and "pT1c" not in detail
    status = _run("status", "--config", str(cfg), "--json")
    [doc] = json.loads(status.stdout)["clinical"]["recent_documents"]
    assert doc["source"] == "submit-text" and doc["state"] == "new"


def test_pdf_file_is_read_through_its_text_layer(tmp_path: Path, cfg: Path) -> None:
    pdf = tmp_path / "referral.pdf"
    pdf.write_bytes(minimal_pdf("Prostate adenocarcinoma\nPSA 12 ng/mL, Gleason 4+3"))
    out = _submit(cfg, pdf, "--patient-id", "P1", "--accession", "ACC42")
    assert out.returncode == 0, out.stderr
    [(text, accession)] = _rows(tmp_path, "SELECT text, accession_number FROM clinical_documents")
    assert text == "Prostate adenocarcinoma\nPSA 12 ng/mL, Gleason 4+3" and accession == "ACC42"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"  \n\n\t\n", "contains no text"),
        (b"\xff\xfe\x00binary\x80\x81", "not UTF-8 text"),
        (b"%PDF-1.4 broken", "unreadable PDF"),
    ],
)
def test_unusable_file_is_refused_and_audited(
    tmp_path: Path, cfg: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = _submit(cfg, bad, "--patient-id", "P1", "--study-uid", STUDY)
    assert out.returncode == 1 and message in out.stderr and "nothing stored" in out.stderr
    assert _rows(tmp_path, "SELECT id FROM clinical_documents") == []
    [(patient, detail)] = _rows(
        tmp_path, "SELECT patient_id, detail FROM audit WHERE event='clinical_text_rejected'"
    )
    assert patient == "P1" and message in json.loads(detail)["reason"]


@pytest.mark.parametrize(
    ("keys", "file", "message"),
    [
        (["--patient-id", "P1", "--study-uid", STUDY], "missing.txt", "no such file"),
        (["--patient-id", "P1"], "note.txt", "give --study-uid or --accession"),
        (["--patient-id", " ", "--accession", "A"], "note.txt", "--patient-id must be"),
        (["--patient-id", "P1", "--study-uid", "1.2.abc"], "note.txt", "is not a DICOM UID"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, cfg: Path, keys: list[str], file: str, message: str
) -> None:
    (tmp_path / "note.txt").write_text("cT2 N0")
    out = _submit(cfg, tmp_path / file, *keys)
    assert out.returncode == 2 and message in out.stderr


def test_running_node_joins_submitted_text_at_its_next_tick(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, rules=[NEEDS_TEXT], completion={"quiet_seconds": 1})
    node = make_node(cfg, FakeClock())
    node.start(listen=False, background=False)
    try:
        ct = make_ct_series(n_slices=2, rows=16, cols=16, patient_id="P7", seed=2)
        _receive(node, ct.datasets, tmp_path / "ct")
        [job] = node.store.recent_jobs()
        status = json.loads(_run("status", "--config", str(cfg), "--json").stdout)
        [waiting] = status["clinical"]["waiting_jobs"]
        assert waiting["job_id"] == job.id and waiting["seconds_left"] is not None
        note = tmp_path / "note.txt"
        note.write_text("cT3 N1 M0 prostate adenocarcinoma")
        study = str(ct.datasets[0].StudyInstanceUID)
        assert _submit(cfg, note, "--patient-id", "P7", "--study-uid", study).returncode == 0
        assert node.store.get_job(job.id).state == "waiting"  # type: ignore[union-attr]
        node.tick_completion()
        joined = node.store.get_job(job.id)
        assert joined is not None and joined.state == "pending"
        [doc] = node.clinical_store.documents_for(joined.clinical_document_ids)
        assert doc.source == "submit-text" and doc.text == "cT3 N1 M0 prostate adenocarcinoma"
    finally:
        node.stop()


def test_check_config_checks_without_text_and_knows_engine_plugins(tmp_path: Path) -> None:
    rule = {**NEEDS_TEXT, "clinical_text": {"wait_seconds": 5, "without_text": ["nope"]}}
    cfg = write_config(
        tmp_path,
        rules=[rule],
        engine_plugins={
            "record_clinical": "tests.engines_for_tests:RecordClinical",
            "record_no_text": "tests.engines_for_tests:RecordNoText",
        },
    )
    out = _run("check-config", "--config", str(cfg))
    assert out.returncode == 1
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert "rules.0.clinical_text.without_text.0: unknown engine 'nope'" in line
    assert "record_clinical" in line  # the plug-ins are known engines
