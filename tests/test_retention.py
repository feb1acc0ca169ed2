"""Spool retention: what is purged, what is kept, audit, status, restart (FakeClock).

The node runs in process with its SCP on loopback (pynetdicom SCU) and without workers:
jobs are claimed, finished and delivered through the store, as the pool and the delivery
manager would, so each test sets exactly the state it is about.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from appliance.audit import AuditFilter
from appliance.clock import FakeClock
from appliance.config import ConfigError, load_config
from appliance.db import Delivery, Job, JobState, SeriesState
from appliance.retention_store import RetentionStore
from appliance.service import Node
from appliance.status_report import collect_status, format_status
from dicom_node import status
from dicom_node.spool import Spool
from tests.factories import CTSeries, make_ct_series, write_dataset
from tests.support import make_node, wait_until_closed, write_config
from tests.support import send as _send

DAY_S = 86400.0
RETENTION_DAYS = 30


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, spool={"retention_days": RETENTION_DAYS})


@pytest.fixture
def node(config: Path, clock: FakeClock) -> Iterator[Node]:
    n = make_node(config, clock)
    n.start(background=False)
    yield n
    n.stop()


# --------------------------------------------------------------------------- helpers


def send(node: Node, ct: CTSeries) -> list[int]:
    statuses = _send(node.cfg.node.port, ct.datasets)
    wait_until_closed(node)
    return statuses


def receive_and_complete(node: Node, clock: FakeClock, ct: CTSeries) -> int:
    """Send ``ct``, let its quiet window pass; returns the id of the job routing created."""
    assert send(node, ct) == [status.SUCCESS] * len(ct.datasets)
    clock.advance(node.cfg.completion.quiet_seconds + 1)
    assert node.tick_completion() == 1
    jobs = [j for j in node.store.recent_jobs(50) if j.series_uid == ct.series_uid]
    return jobs[0].id  # the newest


def finish(node: Node, clock: FakeClock, job_id: int, tmp_path: Path) -> None:
    """Run the job as the pool would: claimed, done with one output, delivery pending."""
    claimed = node.store.claim_job(clock.now())
    assert claimed is not None and claimed.id == job_id
    out = write_dataset(make_ct_series(n_slices=1, rows=8, cols=8).datasets[0], tmp_path / "o.dcm")
    node.store.finish_job(job_id, [str(out)], [], clock.now(), clock.now())


def deliver(node: Node, clock: FakeClock) -> None:
    for d in node.store.due_deliveries(clock.now()):
        node.store.delivery_sent(d.id, clock.now())


def spool_files(node: Node, ct: CTSeries) -> list[Path]:
    return [p for p in node.spool.iter_files() if p.parent.name == ct.series_uid]


def series_state(node: Node, ct: CTSeries) -> str:
    (row,) = [s for s in node.store.recent_series(50) if s.series_uid == ct.series_uid]
    return row.state


def purge_rows(node: Node) -> list[dict[str, Any]]:
    rows = node.audit.query(AuditFilter(event="spool_purged"))
    return [{"series_uid": r.series_uid, **json.loads(r.detail)} for r in rows]


def set_job_state(node: Node, job_id: int, state: str) -> None:
    with Session(node.db) as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(state=state))


def ct_series(seed: int = 0) -> CTSeries:
    return make_ct_series(n_slices=3, rows=32, cols=32, seed=seed)


# --------------------------------------------------------------------------- tests


def test_finished_and_delivered_series_is_purged_after_retention(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    ct = ct_series()
    job_id = receive_and_complete(node, clock, ct)
    finish(node, clock, job_id, tmp_path)
    deliver(node, clock)
    files = spool_files(node, ct)
    size = sum(p.stat().st_size for p in files)
    assert len(files) == 3

    clock.advance((RETENTION_DAYS - 1) * DAY_S)
    assert node.retention.tick() == 0
    assert len(spool_files(node, ct)) == 3

    clock.advance(2 * DAY_S)
    assert node.retention.tick() == 1
    assert spool_files(node, ct) == []
    assert not files[0].parent.exists()  # the empty series folder went too
    assert series_state(node, ct) == SeriesState.PURGED
    assert node.store.series_files(ct.series_uid) == []
    assert purge_rows(node) == [
        {
            "series_uid": ct.series_uid,
            "instances": 3,
            "bytes": size,
            "retention_days": RETENTION_DAYS,
            "last_activity": "2026-01-01T12:00:03",  # completion, job end and send
        }
    ]
    assert node.audit.verify() == (len(node.audit.query(AuditFilter(limit=10_000))), [])
    assert node.retention.tick() == 0  # nothing left to do, nothing audited twice
    assert len(purge_rows(node)) == 1


HELD_BECAUSE = {
    "pending job": "unfinished job",
    "running job": "unfinished job",
    "waiting job": "unfinished job",
    "failed job": "failed job",
    "undelivered": "undelivered output",
    "dead letter": "undelivered output",
}


@pytest.mark.parametrize("situation", list(HELD_BECAUSE))
def test_series_with_unfinished_work_is_kept(
    node: Node, clock: FakeClock, tmp_path: Path, situation: str
) -> None:
    ct = ct_series()
    job_id = receive_and_complete(node, clock, ct)
    if situation == "running job":
        node.store.claim_job(clock.now())
    elif situation == "waiting job":
        set_job_state(node, job_id, JobState.WAITING)
    elif situation == "failed job":
        set_job_state(node, job_id, JobState.FAILED)
    elif situation in ("undelivered", "dead letter"):
        finish(node, clock, job_id, tmp_path)
        if situation == "dead letter":
            (d,) = node.store.due_deliveries(clock.now())
            node.store.delivery_failed(d.id, "TPS down", None)

    clock.advance(10 * RETENTION_DAYS * DAY_S)
    assert node.retention.tick() == 0
    assert len(spool_files(node, ct)) == 3
    assert series_state(node, ct) == SeriesState.COMPLETE
    assert purge_rows(node) == []
    kept = collect_status(node.loaded)["spool"]["held_past_retention"]
    assert kept == {HELD_BECAUSE[situation]: 1}


def test_a_late_send_restarts_the_retention_period(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    ct = ct_series()
    finish(node, clock, receive_and_complete(node, clock, ct), tmp_path)
    clock.advance(20 * DAY_S)  # the TPS was away for 20 days; the result goes out now
    deliver(node, clock)
    clock.advance((RETENTION_DAYS - 1) * DAY_S)
    assert node.retention.tick() == 0
    clock.advance(2 * DAY_S)
    assert node.retention.tick() == 1


def test_only_old_series_are_purged_and_others_keep_their_files(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    old, new = ct_series(1), ct_series(2)
    finish(node, clock, receive_and_complete(node, clock, old), tmp_path)
    deliver(node, clock)
    clock.advance(20 * DAY_S)
    finish(node, clock, receive_and_complete(node, clock, new), tmp_path)
    deliver(node, clock)
    clock.advance(15 * DAY_S)

    assert node.retention.tick() == 1
    assert spool_files(node, old) == []
    assert len(spool_files(node, new)) == 3
    report = collect_status(node.loaded)["spool"]
    assert report["held"]["series"] == 1 and report["held"]["instances"] == 3
    assert report["purged"]["series"] == 1 and report["purged"]["instances"] == 3
    text = format_status(collect_status(node.loaded))
    assert "spool:        retention 30 days; held 3 instances in 1 series" in text
    assert "purged 3 instances in 1 series" in text


def test_purged_series_sent_again_is_stored_and_routed_again(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    ct = ct_series()
    finish(node, clock, receive_and_complete(node, clock, ct), tmp_path)
    deliver(node, clock)
    clock.advance((RETENTION_DAYS + 1) * DAY_S)
    assert node.retention.tick() == 1

    second_job = receive_and_complete(node, clock, ct)  # the TPS re-sends it for a re-plan
    assert len(spool_files(node, ct)) == 3
    assert sorted(node.store.series_files(ct.series_uid)) == sorted(
        str(p) for p in spool_files(node, ct)
    )
    received = node.audit.query(AuditFilter(event="instances_received"))
    assert json.loads(received[-1].detail)["count"] == 3  # stored, not taken for duplicates
    assert json.loads(received[-1].detail)["duplicates"] == 0
    job = node.store.get_job(second_job)
    assert job is not None and job.state == JobState.PENDING
    assert series_state(node, ct) == SeriesState.COMPLETE


def test_retention_zero_keeps_everything(tmp_path: Path, clock: FakeClock) -> None:
    n = make_node(write_config(tmp_path, spool={"retention_days": 0}), clock)
    n.start(background=False)
    try:
        ct = ct_series()
        finish(n, clock, receive_and_complete(n, clock, ct), tmp_path)
        deliver(n, clock)
        clock.advance(3650 * DAY_S)
        assert not n.retention.enabled
        assert n.retention.tick() == 0
        assert len(spool_files(n, ct)) == 3
        assert "retention off (kept forever)" in format_status(collect_status(n.loaded))
    finally:
        n.stop()


def test_interrupted_purge_is_finished_at_start_up(
    config: Path, clock: FakeClock, tmp_path: Path
) -> None:
    first = make_node(config, clock)
    first.start(background=False)
    ct = ct_series()
    finish(first, clock, receive_and_complete(first, clock, ct), tmp_path)
    deliver(first, clock)
    clock.advance((RETENTION_DAYS + 1) * DAY_S)
    cutoff = first.retention.cutoff()
    assert cutoff is not None
    # The node stops right after marking the rows: the files are still there.
    assert RetentionStore(first.db).mark_purging(ct.series_uid, cutoff, clock.now())
    first.stop()
    assert len(spool_files(first, ct)) == 3

    second = make_node(config, clock)
    second.start(background=False)
    try:
        assert spool_files(second, ct) == []
        assert series_state(second, ct) == SeriesState.PURGED
        assert [r["instances"] for r in purge_rows(second)] == [3]
        assert second.store.known_paths() == set()  # nothing re-indexed from the spool
    finally:
        second.stop()


def test_a_series_being_received_is_not_purged(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    ct = ct_series()
    finish(node, clock, receive_and_complete(node, clock, ct), tmp_path)
    deliver(node, clock)
    clock.advance((RETENTION_DAYS + 1) * DAY_S)

    with node.intake._storing_series(ct.series_uid):  # a C-STORE of it in progress
        assert node.retention.tick() == 0
    assert len(spool_files(node, ct)) == 3
    assert node.retention.tick() == 1


def test_a_store_waits_while_its_series_is_being_purged(node: Node) -> None:
    ct = ct_series()
    result: list[list[int]] = []
    with node.intake.series_exclusive(ct.series_uid) as free:
        assert free
        sender = threading.Thread(target=lambda: result.append(send(node, ct)))
        sender.start()
        sender.join(1.0)
        assert sender.is_alive() and result == []  # held back, not refused
        assert spool_files(node, ct) == []
    sender.join(10.0)
    assert result == [[status.SUCCESS] * 3]
    assert len(spool_files(node, ct)) == 3


def test_delivery_rows_are_not_touched_by_a_purge(
    node: Node, clock: FakeClock, tmp_path: Path
) -> None:
    ct = ct_series()
    finish(node, clock, receive_and_complete(node, clock, ct), tmp_path)
    deliver(node, clock)
    clock.advance((RETENTION_DAYS + 1) * DAY_S)
    assert node.retention.tick() == 1
    with Session(node.db) as s:
        assert list(s.scalars(select(Delivery.state))) == ["sent"]
    assert node.store.jobs_by_state() == {"done": 1}


def test_spool_discard_stays_inside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    inside = spool.path_for("1.2", "1.2.3", "1.2.3.4")
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"x")
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x")

    assert spool.discard([inside, outside, spool.path_for("1.2", "1.2.3", "9.9")]) == 1
    assert not inside.exists() and not inside.parent.exists()
    assert inside.parent.parent.exists()  # the study folder stays
    assert outside.exists()


def test_retention_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, spool={"retention_days": -1}))
    assert "retention_days" in str(err.value)
    shipped = load_config(Path(__file__).resolve().parent.parent / "config" / "rtnode.yaml")
    assert shipped.config.spool.retention_days == 30


@pytest.mark.parametrize(("days", "scheduled"), [(30, True), (0, False)])
def test_the_scheduler_runs_retention_only_when_it_is_on(
    tmp_path: Path, clock: FakeClock, days: int, scheduled: bool
) -> None:
    n = make_node(write_config(tmp_path, spool={"retention_days": days}), clock)
    try:
        n._start_timers()
        job = n.scheduler.get_job("retention")
        assert (job is not None) == scheduled
        if job is not None:
            assert job.trigger.interval.total_seconds() == 3600
            assert job.func == n.retention.tick
    finally:
        n.stop()
