"""What happens to one received instance: store durably, record, answer a status.

Nothing here decodes pixel data, runs inference or sends anything: the C-STORE handler
only writes, indexes and returns. Per-association batches are kept so that one audit
row is written per series per association, and the series' quiet-window timer is armed
when the association ends.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom.multival import MultiValue

from appliance.clock import Clock
from appliance.events import EventBus, InstancesReceived, StoreRefused
from appliance.store import DuplicateInstance, InstanceRecord, Store, StoreError
from dicom_node import status
from dicom_node.header import read_index_tags
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

SERIES_ATTRIBUTES = (
    "Modality",
    "SOPClassUID",
    "SeriesDescription",
    "StudyDescription",
    "BodyPartExamined",
    "ProtocolName",
    "AccessionNumber",
    "Manufacturer",
    "StationName",
    "SeriesNumber",
    "SliceThickness",
    "PatientPosition",
)
INDEX_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    *SERIES_ATTRIBUTES[2:],
    "Modality",
)


class Refused(Exception):
    """An instance is refused with a DICOM status and a reason for the audit."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass
class _Batch:
    study_uid: str
    patient_id: str
    modality: str
    count: int = 0
    duplicates: int = 0
    bytes: int = 0


@dataclass
class _AssocState:
    calling_ae: str
    called_ae: str
    series: dict[str, _Batch] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """What the C-STORE request told us, independent of pynetdicom's event type."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_ae: str
    called_ae: str
    assoc_key: int


class Intake:
    """Stores instances for the SCP and tracks per-association batches."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        bus: EventBus,
        clock: Clock,
        *,
        quiet_seconds: float,
        min_free_bytes: int,
    ) -> None:
        self._spool = spool
        self._store = store
        self._bus = bus
        self._clock = clock
        self._quiet = timedelta(seconds=quiet_seconds)
        self._min_free = min_free_bytes
        self._assocs: dict[int, _AssocState] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._storing: Counter[str] = Counter()  # series -> stores in progress
        self._purging: set[str] = set()  # series whose spool files retention is deleting

    def store(self, rx: Received) -> int:
        """Store one received file; returns the DICOM status for the peer."""
        try:
            return self._store_checked(rx)
        except Refused as exc:
            return self._refuse(rx, exc)
        except Exception as exc:  # a bug here must still answer the peer and be audited
            logger.exception("unexpected error storing %s", rx.sop_instance_uid)
            reason = f"internal error: {type(exc).__name__}"
            return self._refuse(rx, Refused(status.PROCESSING_FAILURE, reason))

    def _refuse(self, rx: Received, exc: Refused) -> int:
        rx.path.unlink(missing_ok=True)
        logger.warning("refused %s from %s: %s", rx.sop_instance_uid, rx.calling_ae, exc.reason)
        self._bus.publish(
            StoreRefused(
                calling_ae=rx.calling_ae,
                sop_instance_uid=rx.sop_instance_uid,
                status=exc.status_code,
                reason=exc.reason,
            )
        )
        return exc.status_code

    def _store_checked(self, rx: Received) -> int:
        if self._spool.free_bytes() < self._min_free:
            raise Refused(status.OUT_OF_RESOURCES, "free disk space below the configured watermark")
        header = _read_header(rx.path)
        rec = _record(header, rx)
        with self._storing_series(rec.series_uid):
            return self._store_record(rx, rec)

    def _store_record(self, rx: Received, rec: InstanceRecord) -> int:
        final = self._spool.path_for(rec.study_uid, rec.series_uid, rec.sop_instance_uid)
        if final.exists():  # the spool, not the index, is the source of truth
            return self._duplicate(rx, rec)
        self._commit(rx.path, final)
        try:
            self._store.add_instance(_with_path(rec, final), self._clock.now())
        except DuplicateInstance:
            return self._duplicate(rx, rec)
        except Exception as exc:  # not indexed: not acknowledged, so not kept either
            final.unlink(missing_ok=True)
            reason = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
            raise Refused(status.PROCESSING_FAILURE, f"index failed: {reason}") from exc
        self._count(rx, rec, duplicate=False)
        return status.SUCCESS

    def _commit(self, received: Path, final: Path) -> None:
        try:
            self._spool.commit(received, final)
        except OSError as exc:
            final.unlink(missing_ok=True)
            raise Refused(status.OUT_OF_RESOURCES, f"could not store: {exc.strerror}") from exc

    def _duplicate(self, rx: Received, rec: InstanceRecord) -> int:
        rx.path.unlink(missing_ok=True)
        self._count(rx, rec, duplicate=True)
        return status.SUCCESS

    def _count(self, rx: Received, rec: InstanceRecord, *, duplicate: bool) -> None:
        with self._lock:
            state = self._assocs.setdefault(rx.assoc_key, _AssocState(rx.calling_ae, rx.called_ae))
            batch = state.series.setdefault(
                rec.series_uid,
                _Batch(rec.study_uid, rec.patient_id, str(rec.attributes.get("Modality", ""))),
            )
            batch.duplicates += int(duplicate)
            batch.count += int(not duplicate)
            batch.bytes += 0 if duplicate else rec.size_bytes

    @contextmanager
    def _storing_series(self, series_uid: str) -> Iterator[None]:
        """Mark a store of ``series_uid`` in progress; waits while retention deletes it."""
        with self._changed:
            while series_uid in self._purging:
                self._changed.wait()
            self._storing[series_uid] += 1
        try:
            yield
        finally:
            with self._changed:
                self._storing[series_uid] -= 1
                if self._storing[series_uid] <= 0:
                    del self._storing[series_uid]

    @contextmanager
    def series_exclusive(self, series_uid: str) -> Iterator[bool]:
        """For retention: yields True and holds stores of ``series_uid`` back meanwhile.

        Yields False (and holds nothing) when the series is being received right now.
        """
        with self._changed:
            free = series_uid not in self._storing and not any(
                series_uid in st.series for st in self._assocs.values()
            )
            if free:
                self._purging.add(series_uid)
        try:
            yield free
        finally:
            if free:
                with self._changed:
                    self._purging.discard(series_uid)
                    self._changed.notify_all()

    def busy_series(self) -> set[str]:
        """Series that an open association is still sending."""
        with self._lock:
            return {uid for st in self._assocs.values() for uid in st.series}

    def association_closed(self, assoc_key: int) -> None:
        """Audit each series batch and arm its quiet-window timer."""
        with self._lock:
            state = self._assocs.get(assoc_key)
        if state is None:
            return
        deadline = self._clock.now() + self._quiet
        for series_uid, batch in state.series.items():
            if batch.count:
                self._store.schedule_completion(series_uid, deadline)
            self._bus.publish(
                InstancesReceived(
                    patient_id=batch.patient_id,
                    study_uid=batch.study_uid,
                    series_uid=series_uid,
                    calling_ae=state.calling_ae,
                    called_ae=state.called_ae,
                    modality=batch.modality,
                    count=batch.count,
                    duplicates=batch.duplicates,
                    bytes=batch.bytes,
                )
            )
        with self._lock:  # only now: until the timer is armed the series counts as busy
            self._assocs.pop(assoc_key, None)


