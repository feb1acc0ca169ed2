"""Spool retention in SQLite: which series may be purged, marking them, totals for status.

A series may be purged when it is complete, nothing happened to it after ``cutoff`` (last
instance, completion, job end, send), every job of it is done or skipped, and every
delivery of those jobs was sent. Everything else holds it: a pending, running, waiting or
failed job (``resend`` re-runs a failed job from the spool), a pending or dead-lettered
delivery. Purging is two steps so that a crash in between is finished at start-up:
:meth:`RetentionStore.mark_purging` (rows marked, state ``purging``), the files deleted,
then :meth:`RetentionStore.mark_purged`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from appliance.db import Delivery, DeliveryState, Instance, Job, JobState, Series, SeriesState
from appliance.store import transaction

FINISHED_JOB_STATES = (JobState.DONE, JobState.SKIPPED)
UNFINISHED_JOB_STATES = (JobState.PENDING, JobState.RUNNING, JobState.WAITING)


@dataclass(frozen=True)
class PurgeBatch:
    """The instances of one series marked purged, whose files are to be deleted."""

    series_uid: str
    study_uid: str
    patient_id: str
    paths: list[str]
    bytes: int
    last_activity: datetime | None


class RetentionStore:
    """Retention's operations, one short transaction each."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self._engine)

    def candidates(self, cutoff: datetime) -> list[str]:
        """Series UIDs that may be purged now (oldest activity first)."""
        with self._tx() as s:
            stmt = (
                select(Series.series_uid)
                .where(_purgeable(cutoff))
                .order_by(Series.last_received_at)
            )
            return list(s.scalars(stmt))

    def mark_purging(self, series_uid: str, cutoff: datetime, now: datetime) -> PurgeBatch | None:
        """Check the series again and mark it and its live instances purged.

        Returns None when it may no longer be purged (it changed since :meth:`candidates`).
        """
        with self._tx() as s:
            series = s.scalars(
                select(Series).where(Series.series_uid == series_uid, _purgeable(cutoff))
            ).first()
            if series is None:
                return None
            live = Instance.series_uid == series_uid, Instance.purged_at.is_(None)
            rows = s.execute(select(Instance.path, Instance.size_bytes).where(*live)).all()
            s.execute(update(Instance).where(*live).values(purged_at=now))
            series.state, series.purged_at, series.instance_count = SeriesState.PURGING, now, 0
            return PurgeBatch(
                series_uid=series.series_uid,
                study_uid=series.study_uid,
                patient_id=series.patient_id,
                paths=[str(path) for path, _ in rows],
                bytes=sum(int(size) for _, size in rows),
                last_activity=_last_activity(s, series),
            )

    def purging(self) -> list[PurgeBatch]:
        """Series left in state ``purging`` (a stop or crash before their files were gone)."""
        with self._tx() as s:
            rows = s.scalars(select(Series).where(Series.state == SeriesState.PURGING)).all()
            return [self._batch_of(s, series) for series in rows]

    def _batch_of(self, s: Session, series: Series) -> PurgeBatch:
        purged = s.execute(
            select(Instance.path, Instance.size_bytes).where(
                Instance.series_uid == series.series_uid, Instance.purged_at == series.purged_at
            )
        ).all()
        return PurgeBatch(
            series_uid=series.series_uid,
            study_uid=series.study_uid,
            patient_id=series.patient_id,
            paths=[str(path) for path, _ in purged],
            bytes=sum(int(size) for _, size in purged),
            last_activity=_last_activity(s, series),
        )

    def mark_purged(self, series_uid: str) -> None:
        """The files are gone: ``purging`` becomes ``purged`` (a new instance re-opens it)."""
        with self._tx() as s:
            series = s.get(Series, series_uid)
            if series is not None and series.state == SeriesState.PURGING:
                series.state = SeriesState.PURGED

    def summary(self, cutoff: datetime | None) -> dict[str, Any]:
        """Spool totals for ``rtnode status``; ``cutoff`` None when retention is off."""
        with self._tx() as s:
            held = _totals(s, Instance.purged_at.is_(None))
            purged = _totals(s, Instance.purged_at.is_not(None))
            last = s.scalar(select(func.max(Series.purged_at)))
            report: dict[str, Any] = {
                "held": held,
                "purged": purged,
                "last_purge": last.isoformat(timespec="seconds") if last else None,
            }
            if cutoff is not None:
                report["held_past_retention"] = dict(_held_reasons(s, cutoff))
        return report


# --------------------------------------------------------------------------- conditions


def _purgeable(cutoff: datetime) -> ColumnElement[bool]:
    """SQL: the series may be purged at ``cutoff`` (see the module docstring)."""
    blocking_job = exists().where(
        Job.series_uid == Series.series_uid,
        or_(
            Job.state.not_in(FINISHED_JOB_STATES),
            func.coalesce(Job.finished_at, Job.created_at) > cutoff,
        ),
    )
    blocking_delivery = exists().where(
        Delivery.job_id == Job.id,
        Job.series_uid == Series.series_uid,
        or_(Delivery.state != DeliveryState.SENT, Delivery.sent_at > cutoff),
    )
    return and_(
        Series.state == SeriesState.COMPLETE,
        Series.last_received_at <= cutoff,
        func.coalesce(Series.completed_at, Series.last_received_at) <= cutoff,
        ~blocking_job,
        ~blocking_delivery,
    )


def _held_reasons(s: Session, cutoff: datetime) -> Iterator[tuple[str, int]]:
    """Complete series older than ``cutoff`` that retention keeps, counted by reason."""
    old = and_(Series.state == SeriesState.COMPLETE, Series.last_received_at <= cutoff)
    reasons = {
        "unfinished job": exists().where(
            Job.series_uid == Series.series_uid, Job.state.in_(UNFINISHED_JOB_STATES)
        ),
        "failed job": exists().where(
            Job.series_uid == Series.series_uid, Job.state == JobState.FAILED
        ),
        "undelivered output": exists().where(
            Delivery.job_id == Job.id,
            Job.series_uid == Series.series_uid,
            Delivery.state != DeliveryState.SENT,
        ),
    }
    for reason, condition in reasons.items():
        count = s.scalar(select(func.count()).select_from(Series).where(old, condition))
        if count:
            yield reason, int(count)


def _totals(s: Session, condition: ColumnElement[bool]) -> dict[str, int]:
    count, size, series = s.execute(
        select(
            func.count(),
            func.coalesce(func.sum(Instance.size_bytes), 0),
            func.count(func.distinct(Instance.series_uid)),
        ).where(condition)
    ).one()
    return {"series": int(series), "instances": int(count), "bytes": int(size)}


def _last_activity(s: Session, series: Series) -> datetime | None:
    """The newest of: last instance, completion, job end, send."""
    job_end = s.scalar(
        select(func.max(func.coalesce(Job.finished_at, Job.created_at))).where(
            Job.series_uid == series.series_uid
        )
    )
    sent = s.scalar(
        select(func.max(Delivery.sent_at))
        .join(Job, Delivery.job_id == Job.id)
        .where(Job.series_uid == series.series_uid)
    )
    times = [series.last_received_at, series.completed_at, job_end, sent]
    return max((t for t in times if t is not None), default=None)
