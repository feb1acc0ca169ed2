"""Clinical text on the node: intake of SR/PDF documents and joining them to CT jobs.

Runs where series completion runs (the scheduler's completion tick), never in an
association thread:

* :meth:`ClinicalText.ingest_series`: a completed SR or Encapsulated PDF series has its
  text extracted (:mod:`dicom_node.text_extract`) and stored; a bad document is audited
  as ``clinical_text_rejected`` and the node goes on.
* :meth:`ClinicalText.create_job`: a rule with ``clinical_text`` creates a job that runs
  at once when text for its case is already there, or else waits (in SQLite, so a
  restart keeps the wait and its deadline).
* :meth:`ClinicalText.tick`: documents not yet seen (from SR/PDF, or written by
  ``rtnode submit-text`` from another process) join the waiting jobs of their case;
  then waits past their deadline take the rule's ``without_text`` pipeline or are
  skipped. A document arriving after that is audited as ``clinical_text_late``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.clinical_store import (
    ClinicalStore,
    DuplicateDocument,
    JoinResult,
    NewDocument,
)
from appliance.clock import Clock
from appliance.db import JobState, TextOutcome
from appliance.events import (
    ClinicalTextJoined,
    ClinicalTextLate,
    ClinicalTextMissingFallback,
    ClinicalTextMissingSkipped,
    ClinicalTextReceived,
    ClinicalTextRejected,
    ClinicalTextWaiting,
    EventBus,
)
from appliance.store import JobView, StoreError
from dicom_node.text_extract import TEXT_SOP_CLASSES, ExtractedText, TextExtractionError
from rules.schema import Rule

logger = logging.getLogger(__name__)


def job_ids(job: JobView) -> dict[str, Any]:
    return {
        "patient_id": job.patient_id,
        "study_uid": job.study_uid,
        "series_uid": job.series_uid,
        "job_id": job.id,
    }


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ClinicalText:
    """Document intake and the wait/join/fallback logic of jobs that need text."""

    def __init__(
        self,
        store: ClinicalStore,
        bus: EventBus,
        clock: Clock,
        series_files: Callable[[str], list[str]],
        rule_for: Callable[[str], Rule | None] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._series_files = series_files
        self._rule_for = rule_for or (lambda _name: None)

    # -- intake -----------------------------------------------------------------

    def ingest_series(self, attrs: dict[str, Any]) -> int:
        """Store the text of every new document of a completed SR/PDF series; returns count."""
        if str(attrs.get("SOPClassUID", "")) not in TEXT_SOP_CLASSES:
            return 0
        stored = 0
        for path in sorted(self._series_files(str(attrs["SeriesInstanceUID"]))):
            stored += int(self.ingest_file(Path(path), attrs))
        return stored

    def ingest_file(self, path: Path, attrs: dict[str, Any]) -> bool:
        """Extract and store one document; True if a new one was stored."""
        if self._store.has_document(path.stem):  # spool files are named <SOP UID>.dcm
            return False
        try:
            doc = ExtractedText.from_file(path)
        except TextExtractionError as exc:
            self._reject(path, attrs, str(exc))
            return False
        new = NewDocument(
            doc.patient_id,
            doc.study_uid,
            doc.accession_number,
            doc.kind,
            doc.sop_instance_uid,
            doc.text,
        )
        try:
            self.add(new, series_uid=str(attrs.get("SeriesInstanceUID", "")))
        except DuplicateDocument:
            return False
        except StoreError as exc:  # the other series of this tick must still be routed
            self._reject(path, attrs, f"could not store: {exc}")
            return False
        return True

    def _reject(self, path: Path, attrs: dict[str, Any], reason: str) -> None:
        logger.warning("no clinical text from %s: %s", path.name, reason)
        self._bus.publish(
            ClinicalTextRejected(
                patient_id=str(attrs.get("PatientID", "")),
                study_uid=str(attrs.get("StudyInstanceUID", "")),
                series_uid=str(attrs.get("SeriesInstanceUID", "")),
                source=path.stem,
                reason=reason,
            )
        )

    def add(self, doc: NewDocument, series_uid: str = "") -> int:
        """Store a document and audit ``clinical_text_received``; returns its id."""
        doc_id = self._store.add_document(doc, self._clock.now())
        self._bus.publish(received_event(doc, doc_id, series_uid))
        return doc_id

    # -- jobs -------------------------------------------------------------------

    def create_job(self, attrs: dict[str, Any], rule: Rule, max_attempts: int) -> JobView:
        """Create the job of a rule that needs text: pending with the documents already
        joined, or waiting until ``wait_seconds`` from now. Audit it with :meth:`announce`."""
        need = rule.clinical_text
        if need is None:
            raise ValueError(f"rule {rule.name!r} does not need clinical text")
        now = self._clock.now()
        return self._store.create_job(
            attrs,
            rule.name,
            list(rule.pipeline),
            list(need.without_text),
            list(rule.destinations),
            max_attempts,
            now,
            now + timedelta(seconds=need.wait_seconds),
        )

    def announce(self, job: JobView, rule: Rule) -> None:
        """Audit a new job's text state: ``clinical_text_joined`` or ``clinical_text_waiting``."""
        need = rule.clinical_text
        if need is None:
            return
        if job.clinical_document_ids:
            self._bus.publish(
                ClinicalTextJoined(
                    **job_ids(job), rule=rule.name, document_ids=job.clinical_document_ids
                )
            )
        else:
            _created, deadline = self._store.job_timing(job.id)
            self._bus.publish(
                ClinicalTextWaiting(
                    **job_ids(job),
                    rule=rule.name,
                    wait_seconds=need.wait_seconds,
                    deadline=deadline_text(deadline),
                )
            )

    def tick(self) -> int:
        """Join new documents, then expire waits. Returns how many jobs became runnable."""
        runnable = 0
        for doc in self._store.new_documents():
            runnable += self._publish_join(self._store.join_document(doc.id))
        for job in self._store.expire_waits(self._clock.now()):
            runnable += self._publish_expiry(job)
        return runnable

    def _publish_join(self, result: JoinResult) -> int:
        doc = result.document
        for job in result.joined:
            self._bus.publish(
                ClinicalTextJoined(
                    **job_ids(job),
                    rule=job.rule_name,
                    document_ids=job.clinical_document_ids,
                    waited_s=self._waited_s(job),
                )
            )
        reruns = 0
        for job in result.late:
            outcome = TextOutcome.SKIPPED if job.state == JobState.SKIPPED else TextOutcome.FALLBACK
            logger.warning("clinical document %d arrived after job %d's wait", doc.id, job.id)
            rerun = self._rerun(job)
            self._bus.publish(
                ClinicalTextLate(
                    **job_ids(job),
                    document_id=doc.id,
                    source=doc.source,
                    rule=job.rule_name,
                    outcome=outcome,
                    rerun_job_id=rerun.id if rerun else None,
                )
            )
            if rerun is not None:
                reruns += 1
                self._bus.publish(
                    ClinicalTextJoined(
                        **job_ids(rerun),
                        rule=rerun.rule_name,
                        document_ids=rerun.clinical_document_ids,
                    )
                )
        return len(result.joined) + reruns

    def _rerun(self, job: JobView) -> JobView | None:
        """The new full-pipeline job for late text, if the job's rule asks for one."""
        rule = self._rule_for(job.rule_name)
        if rule is None or rule.clinical_text is None or not rule.clinical_text.rerun_late_text:
            return None
        return self._store.rerun_with_text(job.id, list(rule.pipeline), self._clock.now())

    def _publish_expiry(self, job: JobView) -> int:
        waited = self._waited_s(job)
        if job.state == JobState.SKIPPED:
            self._bus.publish(
                ClinicalTextMissingSkipped(**job_ids(job), rule=job.rule_name, waited_s=waited)
            )
            return 0
        self._bus.publish(
            ClinicalTextMissingFallback(
                **job_ids(job), rule=job.rule_name, pipeline=job.pipeline, waited_s=waited
            )
        )
        return 1

    def _waited_s(self, job: JobView) -> float:
        created, _deadline = self._store.job_timing(job.id)
        return round((self._clock.now() - created).total_seconds(), 3)


def received_event(doc: NewDocument, doc_id: int, series_uid: str = "") -> ClinicalTextReceived:
    """The audit event of a stored document: identifiers, size and digest, never the text."""
    return ClinicalTextReceived(
        patient_id=doc.patient_id,
        study_uid=doc.study_uid,
        series_uid=series_uid,
        document_id=doc_id,
        source=f"{doc.source_kind} {doc.source_uid}" if doc.source_uid else doc.source_kind,
        accession_number=doc.accession_number,
        chars=len(doc.text),
        sha256=text_sha256(doc.text),
    )


def deadline_text(deadline: datetime | None) -> str:
    return deadline.isoformat(timespec="seconds") if deadline else ""
