"""Clinical documents and the jobs that wait for them, in SQLite.

A document joins a job when both have the same Patient ID and the same Study Instance
UID or the same Accession Number (an empty value never matches). One short transaction
per operation, as in :mod:`appliance.store`; back-end errors become :class:`StoreError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, false, or_, select
from sqlalchemy.orm import Session

from appliance.db import ClinicalDocumentRow, DocumentState, Job, JobState, TextOutcome
from appliance.store import DuplicateInstance, JobView, StoreError, job_view, transaction
from engines.base import ClinicalDocument

SUBMIT_TEXT = "submit-text"


class DuplicateDocument(StoreError):
    """A document with this SOP Instance UID is already stored."""


@dataclass(frozen=True)
class NewDocument:
    patient_id: str
    study_uid: str
    accession_number: str
    source_kind: str  # "SR", "PDF" or "submit-text"
    source_uid: str | None  # SOP Instance UID; None for submit-text
    text: str


@dataclass(frozen=True)
class DocumentView:
    id: int
    patient_id: str
    study_uid: str
    accession_number: str
    source_kind: str
    source_uid: str | None
    chars: int
    received_at: datetime
    state: str

    @property
    def source(self) -> str:
        return f"{self.source_kind} {self.source_uid}" if self.source_uid else self.source_kind


@dataclass(frozen=True)
class JoinResult:
    """What one new document did: jobs it released or joined, jobs it came too late for."""

    document: DocumentView
    joined: list[JobView]
    late: list[JobView]


def _document_view(row: ClinicalDocumentRow) -> DocumentView:
    return DocumentView(
        id=row.id,
        patient_id=row.patient_id,
        study_uid=row.study_uid,
        accession_number=row.accession_number,
        source_kind=row.source_kind,
        source_uid=row.source_uid,
        chars=len(row.text),
        received_at=row.received_at,
        state=row.state,
    )


def _same_case(model: Any, patient_id: str, study_uid: str, accession: str) -> ColumnElement[bool]:
    """Patient ID AND (Study Instance UID OR Accession Number); empty values never match."""
    either = []
    if study_uid:
        either.append(model.study_uid == study_uid)
    if accession:
        either.append(model.accession_number == accession)
    if not patient_id or not either:
        return false()
    return and_(model.patient_id == patient_id, or_(*either))


def _case_documents(
    s: Session, patient_id: str, study_uid: str, accession: str
) -> Sequence[ClinicalDocumentRow]:
    """The documents of one case (see :func:`_same_case`), oldest first."""
    return s.scalars(
        select(ClinicalDocumentRow)
        .where(_same_case(ClinicalDocumentRow, patient_id, study_uid, accession))
        .order_by(ClinicalDocumentRow.id)
    ).all()


class ClinicalStore:
    """Typed operations on clinical documents and on jobs that need them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- documents ----------------------------------------------------------------

    def add_document(self, doc: NewDocument, now: datetime) -> int:
        """Store a document (state ``new``); raises DuplicateDocument for a known SOP UID."""
        try:
            with transaction(self._engine) as s:
                row = ClinicalDocumentRow(**doc.__dict__, received_at=now, state=DocumentState.NEW)
                s.add(row)
                s.flush()
                return row.id
        except DuplicateInstance as exc:
            raise DuplicateDocument(doc.source_uid or "") from exc

    def has_document(self, source_uid: str) -> bool:
        with transaction(self._engine) as s:
            stmt = select(ClinicalDocumentRow.id).where(
                ClinicalDocumentRow.source_uid == source_uid
            )
            return s.scalars(stmt).first() is not None

    def new_documents(self) -> list[DocumentView]:
        with transaction(self._engine) as s:
            stmt = select(ClinicalDocumentRow).where(ClinicalDocumentRow.state == DocumentState.NEW)
            return [_document_view(r) for r in s.scalars(stmt.order_by(ClinicalDocumentRow.id))]

    def recent_documents(self, limit: int = 10) -> list[DocumentView]:
        with transaction(self._engine) as s:
            stmt = select(ClinicalDocumentRow).order_by(ClinicalDocumentRow.id.desc()).limit(limit)
            return [_document_view(r) for r in s.scalars(stmt)]

    def documents_for(self, ids: list[int]) -> list[ClinicalDocument]:
        """The documents with these ids, oldest first, as the engines receive them."""
        if not ids:
            return []
        with transaction(self._engine) as s:
            rows = s.scalars(
                select(ClinicalDocumentRow)
                .where(ClinicalDocumentRow.id.in_(ids))
                .order_by(ClinicalDocumentRow.id)
            )
            return [
                ClinicalDocument(
                    source=_document_view(r).source,
                    text=r.text,
                    received_at=r.received_at.isoformat(timespec="seconds") + "Z",
                )
                for r in rows
            ]

    # -- jobs ---------------------------------------------------------------------

    def create_job(
        self,
        attrs: dict[str, Any],
        rule: str,
        pipeline: list[str],
        fallback: list[str],
        dests: list[str],
        max_attempts: int,
        now: datetime,
        deadline: datetime,
    ) -> JobView:
        """A job that needs text: pending with the joined documents, or waiting until
        ``deadline`` when none is there yet."""
        with transaction(self._engine) as s:
            job = Job(
                series_uid=attrs["SeriesInstanceUID"],
                study_uid=attrs["StudyInstanceUID"],
                patient_id=str(attrs.get("PatientID", "") or ""),
                accession_number=str(attrs.get("AccessionNumber", "") or "").strip(),
                rule_name=rule,
                pipeline=pipeline,
                destinations=dests,
                attempts=0,
                max_attempts=max_attempts,
                last_error="",
                outputs=[],
                notes=[],
                created_at=now,
                text_deadline=deadline,
                fallback_pipeline=fallback,
            )
            docs = _case_documents(s, job.patient_id, job.study_uid, job.accession_number)
            for doc in docs:  # a new one stays new: the tick still offers it to other jobs
                if doc.state != DocumentState.NEW:
                    doc.state = DocumentState.JOINED
            job.clinical_document_ids = [d.id for d in docs]
            job.state = JobState.PENDING if docs else JobState.WAITING
            job.text_outcome = TextOutcome.JOINED if docs else TextOutcome.WAITING
            s.add(job)
            s.flush()
            return job_view(job)

    def join_document(self, document_id: int) -> JoinResult:
        """Join a new document to the jobs of its case: waiting jobs are released (full
        pipeline), pending joined jobs get it too; fallback/skipped jobs are reported late."""
        with transaction(self._engine) as s:
            doc = s.get(ClinicalDocumentRow, document_id)
            if doc is None:
                raise StoreError(f"no clinical document {document_id}")
            jobs = s.scalars(
                select(Job)
                .where(_same_case(Job, doc.patient_id, doc.study_uid, doc.accession_number))
                .where(Job.text_outcome != TextOutcome.NOT_NEEDED)
                .order_by(Job.id)
            ).all()
            joined = [_join(job, doc.id) for job in jobs if _can_join(job, doc.id)]
            late = [
                job_view(j)
                for j in jobs
                if j.text_outcome in (TextOutcome.FALLBACK, TextOutcome.SKIPPED)
            ]
            held = any(doc.id in (j.clinical_document_ids or []) for j in jobs)
            doc.state = (
                DocumentState.JOINED
                if held
                else DocumentState.LATE
                if late
                else DocumentState.STORED
            )
            return JoinResult(_document_view(doc), joined, late)

    def rerun_with_text(self, job_id: int, pipeline: list[str], now: datetime) -> JobView | None:
        """A new job for a late job's series and rule: ``pipeline`` (the rule's full one)
        with every document of the case joined, ready to run. None when a later job of the
        same series and rule already has text, or the case has no document."""
        with transaction(self._engine) as s:
            old = _get(s, job_id)
            newer = s.scalars(
                select(Job.id).where(
                    Job.series_uid == old.series_uid,
                    Job.rule_name == old.rule_name,
                    Job.id > old.id,
                    Job.text_outcome == TextOutcome.JOINED,
                )
            ).first()
            if newer is not None:
                return None
            docs = _case_documents(s, old.patient_id, old.study_uid, old.accession_number)
            if not docs:
                return None
            for doc in docs:
                doc.state = DocumentState.JOINED
            job = Job(
                series_uid=old.series_uid,
                study_uid=old.study_uid,
                patient_id=old.patient_id,
                accession_number=old.accession_number,
                rule_name=old.rule_name,
                pipeline=list(pipeline),
                destinations=list(old.destinations or []),
                attempts=0,
                max_attempts=old.max_attempts,
                last_error="",
                outputs=[],
                notes=[],
                created_at=now,
                text_deadline=now,
                fallback_pipeline=list(old.fallback_pipeline or []),
                clinical_document_ids=[d.id for d in docs],
                state=JobState.PENDING,
                text_outcome=TextOutcome.JOINED,
            )
            s.add(job)
            s.flush()
            return job_view(job)

    def expire_waits(self, now: datetime) -> list[JobView]:
        """Waiting jobs past their deadline take the fallback (pending) or are skipped."""
        with transaction(self._engine) as s:
            jobs = s.scalars(
                select(Job)
                .where(Job.state == JobState.WAITING, Job.text_deadline <= now)
                .order_by(Job.id)
            ).all()
            for job in jobs:
                _fall_back(job, now)
            return [job_view(j) for j in jobs]

    def waiting_jobs(self) -> list[tuple[JobView, datetime | None]]:
        """Jobs waiting for text, with their deadline, oldest first."""
        with transaction(self._engine) as s:
            stmt = select(Job).where(Job.state == JobState.WAITING).order_by(Job.id)
            return [(job_view(j), j.text_deadline) for j in s.scalars(stmt)]

    def job_timing(self, job_id: int) -> tuple[datetime, datetime | None]:
        """(created_at, text_deadline) of a job."""
        with transaction(self._engine) as s:
            job = _get(s, job_id)
            return job.created_at, job.text_deadline


def _can_join(job: Job, document_id: int) -> bool:
    if document_id in (job.clinical_document_ids or []):
        return False
    if job.state == JobState.WAITING:
        return True
    return job.state == JobState.PENDING and job.text_outcome == TextOutcome.JOINED


def _join(job: Job, document_id: int) -> JobView:
    job.clinical_document_ids = [*(job.clinical_document_ids or []), document_id]
    job.state, job.text_outcome = JobState.PENDING, TextOutcome.JOINED
    return job_view(job)


def _fall_back(job: Job, now: datetime) -> None:
    if job.fallback_pipeline:
        job.pipeline = list(job.fallback_pipeline)
        job.state, job.text_outcome = JobState.PENDING, TextOutcome.FALLBACK
    else:
        job.state, job.text_outcome = JobState.SKIPPED, TextOutcome.SKIPPED
        job.finished_at = now


def _get(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise StoreError(f"no job {job_id}")
    return job
