"""Sending results to destinations: retries with exponential backoff, then dead letter."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.config import DeliverySettings, Destination
from appliance.events import DeliveryDeadLettered, EventBus, SendAttempted
from appliance.store import DeliveryView, Store, backoff_delay
from dicom_node.scu import SendError, SendResult, send_files

logger = logging.getLogger(__name__)

Sender = Callable[[str, Destination, list[Path]], SendResult]


class DeliveryManager:
    """Attempts every due delivery once per :meth:`tick`."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Clock,
        settings: DeliverySettings,
        destinations: dict[str, Destination],
        calling_ae: str,
        sender: Sender = send_files,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._destinations = destinations
        self._calling_ae = calling_ae
        self._sender = sender

    def tick(self) -> int:
        """Try all deliveries whose time has come; returns how many were attempted."""
        due = self._store.due_deliveries(self._clock.now())
        for delivery in due:
            self._attempt(delivery)
        return len(due)

    def _attempt(self, d: DeliveryView) -> None:
        dest = self._destinations.get(d.destination)
        error = self._send(dest, d) if dest else f"destination {d.destination!r} is not configured"
        ids: dict[str, Any] = {
            "patient_id": d.patient_id,
            "study_uid": d.study_uid,
            "series_uid": d.series_uid,
            "job_id": d.job_id,
        }
        if not error:
            self._store.delivery_sent(d.id, self._clock.now())
            self._bus.publish(
                SendAttempted(
                    **ids,
                    destination=d.destination,
                    attempt=d.attempts + 1,
                    ok=True,
                    files=len(d.outputs),
                )
            )
            return
        attempts, dead = self._store.delivery_failed(d.id, error, self._retry_at(d.attempts + 1))
        self._bus.publish(
            SendAttempted(
                **ids,
                destination=d.destination,
                attempt=attempts,
                ok=False,
                error=error,
                files=len(d.outputs),
            )
        )
        if dead:
            logger.error(
                "delivery %d of job %d to %s dead-lettered: %s",
                d.id,
                d.job_id,
                d.destination,
                error,
            )
            self._bus.publish(
                DeliveryDeadLettered(
                    **ids, destination=d.destination, attempts=attempts, error=error
                )
            )

    def _send(self, dest: Destination, d: DeliveryView) -> str:
        try:
            result = self._sender(self._calling_ae, dest, [Path(p) for p in d.outputs])
        except (SendError, OSError) as exc:
            return str(exc)
        return "; ".join(result.failures)

    def _retry_at(self, attempts: int) -> datetime | None:
        if attempts >= self._settings.max_attempts:
            return None
        delay = backoff_delay(
            attempts, self._settings.backoff_initial_s, self._settings.backoff_max_s
        )
        return self._clock.now() + delay
