"""Spool retention: delete received instances once their series is finished and old.

Run by the node's scheduler every ``spool.purge_interval_minutes`` (``spool.retention_days``
0 turns it off). For each series :class:`~appliance.retention_store.RetentionStore` allows,
while the intake holds stores of that series back: its rows are marked purged, its files
deleted, it is marked ``purged`` and one ``spool_purged`` audit row records the series,
instance count and bytes. A later instance of the series re-opens it as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.config import SpoolSettings
from appliance.events import EventBus, SpoolPurged
from appliance.retention_store import PurgeBatch, RetentionStore
from appliance.store import StoreError
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

# ``Intake.series_exclusive``: yields False while the series is being received.
Exclusive = Callable[[str], AbstractContextManager[bool]]


def _always_free(_series_uid: str) -> AbstractContextManager[bool]:
    return nullcontext(True)


class Retention:
    """Purges the spool of series past retention; see the module docstring."""

    def __init__(
        self,
        store: RetentionStore,
        spool: Spool,
        bus: EventBus,
        clock: Clock,
        settings: SpoolSettings,
        *,
        exclusive: Exclusive = _always_free,
    ) -> None:
        self._store = store
        self._spool = spool
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._exclusive = exclusive

    @property
    def enabled(self) -> bool:
        return self._settings.retention_days > 0

    def cutoff(self) -> datetime | None:
        """Series whose last activity is at or before this may be purged (None: off)."""
        return retention_cutoff(self._settings, self._clock.now())

    def tick(self) -> int:
        """Purge every series that may be purged now; returns how many were."""
        cutoff = self.cutoff()
        if cutoff is None:
            return 0
        purged = 0
        for series_uid in self._store.candidates(cutoff):
            try:
                purged += self._purge_one(series_uid, cutoff)
            except (OSError, StoreError):  # one series must not stop the others
                logger.exception("retention: could not purge series %s", series_uid)
        if purged:
            logger.info("retention: purged %d series older than %s", purged, cutoff)
        return purged

    def _purge_one(self, series_uid: str, cutoff: datetime) -> int:
        with self._exclusive(series_uid) as free:
            if not free:  # being received right now: not finished after all
                return 0
            batch = self._store.mark_purging(series_uid, cutoff, self._clock.now())
            if batch is None:
                return 0
            self._delete(batch)
        return 1

    def finish_interrupted(self) -> int:
        """At start-up, before the SCP listens: finish purges a stop or crash cut short."""
        batches = self._store.purging()
        for batch in batches:
            self._delete(batch)
        return len(batches)

    def _delete(self, batch: PurgeBatch) -> None:
        self._spool.discard([Path(p) for p in batch.paths])
        self._bus.publish(
            SpoolPurged(
                patient_id=batch.patient_id,
                study_uid=batch.study_uid,
                series_uid=batch.series_uid,
                instances=len(batch.paths),
                bytes=batch.bytes,
                retention_days=self._settings.retention_days,
                last_activity=batch.last_activity.isoformat() if batch.last_activity else "",
            )
        )
        self._store.mark_purged(batch.series_uid)


def retention_cutoff(settings: SpoolSettings, now: datetime) -> datetime | None:
    """``now`` minus the retention period; None when retention is off."""
    if settings.retention_days <= 0:
        return None
    return now - timedelta(days=settings.retention_days)


def spool_report(store: RetentionStore, settings: SpoolSettings, now: datetime) -> dict[str, Any]:
    """The spool part of ``rtnode status``: setting, held and purged totals, what is kept."""
    return {
        "retention_days": settings.retention_days,
        "purge_interval_minutes": settings.purge_interval_minutes,
        **store.summary(retention_cutoff(settings, now)),
    }


def format_spool(report: dict[str, Any]) -> list[str]:
    """Lines for the terminal."""
    days = report["retention_days"]
    setting = f"retention {days:g} days" if days > 0 else "retention off (kept forever)"
    held, purged = report["held"], report["purged"]
    lines = [
        f"spool:        {setting}; held {held['instances']} instances in {held['series']} "
        f"series ({_mib(held['bytes'])})",
        f"  purged {purged['instances']} instances in {purged['series']} series "
        f"({_mib(purged['bytes'])}), last {report['last_purge'] or 'never'}",
    ]
    kept = report.get("held_past_retention") or {}
    if kept:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(kept.items()))
        lines.append(f"  kept past retention (series): {reasons}")
    return lines


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
