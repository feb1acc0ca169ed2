"""The append-only, hash-chained audit log.

Each row's hash is ``sha256(prev_hash + canonical JSON of the row)``. Rows are only
ever inserted (the database also refuses UPDATE and DELETE with triggers), and
:meth:`AuditLog.verify` recomputes the chain, so an edited or deleted row is found.
Rows carry identifiers needed to trace a case, never pixel data or free text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.clock import Clock
from appliance.db import AuditEntry
from appliance.events import Event, EventBus

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_ID_FIELDS = ("patient_id", "study_uid", "series_uid", "job_id")


@dataclass(frozen=True)
class AuditFilter:
    patient_id: str | None = None
    study_uid: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


@dataclass(frozen=True)
class ChainProblem:
    row_id: int
    message: str


def row_digest(prev_hash: str, fields: dict[str, Any]) -> str:
    """The hash of one row given the previous row's hash."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def _hashed_fields(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "ts": entry.ts,
        "event": entry.event,
        "patient_id": entry.patient_id,
        "study_uid": entry.study_uid,
        "series_uid": entry.series_uid,
        "job_id": entry.job_id,
        "detail": entry.detail,
    }


class AuditLog:
    """Appends rows and verifies the chain. Safe across threads and processes."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def append(self, event: str, detail: dict[str, Any] | None = None, **ids: Any) -> int:
        """Insert one row; returns its id."""
        with Session(self._engine) as session, session.begin():
            last = session.scalars(
                select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)
            ).first()
            entry = AuditEntry(
                id=(last.id + 1) if last else 1,
                ts=self._clock.now().isoformat(timespec="microseconds"),
                event=event,
                patient_id=str(ids.get("patient_id") or ""),
                study_uid=str(ids.get("study_uid") or ""),
                series_uid=str(ids.get("series_uid") or ""),
                job_id=ids.get("job_id"),
                detail=json.dumps(detail or {}, sort_keys=True, default=str),
                prev_hash=last.hash if last else GENESIS,
            )
            entry.hash = row_digest(entry.prev_hash, _hashed_fields(entry))
            session.add(entry)
            return entry.id

    def record(self, event: Event) -> None:
        """Event-bus listener: one row per event, named after the event class."""
        fields = dataclasses.asdict(event)
        ids = {k: fields.pop(k) for k in _ID_FIELDS}
        self.append(_event_name(type(event)), fields, **ids)

    def bind(self, bus: EventBus) -> None:
        bus.subscribe(Event, self.record)

    def query(self, flt: AuditFilter) -> list[AuditEntry]:
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(flt.limit)
        if flt.patient_id:
            stmt = stmt.where(AuditEntry.patient_id == flt.patient_id)
        if flt.study_uid:
            stmt = stmt.where(AuditEntry.study_uid == flt.study_uid)
        if flt.event:
            stmt = stmt.where(AuditEntry.event == flt.event)
        if flt.since:
            stmt = stmt.where(AuditEntry.ts >= flt.since.isoformat(timespec="microseconds"))
        if flt.until:
            stmt = stmt.where(AuditEntry.ts <= flt.until.isoformat(timespec="microseconds"))
        with Session(self._engine) as session:
            rows = list(session.scalars(stmt))
            session.expunge_all()
        return list(reversed(rows))

    def verify(self) -> tuple[int, list[ChainProblem]]:
        """Recompute the chain; returns (rows checked, problems found)."""
        problems: list[ChainProblem] = []
        prev_hash, expected_id, count = GENESIS, 1, 0
        for entry in self._iter_rows():
            count += 1
            if entry.id != expected_id:
                problems.append(
                    ChainProblem(entry.id, f"rows {expected_id}..{entry.id - 1} missing")
                )
            if entry.prev_hash != prev_hash:
                problems.append(ChainProblem(entry.id, "previous-hash link broken (row deleted?)"))
            if row_digest(entry.prev_hash, _hashed_fields(entry)) != entry.hash:
                problems.append(
                    ChainProblem(entry.id, "row content does not match its hash (edited)")
                )
            prev_hash, expected_id = entry.hash, entry.id + 1
        return count, problems

    def _iter_rows(self) -> Iterator[AuditEntry]:
        with Session(self._engine) as session:
            yield from session.scalars(
                select(AuditEntry).order_by(AuditEntry.id).execution_options(yield_per=1000)
            )


def _event_name(event_type: type[Event]) -> str:
    name = event_type.__name__
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))
