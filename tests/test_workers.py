"""Jobs run in worker processes; a crashing worker never takes the node down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import AuditFilter
from appliance.clock import FakeClock
from appliance.service import Node
from appliance.store import InstanceRecord
from tests.support import make_node, write_config

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(
        write_config(tmp_path, workers={"max_attempts": 2, "job_timeout_s": 5}), FakeClock()
    )
    n.start(listen=False, background=False)
    yield n
    n.stop()


def _job(
    node: Node, pipeline: list[str], tmp_path: Path, rule: str = "r", series: str = "1.2.3.4"
) -> int:
    src = tmp_path / "in.dcm"
    src.write_bytes(b"placeholder input")
    rec = InstanceRecord(f"{series}.5", CT_CLASS, "1.2.3", series, "P9", "", str(src), 17, "TPS")
    node.store.add_instance(rec, node.clock.now())
    attrs = {"SeriesInstanceUID": series, "StudyInstanceUID": "1.2.3", "PatientID": "P9"}
    return node.store.create_job(attrs, rule, pipeline, ["tps"], 2, node.clock.now())


def _run_pending(node: Node) -> None:
    slot = node.pool.slots[0]
    while (job := node.store.claim_job(node.clock.now())) is not None:
        node.pool.run_job(slot, job)


def test_successful_job_creates_deliveries(node: Node, tmp_path: Path) -> None:
    job_id = _job(node, ["copy_inputs"], tmp_path)
    _run_pending(node)
    job = node.store.get_job(job_id)
    assert job is not None and job.state == "done"
    assert Path(job.outputs[0]).read_bytes() == b"placeholder input"
    assert [d.destination for d in node.store.due_deliveries(node.clock.now())] == ["tps"]


def test_segfaulting_worker_is_retried_then_failed_with_reason(node: Node, tmp_path: Path) -> None:
    job_id = _job(node, ["crash"], tmp_path)
    _run_pending(node)
    job = node.store.get_job(job_id)
    assert job is not None and job.state == "failed" and job.attempts == 2
    assert "worker process died (exit code -11)" in job.last_error
    finished = node.audit.query(AuditFilter(event="job_finished"))
    assert [
        '"state": "pending"' in finished[0].detail,
        '"state": "failed"' in finished[1].detail,
    ] == [True, True]
    # the pool replaced the dead process and still works
    ok_id = _job_ok(node, tmp_path)
    _run_pending(node)
    assert node.store.get_job(ok_id).state == "done"  # type: ignore[union-attr]
    assert node.pool.slots[0].restarts >= 2


def _job_ok(node: Node, tmp_path: Path) -> int:
    attrs = {"SeriesInstanceUID": "1.2.3.4", "StudyInstanceUID": "1.2.3", "PatientID": "P9"}
    return node.store.create_job(attrs, "r", ["copy_inputs"], ["tps"], 2, node.clock.now())


def test_engine_error_fails_at_once_without_retry(node: Node, tmp_path: Path) -> None:
    job_id = _job(node, ["refuse"], tmp_path)
    _run_pending(node)
    job = node.store.get_job(job_id)
    assert job is not None and job.state == "failed" and job.attempts == 1
    assert job.last_error == "no usable CT in the series"


def test_hung_worker_times_out(node: Node, tmp_path: Path) -> None:
    job_id = _job(node, ["slow"], tmp_path)
    _run_pending(node)
    job = node.store.get_job(job_id)
    assert job is not None and job.state == "failed"
    assert "timed out" in job.last_error


def test_interrupted_job_resumes_after_restart(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    first = make_node(cfg, FakeClock())
    job_id = _job(first, ["copy_inputs"], tmp_path)
    assert first.store.claim_job(first.clock.now()) is not None  # running when the node "dies"
    first.db.dispose()
    second = make_node(cfg, FakeClock())
    second.start(listen=False, background=False)
    try:
        assert second.store.get_job(job_id).state == "pending"  # type: ignore[union-attr]
        _run_pending(second)
        assert second.store.get_job(job_id).state == "done"  # type: ignore[union-attr]
    finally:
        second.stop()


def test_pipeline_runner_hands_the_joined_documents_to_the_engines(tmp_path: Path) -> None:
    from appliance.pipeline import JobRequest, PipelineRunner
    from engines.base import ClinicalDocument, EngineContext

    seen: list[ClinicalDocument] = []

    class Spy:
        name, inputs, outputs = "spy", ("clinical_documents",), ()

        def run(self, ctx: EngineContext) -> None:
            seen.extend(ctx.clinical_documents)

    runner = PipelineRunner()
    runner._engines["spy"] = Spy()  # a cached engine instance answers for its step name
    docs = [ClinicalDocument("SR 1.2.3", "cT2 N0", "2026-01-01T12:00:00Z")]
    result = runner.run(JobRequest(7, ["spy"], [], str(tmp_path), clinical_documents=docs))
    assert result.ok and seen == docs


def test_rule_params_reach_the_engines_over_the_node_settings(tmp_path: Path) -> None:
    rules = [
        {
            "name": "site-model",
            "match": {"Modality": "^CT$"},
            "pipeline": ["record_params"],
            "destinations": ["tps"],
            "params": {"segmentation_model": "models/site.yaml", "segmentation_threads": 1},
        }
    ]
    config = write_config(tmp_path, rules=rules, engines={"segmentation_threads": 2})
    n = make_node(config, FakeClock())
    n.start(listen=False, background=False)
    try:
        job_id = _job(n, ["record_params"], tmp_path, rule="site-model")
        other = _job(n, ["record_params"], tmp_path, rule="another-rule", series="1.2.3.5")
        _run_pending(n)
        seen = {}
        for jid in (job_id, other):
            job = n.store.get_job(jid)
            assert job is not None and job.state == "done", job
            seen[jid] = json.loads(Path(job.outputs[0]).read_text())
    finally:
        n.stop()
    assert seen[job_id]["segmentation_threads"] == 1  # the rule wins over the node config
    assert seen[job_id]["segmentation_model"] == str(tmp_path / "models" / "site.yaml")
    assert seen[other]["segmentation_threads"] == 2
    assert "segmentation_model" not in seen[other]
