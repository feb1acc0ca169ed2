"""The node's state in SQLite: one short transaction per operation.

Back-end errors become domain errors (:class:`DuplicateInstance`, :class:`StoreError`),
so callers never see SQLAlchemy exceptions.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from appliance.db import Delivery, DeliveryState, Instance, Job, JobState, Series, SeriesState

logger = logging.getLogger(__name__)


# A new instance, or one whose spool file retention deleted (received again: it lives
# again). A live row is left alone and changes nothing: the caller sees a duplicate.
_INSERT_INSTANCE_SQL = (
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id,"
    " transfer_syntax, path, size_bytes, calling_ae, received_at) VALUES (:sop_instance_uid,"
    " :sop_class_uid, :study_uid, :series_uid, :patient_id, :transfer_syntax, :path,"
    " :size_bytes, :calling_ae, :received_at) ON CONFLICT (sop_instance_uid) DO UPDATE SET"
    " sop_class_uid = excluded.sop_class_uid, study_uid = excluded.study_uid,"
    " series_uid = excluded.series_uid, patient_id = excluded.patient_id,"
    " transfer_syntax = excluded.transfer_syntax, path = excluded.path,"
    " size_bytes = excluded.size_bytes, calling_ae = excluded.calling_ae,"
    " received_at = excluded.received_at, purged_at = NULL"
    " WHERE instances.purged_at IS NOT NULL"
)
_UPSERT_SERIES_SQL = (
    "INSERT INTO series (series_uid, study_uid, patient_id, attributes, state, complete_at,"
    " instance_count, generation, first_received_at, last_received_at) VALUES (:series_uid,"
    f" :study_uid, :patient_id, :attributes, '{SeriesState.RECEIVING}', NULL, 1, 0,"
    " :received_at, :received_at) ON CONFLICT (series_uid) DO UPDATE SET"
    f" state = '{SeriesState.RECEIVING}', complete_at = NULL,"
    " instance_count = instance_count + 1, last_received_at = :received_at"
)


class StoreError(Exception):
    """The database could not complete an operation."""


class DuplicateInstance(StoreError):
    """An instance with this SOP Instance UID is already stored."""


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    transfer_syntax: str
    path: str
    size_bytes: int
    calling_ae: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobView:
    id: int
    series_uid: str
    study_uid: str
    patient_id: str
    rule_name: str
    pipeline: list[str]
    destinations: list[str]
    state: str
    attempts: int
    max_attempts: int
    last_error: str
    outputs: list[str]
    notes: list[str]
    clinical_document_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DeliveryView:
    id: int
    job_id: int
    destination: str
    attempts: int
    outputs: list[str]
    patient_id: str
    study_uid: str
    series_uid: str


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        series_uid=job.series_uid,
        study_uid=job.study_uid,
        patient_id=job.patient_id,
        rule_name=job.rule_name,
        pipeline=list(job.pipeline),
        destinations=list(job.destinations),
        state=job.state,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
        outputs=list(job.outputs or []),
        notes=list(job.notes or []),
        clinical_document_ids=list(job.clinical_document_ids or []),
    )


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One short transaction; back-end errors become :class:`StoreError` subclasses."""
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except IntegrityError as exc:
        raise DuplicateInstance(str(exc.orig)) from exc
    except SQLAlchemyError as exc:
        raise StoreError(str(exc)) from exc


