"""SQLAlchemy 2.0 models and the SQLite engine (WAL, immediate transactions).

The schema is created and upgraded by Alembic (``appliance/migrations``); these models
are the typed view of it. No pickled state: lists are JSON columns.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import JSON, DateTime, Engine, ForeignKey, Index, Integer, String, Text, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    pass


class SeriesState:
    RECEIVING = "receiving"
    COMPLETE = "complete"
    PURGING = "purging"  # retention: rows marked purged, spool files being deleted
    PURGED = "purged"  # retention: its spool files are gone (a new instance re-opens it)


class JobState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    WAITING = "waiting"  # for clinical text, until a document arrives or the deadline passes
    SKIPPED = "skipped"  # no text arrived and the rule's fallback is to run nothing


class TextOutcome:
    """How a job whose rule needs clinical text got (or did not get) it."""

    NOT_NEEDED = ""
    WAITING = "waiting"
    JOINED = "joined"
    FALLBACK = "fallback"
    SKIPPED = "skipped"


class DocumentState:
    NEW = "new"  # not yet seen by the node's clinical-text tick
    STORED = "stored"  # seen; no job needed it (yet)
    JOINED = "joined"  # joined to at least one job
    LATE = "late"  # arrived after a job of its patient/study had taken the fallback


class DeliveryState:
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime)
    # retention (migration 0003): set when the spool file was deleted
    purged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Series(Base):
    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    complete_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # last purge


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    rule_name: Mapped[str] = mapped_column(String(128))
    pipeline: Mapped[list[str]] = mapped_column(JSON)
    destinations: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    last_error: Mapped[str] = mapped_column(Text, default="")
    outputs: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # clinical text (migration 0002): join key, wait deadline, fallback, joined documents
    accession_number: Mapped[str] = mapped_column(String(64), default="", server_default="")
    text_outcome: Mapped[str] = mapped_column(String(16), default="", server_default="")
    text_deadline: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    fallback_pipeline: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    clinical_document_ids: Mapped[list[int]] = mapped_column(
        JSON, default=list, server_default="[]"
    )


class ClinicalDocumentRow(Base):
    """Clinical text received as SR/PDF or given with ``rtnode submit-text``.

    Joined to a CT by ``patient_id`` and (``study_uid`` or ``accession_number``).
    """

    __tablename__ = "clinical_documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    source_kind: Mapped[str] = mapped_column(String(16))  # "SR", "PDF", "submit-text"
    source_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    text: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), default=DocumentState.NEW, index=True)


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_next", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEntry(Base):
    """Append-only audit row, hashed over the previous row's hash."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[str] = mapped_column(String(40))
    event: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


def create_engine(db_path: Path) -> Engine:
    """SQLite engine in WAL mode whose write transactions start with BEGIN IMMEDIATE.

    Immediate transactions serialise writers across threads and processes (the node,
    a CLI ``resend``), so the audit hash chain can never fork.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa_create_engine(
        f"sqlite:///{db_path}",
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts and loses at most the last commits on power
        # loss; the spool file of every acknowledged instance is fsync'd before the
        # status goes back, and start-up re-indexes spool files the index lacks.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest Alembic revision."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    logger.info("database schema at head (%s)", engine.url.database)
