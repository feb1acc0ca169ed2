"""A small typed event bus. Listeners' exceptions are logged, never raised."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base class: identifiers that let an auditor trace one case."""

    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    job_id: int | None = None


@dataclass(frozen=True)
class ConfigLoaded(Event):
    path: str = ""
    sha256: str = ""
    rules_sha256: str = ""
    rules: int = 0


@dataclass(frozen=True)
class AssociationRejected(Event):
    calling_ae: str = ""
    peer_host: str = ""
    reason: str = ""


@dataclass(frozen=True)
class StoreRefused(Event):
    calling_ae: str = ""
    sop_instance_uid: str = ""
    status: int = 0
    reason: str = ""


@dataclass(frozen=True)
class InstancesReceived(Event):
    """One batch: the instances of one series received on one association."""

    calling_ae: str = ""
    called_ae: str = ""
    modality: str = ""
    count: int = 0
    duplicates: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class SeriesCompleted(Event):
    instance_count: int = 0
    generation: int = 0


@dataclass(frozen=True)
class RuleMatched(Event):
    rule: str = ""
    pipeline: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NoRuleMatched(Event):
    modality: str = ""


@dataclass(frozen=True)
class JobStarted(Event):
    attempt: int = 0
    worker_pid: int = 0


@dataclass(frozen=True)
class JobFinished(Event):
    state: str = ""
    attempt: int = 0
    error: str = ""
    outputs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SendAttempted(Event):
    destination: str = ""
    attempt: int = 0
    ok: bool = False
    error: str = ""
    files: int = 0


@dataclass(frozen=True)
class DeliveryDeadLettered(Event):
    destination: str = ""
    attempts: int = 0
    error: str = ""


@dataclass(frozen=True)
class ResendRequested(Event):
    deliveries: int = 0
    job_requeued: bool = False


@dataclass(frozen=True)
class SpoolPurged(Event):
    """Retention deleted the spool files of one series (its index rows are kept, purged)."""

    instances: int = 0
    bytes: int = 0
    retention_days: float = 0.0
    last_activity: str = ""  # ISO time the retention period was counted from


@dataclass(frozen=True)
class NodeStarted(Event):
    ae_title: str = ""
    port: int = 0
    recovered_series: int = 0
    requeued_jobs: int = 0
    reindexed_instances: int = 0


@dataclass(frozen=True)
class NodeStopping(Event):
    reason: str = ""


@dataclass(frozen=True)
class ClinicalTextReceived(Event):
    """A clinical document was stored (its text is in the database, never in the audit)."""

    document_id: int = 0
    source: str = ""  # "SR <SOP Instance UID>", "PDF <SOP Instance UID>" or "submit-text"
    accession_number: str = ""
    chars: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class ClinicalTextRejected(Event):
    source: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ClinicalTextWaiting(Event):
    rule: str = ""
    wait_seconds: float = 0.0
    deadline: str = ""


@dataclass(frozen=True)
class ClinicalTextJoined(Event):
    """The job runs its full pipeline with these documents."""

    rule: str = ""
    document_ids: list[int] = field(default_factory=list)
    waited_s: float = 0.0


@dataclass(frozen=True)
class ClinicalTextMissingFallback(Event):
    """No text arrived in time: the job runs the rule's ``without_text`` pipeline."""

    rule: str = ""
    pipeline: list[str] = field(default_factory=list)
    waited_s: float = 0.0


@dataclass(frozen=True)
class ClinicalTextMissingSkipped(Event):
    """No text arrived in time and the rule's ``without_text`` is empty: nothing runs."""

    rule: str = ""
    waited_s: float = 0.0


@dataclass(frozen=True)
class ClinicalTextLate(Event):
    """A document arrived after a job of its case had taken the fallback (or was skipped)."""

    document_id: int = 0
    source: str = ""
    rule: str = ""
    outcome: str = ""
    rerun_job_id: int | None = None  # the new job that runs the full pipeline with the text


Listener = Callable[[Any], None]


class EventBus:
    """Publish events to the listeners subscribed to their type (or a base type)."""

    def __init__(self) -> None:
        self._listeners: dict[type[Event], list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event_type: type[Event], listener: Listener) -> None:
        with self._lock:
            self._listeners[event_type].append(listener)

    def publish(self, event: Event) -> None:
        for listener in self._listeners_for(type(event)):
            try:
                listener(event)
            except Exception:
                logger.exception("listener %r failed on %s", listener, type(event).__name__)

    def _listeners_for(self, event_type: type[Event]) -> list[Listener]:
        with self._lock:
            return [fn for t in event_type.__mro__ for fn in self._listeners.get(t, [])]
