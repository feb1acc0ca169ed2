"""Clinical text joined to a CT on the node, against real DCMTK peers on loopback.

DCMTK ``storescu`` pushes a CT series and a Text SR to ``rtnode serve``; the rule needs
clinical text; the test engine ``record_clinical`` (registered through the node config's
``engine_plugins``) writes the documents it saw into an SR that the node delivers to a
DCMTK ``storescp``. A CT without text waits, then takes the rule's ``without_text``
fallback; text given with ``rtnode submit-text`` to the running node releases a wait.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.factories import (
    CTSeries,
    make_ct_series,
    make_structured_sr,
    sr_item,
    write_dataset,
    write_series,
)
from tests.integration.conftest import REPO, RtNode, StoreSCP, push, requires_dcmtk, wait_for

pytestmark = [pytest.mark.integration, requires_dcmtk]

RESULT_TIMEOUT_S = 90.0
PLUGINS = {
    "engine_plugins": {
        "record_clinical": "tests.engines_for_tests:RecordClinical",
        "record_no_text": "tests.engines_for_tests:RecordNoText",
    }
}


def _rule(wait_seconds: float) -> dict[str, Any]:
    return {
        "name": "ctv-with-text",
        "match": {"Modality": "^CT$"},
        "pipeline": ["record_clinical"],
        "destinations": ["tps"],
        "clinical_text": {"wait_seconds": wait_seconds, "without_text": ["record_no_text"]},
    }


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's worker processes import the test engines from this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def _ct(tmp_path: Path, patient_id: str) -> tuple[CTSeries, Path]:
    ct = make_ct_series(n_slices=4, rows=64, cols=64, patient_id=patient_id, seed=5)
    directory = tmp_path / f"ct-{patient_id}"
    write_series(ct, directory)
    return ct, directory


def _note(ct: CTSeries, tmp_path: Path, text: str) -> Path:
    first = ct.datasets[0]
    sr = make_structured_sr(
        [
            sr_item(
                "CONTAINER",
                "Diagnosis",
                children=[
                    sr_item("TEXT", "Finding", text),
                    sr_item("CODE", "Laterality", "Left"),
                    sr_item("NUM", "Age", ("61", "a")),
                ],
            )
        ],
        patient_id=str(first.PatientID),
        study_uid=str(first.StudyInstanceUID),
    )
    return write_dataset(sr, tmp_path / f"note-{sr.SOPInstanceUID}.dcm")


def _records(tps: StoreSCP) -> list[tuple[str, list[dict[str, str]]]]:
    """(SeriesDescription, documents seen) of every record SR the TPS has received."""
    found = []
    for path in tps.files():
        try:
            ds: Dataset = pydicom.dcmread(path)
        except Exception:  # storescp may still be writing it
            continue
        if str(ds.get("SeriesDescription", "")) in (
            "clinical documents seen",
            "fallback without clinical text",
        ):
            found.append((str(ds.SeriesDescription), json.loads(ds.ContentSequence[0].TextValue)))
    return found


def _events(node: RtNode, name: str) -> list[dict[str, Any]]:
    return node.audit_rows(name)


def test_ct_and_sr_pushed_by_storescu_reach_the_engine(
    tmp_path: Path, make_node: Callable[..., RtNode], tps: StoreSCP
) -> None:
    node = make_node(tps.port, overrides=PLUGINS, rules=[_rule(60)])
    ct, ct_dir = _ct(tmp_path, "CLIN-1")
    note = _note(ct, tmp_path, "Invasive ductal carcinoma, pT1c pN1a")
    sent = push(node.port, [*sorted(ct_dir.glob("*.dcm")), note])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [(title, seen)] = wait_for(lambda: _records(tps), RESULT_TIMEOUT_S, "the record SR")
    assert title == "clinical documents seen"
    [doc] = seen
    assert doc["source"] == f"SR {note.stem.removeprefix('note-')}"
    assert doc["text"] == (
        "# Radiotherapy consultation\n## Diagnosis\n"
        "Finding: Invasive ductal carcinoma, pT1c pN1a\nLaterality: Left\nAge: 61 years"
    )
    [joined] = _events(node, "clinical_text_joined")
    [received] = _events(node, "clinical_text_received")
    assert joined["detail"]["document_ids"] == [received["detail"]["document_id"]]
    assert "pT1c" not in json.dumps(node.audit_rows())  # no free text in the audit
    assert _events(node, "clinical_text_missing_fallback") == []


def test_ct_without_text_follows_the_fallback_and_late_text_reruns_the_pipeline(
    tmp_path: Path, make_node: Callable[..., RtNode], tps: StoreSCP
) -> None:
    node = make_node(tps.port, overrides=PLUGINS, rules=[_rule(3)])
    ct, ct_dir = _ct(tmp_path, "CLIN-2")
    assert push(node.port, ct_dir).returncode == 0
    wait_for(lambda: _events(node, "clinical_text_waiting"), 30, "the wait to start")
    [(title, seen)] = wait_for(lambda: _records(tps), RESULT_TIMEOUT_S, "the fallback SR")
    assert (title, seen) == ("fallback without clinical text", [])
    [fallback] = _events(node, "clinical_text_missing_fallback")
    assert fallback["detail"]["pipeline"] == ["record_no_text"]
    assert fallback["detail"]["waited_s"] >= 3
    assert push(node.port, [_note(ct, tmp_path, "late note")]).returncode == 0
    [late] = wait_for(lambda: _events(node, "clinical_text_late"), 30, "the late audit row")
    assert late["job_id"] == fallback["job_id"] and late["detail"]["outcome"] == "fallback"
    # the late text starts the full pipeline again, whose result reaches the TPS too
    assert late["detail"]["rerun_job_id"] not in (None, fallback["job_id"])
    records = wait_for(
        lambda: [r for r in _records(tps) if r[0] == "clinical documents seen"] or None,
        RESULT_TIMEOUT_S,
        "the full pipeline's SR after the late text",
    )
    assert [len(seen) for _, seen in records] == [1]
    status = node.cli("status", "--json")
    docs = json.loads(status.stdout)["clinical"]["recent_documents"]
    assert [d["state"] for d in docs] == ["joined"]


def test_submit_text_releases_a_waiting_ct_on_the_running_node(
    tmp_path: Path, make_node: Callable[..., RtNode], tps: StoreSCP
) -> None:
    node = make_node(tps.port, overrides=PLUGINS, rules=[_rule(120)])
    ct, ct_dir = _ct(tmp_path, "CLIN-3")
    assert push(node.port, ct_dir).returncode == 0
    wait_for(lambda: _events(node, "clinical_text_waiting"), 30, "the wait to start")
    status = json.loads(node.cli("status", "--json").stdout)
    assert len(status["clinical"]["waiting_jobs"]) == 1
    note = tmp_path / "note.txt"
    note.write_text("cT2 N0 M0 prostate adenocarcinoma, PSA 8.1 ng/mL\n")
    study = str(ct.datasets[0].StudyInstanceUID)
    out = node.cli("submit-text", "--patient-id", "CLIN-3", "--study-uid", study, str(note))
    assert out.returncode == 0, out.stderr
    [(title, seen)] = wait_for(lambda: _records(tps), RESULT_TIMEOUT_S, "the record SR")
    assert title == "clinical documents seen"
    assert [(d["source"], d["text"]) for d in seen] == [
        ("submit-text", "cT2 N0 M0 prostate adenocarcinoma, PSA 8.1 ng/mL")
    ]
