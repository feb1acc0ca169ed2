"""Clinical text on the node: intake, joining to CT jobs, waiting, fallback, restart.

The node runs in-process on a FakeClock; completion and the clinical-text tick are driven
by ``Node.tick_completion()``, jobs by a worker slot running the test engine
``record_clinical`` (which writes the documents it saw into an SR).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from appliance.audit import AuditFilter
from appliance.clinical_store import NewDocument
from appliance.clock import FakeClock
from appliance.service import Node
from appliance.store import InstanceRecord, JobView
from tests.factories import (
    CTSeries,
    make_ct_series,
    make_encapsulated_pdf,
    make_structured_sr,
    make_text_sr,
    sr_item,
    write_dataset,
)
from tests.support import make_node, write_config

WAIT_S = 60
NEEDS_TEXT = {
    "name": "ctv",
    "match": {"Modality": "^CT$"},
    "pipeline": ["record_clinical"],
    "destinations": ["tps"],
    "clinical_text": {"wait_seconds": WAIT_S, "without_text": ["record_no_text"]},
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _start(tmp_path: Path, clock: FakeClock, rules: list[dict[str, Any]] | None = None) -> Node:
    cfg = tmp_path / "rtnode.yaml"
    if not cfg.exists():
        write_config(tmp_path, rules=rules or [NEEDS_TEXT], completion={"quiet_seconds": 1})
    node = make_node(cfg, clock)
    node.start(listen=False, background=False)
    return node


@pytest.fixture
def node(tmp_path: Path, clock: FakeClock) -> Iterator[Node]:
    n = _start(tmp_path, clock)
    yield n
    n.stop()


def _receive(node: Node, datasets: list[Dataset], directory: Path) -> None:
    """Index datasets as the SCP would, then let their quiet window pass and complete them."""
    directory.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        path = write_dataset(ds, directory / f"{ds.SOPInstanceUID}.dcm")
        attrs = {
            "Modality": str(ds.Modality),
            "SOPClassUID": str(ds.SOPClassUID),
            "AccessionNumber": str(ds.get("AccessionNumber", "")),
        }
        rec = InstanceRecord(
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.PatientID),
            "",
            str(path),
            path.stat().st_size,
            "TPS",
            attrs,
        )
        node.store.add_instance(rec, node.clock.now())
        node.store.schedule_completion(rec.series_uid, node.clock.now())
    node.tick_completion()


def _ct(accession: str = "") -> CTSeries:
    ct = make_ct_series(n_slices=2, rows=16, cols=16, patient_id="P1", seed=3)
    for ds in ct.datasets:
        ds.AccessionNumber = accession
    return ct


def _sr(ct: CTSeries, text: str = "cT2 N1 M0 left breast", **kw: Any) -> Dataset:
    ds = make_text_sr(text, str(ct.datasets[0].PatientID), str(ct.datasets[0].StudyInstanceUID))
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


def _run_pending(node: Node) -> list[JobView]:
    done = []
    while (job := node.store.claim_job(node.clock.now())) is not None:
        node.pool.run_job(node.pool.slots[0], job)
        done.append(job)
    return done


def _seen(node: Node, job_id: int) -> tuple[str, list[dict[str, str]]]:
    """(SeriesDescription, documents) of the SR the recording engine wrote for a job."""
    job = node.store.get_job(job_id)
    assert job is not None and job.state == "done", job
    ds = pydicom.dcmread(job.outputs[0])
    return str(ds.SeriesDescription), json.loads(ds.ContentSequence[0].TextValue)


def _events(node: Node, name: str) -> list[dict[str, Any]]:
    rows = node.audit.query(AuditFilter(event=name))
    return [{"job_id": r.job_id, "patient_id": r.patient_id, **json.loads(r.detail)} for r in rows]


def _only_job(node: Node) -> JobView:
    [job] = node.store.recent_jobs(10)
    return job


def test_sr_is_extracted_stored_and_audited_without_its_text(node: Node, tmp_path: Path) -> None:
    ct = _ct()
    sr = make_structured_sr(
        [sr_item("CONTAINER", "Staging", children=[sr_item("CODE", "T stage", "cT2")])],
        patient_id="P1",
        study_uid=str(ct.datasets[0].StudyInstanceUID),
    )
    _receive(node, [sr], tmp_path / "sr")
    [doc] = node.clinical_store.recent_documents()
    assert (doc.source_kind, doc.source_uid, doc.patient_id) == ("SR", sr.SOPInstanceUID, "P1")
    [row] = node.audit.query(AuditFilter(event="clinical_text_received"))
    assert row.patient_id == "P1" and row.study_uid == ct.datasets[0].StudyInstanceUID
    assert "cT2" not in row.detail and json.loads(row.detail)["chars"] == doc.chars


def test_ct_after_its_text_runs_the_full_pipeline_at_once(node: Node, tmp_path: Path) -> None:
    ct = _ct()
    _receive(node, [_sr(ct)], tmp_path / "sr")
    _receive(node, ct.datasets, tmp_path / "ct")
    job = _only_job(node)
    assert job.state == "pending" and len(job.clinical_document_ids) == 1
    _run_pending(node)
    title, seen = _seen(node, job.id)
    assert title == "clinical documents seen"
    assert [d["text"] for d in seen] == ["# Consult note\nComment: cT2 N1 M0 left breast"]
    assert seen[0]["source"].startswith("SR ") and seen[0]["received_at"].endswith("Z")
    [joined] = _events(node, "clinical_text_joined")
    assert joined["job_id"] == job.id and joined["waited_s"] == 0.0


def test_ct_waits_for_text_that_arrives_before_the_deadline(
    node: Node, tmp_path: Path, clock: FakeClock
) -> None:
    ct = _ct()
    _receive(node, ct.datasets, tmp_path / "ct")
    job = _only_job(node)
    assert job.state == "waiting" and _run_pending(node) == []
    [waiting] = _events(node, "clinical_text_waiting")
    assert waiting["job_id"] == job.id and waiting["wait_seconds"] == WAIT_S
    clock.advance(30)
    _receive(node, [_sr(ct, "pT1c pN0 right breast")], tmp_path / "sr")
    assert [j.id for j in _run_pending(node)] == [job.id]
    assert [d["text"].splitlines()[-1] for d in _seen(node, job.id)[1]] == [
        "Comment: pT1c pN0 right breast"
    ]
    [joined] = _events(node, "clinical_text_joined")
    assert joined["waited_s"] == 30.0
    clock.advance(WAIT_S)
    node.tick_completion()
    assert _events(node, "clinical_text_missing_fallback") == []


def test_deadline_passes_then_fallback_runs_and_late_text_is_audited(
    node: Node, tmp_path: Path, clock: FakeClock
) -> None:
    ct = _ct()
    _receive(node, ct.datasets, tmp_path / "ct")
    job = _only_job(node)
    clock.advance(WAIT_S - 1)
    node.tick_completion()
    assert node.store.get_job(job.id).state == "waiting"  # type: ignore[union-attr]
    clock.advance(1)
    node.tick_completion()
    [fallback] = _events(node, "clinical_text_missing_fallback")
    assert fallback["pipeline"] == ["record_no_text"] and fallback["waited_s"] == WAIT_S
    _run_pending(node)
    assert _seen(node, job.id) == ("fallback without clinical text", [])
    _receive(node, [_sr(ct)], tmp_path / "sr")
    [late] = _events(node, "clinical_text_late")
    assert late["job_id"] == job.id and late["outcome"] == "fallback"
    # the late text starts a new job with the full pipeline (rerun_late_text, default on)
    rerun = late["rerun_job_id"]
    assert rerun is not None and rerun != job.id
    assert node.store.get_job(rerun).pipeline == ["record_clinical"]  # type: ignore[union-attr]
    assert [e["job_id"] for e in _events(node, "clinical_text_joined")] == [rerun]
    assert [j.id for j in _run_pending(node)] == [rerun]
    description, docs = _seen(node, rerun)
    assert description == "clinical documents seen" and len(docs) == 1
    assert node.clinical_store.recent_documents()[0].state == "joined"
    # a second late document joins no one and starts nothing more
    _receive(node, [_sr(ct, "addendum: left breast, pN1a")], tmp_path / "sr2")
    assert _events(node, "clinical_text_late")[-1]["rerun_job_id"] is None
    assert _run_pending(node) == []


def test_late_text_is_only_audited_when_the_rule_says_so(tmp_path: Path, clock: FakeClock) -> None:
    need = {**NEEDS_TEXT["clinical_text"], "rerun_late_text": False}  # type: ignore[dict-item]
    node = _start(tmp_path, clock, [{**NEEDS_TEXT, "clinical_text": need}])
    try:
        ct = _ct()
        _receive(node, ct.datasets, tmp_path / "ct")
        clock.advance(WAIT_S)
        node.tick_completion()
        _run_pending(node)
        _receive(node, [_sr(ct)], tmp_path / "sr")
        [late] = _events(node, "clinical_text_late")
        assert late["rerun_job_id"] is None and _run_pending(node) == []
        assert node.clinical_store.recent_documents()[0].state == "late"
    finally:
        node.stop()


def test_empty_fallback_skips_the_series(tmp_path: Path, clock: FakeClock) -> None:
    rule = {**NEEDS_TEXT, "clinical_text": {"wait_seconds": 5, "without_text": []}}
    node = _start(tmp_path, clock, [rule])
    try:
        _receive(node, _ct().datasets, tmp_path / "ct")
        clock.advance(5)
        node.tick_completion()
        job = _only_job(node)
        assert job.state == "skipped" and _run_pending(node) == []
        [skipped] = _events(node, "clinical_text_missing_skipped")
        assert skipped["job_id"] == job.id and skipped["rule"] == "ctv"
    finally:
        node.stop()


def test_wait_and_deadline_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    node = _start(tmp_path, clock)
    ct = _ct()
    _receive(node, ct.datasets, tmp_path / "ct")
    job = _only_job(node)
    node.stop()
    clock.advance(WAIT_S - 10)
    node = _start(tmp_path, clock)
    try:
        node.tick_completion()
        assert node.store.get_job(job.id).state == "waiting"  # type: ignore[union-attr]
        clock.advance(10)
        node.tick_completion()
        assert [e["job_id"] for e in _events(node, "clinical_text_missing_fallback")] == [job.id]
    finally:
        node.stop()


def test_text_submitted_while_the_node_was_down_is_joined_first(
    tmp_path: Path, clock: FakeClock
) -> None:
    node = _start(tmp_path, clock)
    ct = _ct()
    _receive(node, ct.datasets, tmp_path / "ct")
    job = _only_job(node)
    study = str(ct.datasets[0].StudyInstanceUID)
    node.stop()
    clock.advance(WAIT_S * 10)  # the deadline passed while the node was down...
    node = _start(tmp_path, clock)
    try:  # ...but the text was there before the node looked: it wins
        node.clinical.add(NewDocument("P1", study, "", "submit-text", None, "cT1 N0"))
        node.tick_completion()
        assert node.store.get_job(job.id).state == "pending"  # type: ignore[union-attr]
        assert _events(node, "clinical_text_missing_fallback") == []
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("doc_key", "joins"),
    [
        ({"patient": "P1", "study": True, "accession": ""}, True),
        ({"patient": "P1", "study": False, "accession": "ACC1"}, True),
        ({"patient": "P2", "study": True, "accession": "ACC1"}, False),  # other patient
        ({"patient": "P1", "study": False, "accession": "ACC9"}, False),  # other accession
        ({"patient": "P1", "study": False, "accession": ""}, False),  # empty never matches
    ],
)
def test_join_key_is_patient_and_study_or_accession(
    node: Node, doc_key: dict[str, Any], joins: bool
) -> None:
    ct = _ct(accession="ACC1")  # the CT arrives first and waits
    study = str(ct.datasets[0].StudyInstanceUID)
    _receive(node, ct.datasets, Path(node.paths.data_dir) / "in-ct")
    doc = NewDocument(
        doc_key["patient"],
        study if doc_key["study"] else "",
        doc_key["accession"],
        "submit-text",
        None,
        "cT2 N0",
    )
    node.clinical.add(doc)
    node.tick_completion()
    assert _only_job(node).state == ("pending" if joins else "waiting")


def test_empty_ct_accession_does_not_join_an_empty_document_accession(node: Node) -> None:
    ct = _ct(accession="")
    _receive(node, ct.datasets, Path(node.paths.data_dir) / "in-ct")
    node.clinical.add(NewDocument("P1", "", "", "submit-text", None, "x"))
    node.tick_completion()
    assert _only_job(node).state == "waiting"


def test_second_document_before_the_job_runs_is_joined_too(node: Node, tmp_path: Path) -> None:
    ct = _ct()
    _receive(node, [_sr(ct, "first")], tmp_path / "sr1")
    _receive(node, ct.datasets, tmp_path / "ct")
    pdf = make_encapsulated_pdf(
        "second", str(ct.datasets[0].PatientID), str(ct.datasets[0].StudyInstanceUID)
    )
    _receive(node, [pdf], tmp_path / "pdf")
    job = _only_job(node)
    _run_pending(node)
    sources = [d["source"].split()[0] for d in _seen(node, job.id)[1]]
    assert sources == ["SR", "PDF"]


def test_bad_document_is_audited_and_the_node_goes_on(node: Node, tmp_path: Path) -> None:
    ct = _ct()
    empty = make_structured_sr([], "P1", str(ct.datasets[0].StudyInstanceUID))
    _receive(node, [empty], tmp_path / "bad")
    [rejected] = _events(node, "clinical_text_rejected")
    assert rejected["source"] == empty.SOPInstanceUID and "no text" in rejected["reason"]
    assert node.clinical_store.recent_documents() == []
    _receive(node, ct.datasets, tmp_path / "ct")
    assert _only_job(node).state == "waiting"


def test_rule_without_clinical_text_ignores_documents(tmp_path: Path, clock: FakeClock) -> None:
    plain = {k: v for k, v in NEEDS_TEXT.items() if k != "clinical_text"}
    node = _start(tmp_path, clock, [plain])
    try:
        ct = _ct()
        _receive(node, [_sr(ct)], tmp_path / "sr")
        _receive(node, ct.datasets, tmp_path / "ct")
        job = _only_job(node)
        assert job.state == "pending" and job.clinical_document_ids == []
        _run_pending(node)
        assert _seen(node, job.id)[1] == []
    finally:
        node.stop()


def test_resent_sr_series_is_not_stored_twice(node: Node, tmp_path: Path) -> None:
    ct = _ct()
    sr = _sr(ct)
    _receive(node, [sr], tmp_path / "sr")
    extra = _sr(ct, "addendum", SeriesInstanceUID=sr.SeriesInstanceUID)
    _receive(node, [extra], tmp_path / "sr")  # re-opens and re-completes the series
    assert len(node.clinical_store.recent_documents()) == 2
    assert len(_events(node, "clinical_text_received")) == 2


def test_migration_0002_upgrades_a_0001_database(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from appliance.db import MIGRATIONS_DIR, create_engine, migrate

    engine = create_engine(tmp_path / "old.sqlite3")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (series_uid, study_uid, patient_id, rule_name, pipeline,"
                " destinations, state, attempts, max_attempts, last_error, outputs, notes,"
                " created_at) VALUES ('1.2', '1.1', 'P', 'r', '[\"x\"]', '[]', 'done', 1, 3,"
                " '', '[]', '[]', '2026-01-01 00:00:00')"
            )
        )
    migrate(engine)
    from appliance.store import Store

    job = Store(engine).get_job(1)
    assert job is not None and job.state == "done" and job.clinical_document_ids == []


def test_new_text_taken_by_a_second_ct_still_releases_the_first(node: Node, tmp_path: Path) -> None:
    first = _ct()
    _receive(node, first.datasets, tmp_path / "ct1")
    study = str(first.datasets[0].StudyInstanceUID)
    second = make_ct_series(n_slices=2, rows=16, cols=16, patient_id="P1", study_uid=study)
    node.clinical.add(NewDocument("P1", study, "", "submit-text", None, "cT1 N0"))
    _receive(node, second.datasets, tmp_path / "ct2")  # its job takes the text first
    jobs = node.store.recent_jobs(10)
    assert len(jobs) == 2 and {j.state for j in jobs} == {"pending"}
    assert all(len(j.clinical_document_ids) == 1 for j in jobs)
    assert node.clinical_store.recent_documents()[0].state == "joined"