def _read_header(path: Path) -> dict[str, Any]:
    """The indexed tags of ``path`` (fast scan, or pydicom when the scan cannot tell)."""
    fast = read_index_tags(path, INDEX_TAGS)
    if fast is not None:
        return fast
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
    except Exception as exc:  # pydicom raises many types on malformed input
        raise Refused(
            status.CANNOT_UNDERSTAND, f"unreadable dataset: {type(exc).__name__}"
        ) from exc
    return {k: _plain(ds.get(k)) for k in INDEX_TAGS if ds.get(k) is not None}


def _record(header: dict[str, Any], rx: Received) -> InstanceRecord:
    uids = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    missing = [k for k in uids if not header.get(k)]
    if missing:
        raise Refused(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"missing {', '.join(missing)}")
    if header["SOPInstanceUID"] != rx.sop_instance_uid:
        raise Refused(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from request"
        )
    if header.get("SOPClassUID") and header["SOPClassUID"] != rx.sop_class_uid:
        raise Refused(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from request")
    attrs: dict[str, Any] = {k: header[k] for k in SERIES_ATTRIBUTES if k in header}
    attrs["SOPClassUID"] = rx.sop_class_uid
    attrs["CallingAETitle"] = rx.calling_ae
    attrs["CalledAETitle"] = rx.called_ae
    return InstanceRecord(
        sop_instance_uid=rx.sop_instance_uid,
        sop_class_uid=rx.sop_class_uid,
        study_uid=str(header["StudyInstanceUID"]),
        series_uid=str(header["SeriesInstanceUID"]),
        patient_id=str(header.get("PatientID", "") or ""),
        transfer_syntax=rx.transfer_syntax,
        path=str(rx.path),
        size_bytes=rx.path.stat().st_size,
        calling_ae=rx.calling_ae,
        attributes=attrs,
    )


def _with_path(rec: InstanceRecord, final: Path) -> InstanceRecord:
    return InstanceRecord(**{**rec.__dict__, "path": str(final)})


def _plain(value: Any) -> str:
    """The value as the fast scan reports it: text, multiple values joined by '\\'."""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)
