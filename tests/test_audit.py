from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from appliance.audit import AuditFilter, AuditLog
from appliance.clock import FakeClock
from appliance.db import create_engine, migrate
from appliance.events import EventBus, JobFinished, SeriesCompleted


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    engine = create_engine(tmp_path / "db.sqlite3")
    migrate(engine)
    return AuditLog(engine, FakeClock())


def _fill(audit: AuditLog, n: int = 5) -> None:
    for i in range(n):
        audit.append("test_event", {"i": i}, patient_id=f"P{i % 2}", study_uid="1.2.3", job_id=i)


def test_chain_verifies(audit: AuditLog) -> None:
    _fill(audit)
    assert audit.verify() == (5, [])


def test_events_become_rows_via_the_bus(audit: AuditLog) -> None:
    bus = EventBus()
    audit.bind(bus)
    bus.publish(
        SeriesCompleted(patient_id="P1", study_uid="1.2", series_uid="1.2.3", instance_count=7)
    )
    bus.publish(JobFinished(job_id=4, state="failed", error="worker process died (exit code -11)"))
    rows = audit.query(AuditFilter())
    assert [r.event for r in rows] == ["series_completed", "job_finished"]
    assert rows[0].patient_id == "P1" and '"instance_count": 7' in rows[0].detail
    assert rows[1].job_id == 4


def test_filters(audit: AuditLog) -> None:
    _fill(audit, 6)
    assert len(audit.query(AuditFilter(patient_id="P1"))) == 3
    assert len(audit.query(AuditFilter(limit=2))) == 2
    assert audit.query(AuditFilter(study_uid="9.9")) == []


def test_database_refuses_update_and_delete(audit: AuditLog, tmp_path: Path) -> None:
    _fill(audit)
    con = sqlite3.connect(tmp_path / "db.sqlite3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit SET detail='{}' WHERE id=2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit WHERE id=2")


def _tamper(db: Path, sql: str) -> None:
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER audit_no_update")
    con.execute("DROP TRIGGER audit_no_delete")
    con.execute(sql)
    con.commit()
    con.close()


def test_edited_row_is_detected(audit: AuditLog, tmp_path: Path) -> None:
    _fill(audit)
    _tamper(tmp_path / "db.sqlite3", "UPDATE audit SET patient_id='SOMEONE' WHERE id=3")
    _, problems = audit.verify()
    assert [p.row_id for p in problems] == [3]
    assert "edited" in problems[0].message


def test_deleted_row_is_detected(audit: AuditLog, tmp_path: Path) -> None:
    _fill(audit)
    _tamper(tmp_path / "db.sqlite3", "DELETE FROM audit WHERE id=3")
    _, problems = audit.verify()
    assert {p.row_id for p in problems} == {4}
    assert any("missing" in p.message for p in problems)


def test_listener_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    def broken(_event: object) -> None:
        raise RuntimeError("listener bug")

    seen: list[object] = []
    bus.subscribe(SeriesCompleted, broken)
    bus.subscribe(SeriesCompleted, seen.append)
    bus.publish(SeriesCompleted())
    assert len(seen) == 1
    assert "listener" in caplog.text


def test_no_update_path_in_code() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in (root / "appliance").rglob("*.py"):
        text = path.read_text()
        if "migrations" in path.parts:
            continue
        assert "update(AuditEntry" not in text and "delete(AuditEntry" not in text, path


def test_db_errors_become_domain_errors(tmp_path: Path) -> None:
    from appliance.store import Store, StoreError

    engine = create_engine(tmp_path / "empty.sqlite3")  # not migrated: no tables
    with pytest.raises(StoreError):
        Store(engine).jobs_by_state()
    assert issubclass(StoreError, Exception) and not issubclass(StoreError, DBAPIError)