class Store:
    """Typed operations on instances, series, jobs and deliveries."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._intake_lock = threading.Lock()
        self._intake_conn: Any = None  # the DB-API connection add_instance keeps

    def close(self) -> None:
        """Give back the connection :meth:`add_instance` keeps (before disposing the engine)."""
        with self._intake_lock:
            if self._intake_conn is not None:
                self._intake_conn.close()
                self._intake_conn = None

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self._engine)

    # -- instances and series -------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self._tx() as s:
            return s.get(Instance, sop_instance_uid) is not None

    def known_paths(self) -> set[str]:
        """Spool paths of the indexed instances whose files retention has not deleted."""
        with self._tx() as s:
            return set(s.scalars(select(Instance.path).where(Instance.purged_at.is_(None))))

    def add_instance(self, rec: InstanceRecord, now: datetime) -> None:
        """Index a stored instance and (re)open its series; raises DuplicateInstance.

        This runs once per received instance before the C-STORE status goes back, so it
        runs two fixed SQL statements in one ``BEGIN IMMEDIATE`` transaction on a
        DB-API connection kept for it (one of the engine's pooled connections, with the
        same pragmas) instead of through SQLAlchemy: 0.17-0.27 ms instead of 0.6-0.8 ms per
        instance in the running node. Calls are serialised by a lock (SQLite has one
        writer anyway).
        """
        values = {**_instance_values(rec, now), "attributes": json.dumps(rec.attributes)}
        with self._intake_lock:
            try:
                conn = self._intake_connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute(_INSERT_INSTANCE_SQL, values).rowcount == 0:
                        raise DuplicateInstance(rec.sop_instance_uid)
                    conn.execute(_UPSERT_SERIES_SQL, values)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise DuplicateInstance(rec.sop_instance_uid) from exc
            except (sqlite3.Error, SQLAlchemyError) as exc:
                self._drop_intake_connection()
                raise StoreError(str(exc)) from exc

    def _intake_connection(self) -> Any:
        if self._intake_conn is None:
            self._intake_conn = self._engine.raw_connection()
        return self._intake_conn.driver_connection

    def _drop_intake_connection(self) -> None:
        if self._intake_conn is not None:
            try:
                self._intake_conn.invalidate()
            finally:
                self._intake_conn = None

    def schedule_completion(self, series_uid: str, at: datetime) -> None:
        """Arm (or re-arm) the quiet-window timer of a receiving series."""
        with self._tx() as s:
            series = s.get(Series, series_uid)
            if series is not None and series.state == SeriesState.RECEIVING:
                series.complete_at = at

    def arm_orphan_series(self, at: datetime) -> int:
        """After a restart: receiving series without a timer get one. Returns count."""
        with self._tx() as s:
            rows = s.scalars(
                select(Series).where(
                    Series.state == SeriesState.RECEIVING, Series.complete_at.is_(None)
                )
            ).all()
            for series in rows:
                series.complete_at = at
            return len(rows)

    def due_series(self, now: datetime, busy: set[str]) -> list[str]:
        with self._tx() as s:
            uids = s.scalars(
                select(Series.series_uid).where(
                    Series.state == SeriesState.RECEIVING, Series.complete_at <= now
                )
            ).all()
        return [u for u in uids if u not in busy]

    def complete_series(self, series_uid: str, now: datetime) -> dict[str, Any] | None:
        """Mark complete; returns its attributes (None if no longer due)."""
        with self._tx() as s:
            series = s.get(Series, series_uid)
            if series is None or series.state != SeriesState.RECEIVING:
                return None
            series.state = SeriesState.COMPLETE
            series.complete_at = None
            series.completed_at = now
            series.generation += 1
            return {
                **series.attributes,
                "SeriesInstanceUID": series.series_uid,
                "StudyInstanceUID": series.study_uid,
                "PatientID": series.patient_id,
                "InstanceCount": series.instance_count,
                "_generation": series.generation,
            }

    def series_files(self, series_uid: str) -> list[str]:
        """Spool paths of the series' instances (not those retention purged)."""
        with self._tx() as s:
            stmt = select(Instance.path).where(
                Instance.series_uid == series_uid, Instance.purged_at.is_(None)
            )
            return list(s.scalars(stmt))

    def recent_series(self, limit: int = 10) -> list[Series]:
        with self._tx() as s:
            stmt = select(Series).order_by(Series.last_received_at.desc()).limit(limit)
            return list(s.scalars(stmt))

    def count_series(self) -> dict[str, int]:
        with self._tx() as s:
            rows = s.execute(select(Series.state, func.count()).group_by(Series.state)).all()
            return {state: int(n) for state, n in rows}

    # -- jobs -------------------------------------------------------------------

    def create_job(
        self,
        attrs: dict[str, Any],
        rule: str,
        pipeline: list[str],
        dests: list[str],
        max_attempts: int,
        now: datetime,
    ) -> int:
        with self._tx() as s:
            job = Job(
                series_uid=attrs["SeriesInstanceUID"],
                study_uid=attrs["StudyInstanceUID"],
                patient_id=attrs.get("PatientID", ""),
                rule_name=rule,
                pipeline=pipeline,
                destinations=dests,
                state=JobState.PENDING,
                attempts=0,
                max_attempts=max_attempts,
                last_error="",
                outputs=[],
                notes=[],
                created_at=now,
            )
            s.add(job)
            s.flush()
            return job.id

    def claim_job(self, now: datetime) -> JobView | None:
        """Take the oldest pending job: state running, one more attempt."""
        with self._tx() as s:
            job = s.scalars(
                select(Job).where(Job.state == JobState.PENDING).order_by(Job.id).limit(1)
            ).first()
            if job is None:
                return None
            job.state = JobState.RUNNING
            job.attempts += 1
            job.started_at = now
            return job_view(job)

    def finish_job(
        self,
        job_id: int,
        outputs: list[str],
        notes: list[str],
        now: datetime,
        delivery_at: datetime,
    ) -> JobView:
        """Mark done and create one pending delivery per destination."""
        with self._tx() as s:
            job = _get_job(s, job_id)
            job.state, job.outputs, job.notes = JobState.DONE, outputs, notes
            job.finished_at, job.last_error = now, ""
            for dest in job.destinations if outputs else []:
                s.add(
                    Delivery(
                        job_id=job.id,
                        destination=dest,
                        state=DeliveryState.PENDING,
                        attempts=0,
                        next_attempt_at=delivery_at,
                        last_error="",
                    )
                )
            return job_view(job)

    def fail_job(self, job_id: int, error: str, now: datetime, *, permanent: bool) -> JobView:
        """Record a failed attempt: back to pending, or failed when out of attempts."""
        with self._tx() as s:
            job = _get_job(s, job_id)
            job.last_error = error[:2000]
            exhausted = permanent or job.attempts >= job.max_attempts
            job.state = JobState.FAILED if exhausted else JobState.PENDING
            if exhausted:
                job.finished_at = now
            return job_view(job)

    def requeue_interrupted_jobs(self) -> int:
        """After a restart, jobs left running go back to pending (or fail if exhausted)."""
        with self._tx() as s:
            jobs = s.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
            for job in jobs:
                job.last_error = "node stopped while the job was running"
                job.state = JobState.PENDING if job.attempts < job.max_attempts else JobState.FAILED
            return len(jobs)

    def get_job(self, job_id: int) -> JobView | None:
        with self._tx() as s:
            job = s.get(Job, job_id)
            return job_view(job) if job else None

    def jobs_by_state(self) -> dict[str, int]:
        with self._tx() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            return {state: int(n) for state, n in rows}

    def recent_jobs(self, limit: int = 10, state: str | None = None) -> list[JobView]:
        with self._tx() as s:
            stmt = select(Job).order_by(Job.id.desc()).limit(limit)
            if state:
                stmt = stmt.where(Job.state == state)
            return [job_view(j) for j in s.scalars(stmt)]

    # -- deliveries -------------------------------------------------------------

    def due_deliveries(self, now: datetime) -> list[DeliveryView]:
        with self._tx() as s:
            rows = s.execute(
                select(Delivery, Job)
                .join(Job, Delivery.job_id == Job.id)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at)
            ).all()
            return [_delivery_view(d, j) for d, j in rows]

    def delivery_sent(self, delivery_id: int, now: datetime) -> None:
        with self._tx() as s:
            d = s.get(Delivery, delivery_id)
            if d is not None:
                d.state, d.sent_at, d.attempts, d.last_error = (
                    DeliveryState.SENT,
                    now,
                    d.attempts + 1,
                    "",
                )

    def delivery_failed(
        self, delivery_id: int, error: str, retry_at: datetime | None
    ) -> tuple[int, bool]:
        """Record a failed send. ``retry_at`` None means dead-letter. Returns (attempts, dead)."""
        with self._tx() as s:
            d = s.get(Delivery, delivery_id)
            if d is None:
                return 0, False
            d.attempts += 1
            d.last_error = error[:2000]
            if retry_at is None:
                d.state = DeliveryState.DEAD
            else:
                d.next_attempt_at = retry_at
            return d.attempts, d.state == DeliveryState.DEAD

    def delivery_attempts(self, delivery_id: int) -> int:
        with self._tx() as s:
            d = s.get(Delivery, delivery_id)
            return d.attempts if d else 0

    def requeue(self, job_id: int, now: datetime) -> tuple[int, bool]:
        """``resend``: dead deliveries back to pending; a failed job back to pending.

        Returns (deliveries re-queued, job re-queued).
        """
        with self._tx() as s:
            job = _get_job(s, job_id)
            dead = s.scalars(
                select(Delivery).where(
                    Delivery.job_id == job_id, Delivery.state == DeliveryState.DEAD
                )
            ).all()
            for d in dead:
                d.state, d.attempts, d.next_attempt_at = DeliveryState.PENDING, 0, now
            job_requeued = job.state == JobState.FAILED
            if job_requeued:
                job.state, job.attempts, job.finished_at = JobState.PENDING, 0, None
            return len(dead), job_requeued

    def delivery_summary(self) -> dict[str, dict[str, int]]:
        with self._tx() as s:
            rows = s.execute(
                select(Delivery.destination, Delivery.state, func.count()).group_by(
                    Delivery.destination, Delivery.state
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for dest, state, n in rows:
            out.setdefault(dest, {})[state] = int(n)
        return out

    def dead_deliveries(self, limit: int = 10) -> list[Delivery]:
        with self._tx() as s:
            stmt = (
                select(Delivery)
                .where(Delivery.state == DeliveryState.DEAD)
                .order_by(Delivery.id.desc())
                .limit(limit)
            )
            return list(s.scalars(stmt))

    def pending_deliveries(self, limit: int = 10) -> list[Delivery]:
        with self._tx() as s:
            stmt = (
                select(Delivery)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.attempts > 0)
                .order_by(Delivery.id.desc())
                .limit(limit)
            )
            return list(s.scalars(stmt))


def _instance_values(rec: InstanceRecord, now: datetime) -> dict[str, Any]:
    return {
        "sop_instance_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "study_uid": rec.study_uid,
        "series_uid": rec.series_uid,
        "patient_id": rec.patient_id,
        "transfer_syntax": rec.transfer_syntax,
        "path": rec.path,
        "size_bytes": rec.size_bytes,
        "calling_ae": rec.calling_ae,
        "received_at": now.strftime("%Y-%m-%d %H:%M:%S.%f"),  # SQLAlchemy's SQLite format
    }


def _get_job(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise StoreError(f"no job {job_id}")
    return job


def _delivery_view(d: Delivery, job: Job) -> DeliveryView:
    return DeliveryView(
        id=d.id,
        job_id=d.job_id,
        destination=d.destination,
        attempts=d.attempts,
        outputs=list(job.outputs or []),
        patient_id=job.patient_id,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
    )


def backoff_delay(attempts: int, initial_s: float, max_s: float) -> timedelta:
    """Exponential backoff after ``attempts`` failures: initial * 2**(attempts-1), capped."""
    return timedelta(seconds=min(max_s, initial_s * 2 ** max(0, attempts - 1)))
