"""The node: wires config, database, audit, SCP, rules, workers, delivery and timers."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from appliance.audit import AuditLog
from appliance.clinical_store import ClinicalStore
from appliance.clinical_text import ClinicalText
from appliance.clock import Clock, SystemClock
from appliance.config import LoadedConfig
from appliance.db import create_engine, migrate
from appliance.delivery import DeliveryManager
from appliance.events import (
    ConfigLoaded,
    EventBus,
    NodeStarted,
    NodeStopping,
    NoRuleMatched,
    RuleMatched,
    SeriesCompleted,
)
from appliance.reindex import reindex_orphans
from appliance.retention import Retention
from appliance.retention_store import RetentionStore
from appliance.store import JobView, Store
from appliance.workers import PoolSettings, WorkerPool
from dicom_node.intake import Intake
from dicom_node.scp import CallerGate, start_server
from dicom_node.spool import Spool
from engines.registry import engine_names
from rules.matcher import load_rules, matching_rules
from rules.schema import Rule, RuleSet

logger = logging.getLogger(__name__)

RETENTION_FIRST_RUN_S = 60  # the first retention check after start-up (at most)


@dataclass(frozen=True)
class NodePaths:
    """Everything the node writes lives under ``data_dir``."""

    data_dir: Path

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outputs(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def database(self) -> Path:
        return self.data_dir / "rtnode.sqlite3"

    @property
    def tensorrt_cache(self) -> Path:
        """Built TensorRT engines (GPU hosts with TensorRT only; created when first used)."""
        return self.data_dir / "tensorrt-cache"


def open_database(paths: NodePaths) -> Engine:
    """Open (and migrate) the node database."""
    engine = create_engine(paths.database)
    migrate(engine)
    return engine


def load_node_rules(loaded: LoadedConfig, extra_engines: dict[str, str] | None = None) -> RuleSet:
    cfg = loaded.config
    engines = engine_names() + sorted(extra_engines or {})
    return load_rules(cfg.rules_file, engines=engines, destinations=sorted(cfg.destinations))


class Node:
    """One rtnode instance. ``start`` brings it up, ``stop`` takes it down."""

    def __init__(
        self,
        loaded: LoadedConfig,
        clock: Clock | None = None,
        *,
        extra_engines: dict[str, str] | None = None,
    ) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        extra_engines = {**self.cfg.engine_plugins, **(extra_engines or {})}
        self.clock = clock or SystemClock()
        self.paths = NodePaths(self.cfg.node.data_dir)
        self.ruleset = load_node_rules(loaded, extra_engines)
        self.db = open_database(self.paths)
        self.store = Store(self.db)
        self.bus = EventBus()
        self.audit = AuditLog(self.db, self.clock)
        self.audit.bind(self.bus)
        self.spool = Spool(self.paths.spool)
        self.intake = Intake(
            self.spool,
            self.store,
            self.bus,
            self.clock,
            quiet_seconds=self.cfg.completion.quiet_seconds,
            min_free_bytes=self.cfg.storage.min_free_disk_mb * 1024 * 1024,
        )
        self.retention = Retention(
            RetentionStore(self.db),
            self.spool,
            self.bus,
            self.clock,
            self.cfg.spool,
            exclusive=self.intake.series_exclusive,
        )
        self.clinical_store = ClinicalStore(self.db)
        self.clinical = ClinicalText(
            self.clinical_store, self.bus, self.clock, self.store.series_files, self._rule
        )
        self.pool = WorkerPool(
            self.store,
            self.bus,
            self.clock,
            self._pool_settings(extra_engines),
            self._job_done,
            documents=self.clinical_store.documents_for,
        )
        self.delivery = DeliveryManager(
            self.store,
            self.bus,
            self.clock,
            self.cfg.delivery,
            dict(self.cfg.destinations),
            self.cfg.node.ae_title,
        )
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.server: ThreadedAssociationServer | None = None
        self._saved_tempdir: str | None = None

    def _pool_settings(self, extra_engines: dict[str, str] | None) -> PoolSettings:
        return PoolSettings(
            count=self.cfg.workers.count,
            job_timeout_s=self.cfg.workers.job_timeout_s,
            output_root=self.paths.outputs,
            params={
                "structure_template": str(self.cfg.structure_template),
                "segmentation_cache_dir": str(self.paths.tensorrt_cache),
                **self.cfg.engines.as_params(),
            },
            extra_engines=dict(extra_engines or {}),
            rule_params={r.name: dict(r.params) for r in self.ruleset.rules if r.params},
            warm_engines=tuple(sorted({step for r in self.ruleset.rules for step in _steps(r)})),
        )

    # -- lifecycle --------------------------------------------------------------

    def start(self, *, listen: bool = True, background: bool = True) -> None:
        """Recover pending work, then start workers, the SCP and the timers."""
        self.bus.publish(
            ConfigLoaded(
                path=str(self.loaded.path),
                sha256=self.loaded.sha256,
                rules_sha256=_sha256(self.cfg.rules_file),
                rules=len(self.ruleset.rules),
            )
        )
        recovered = self.recover()
        if background:
            self.pool.start()
            self._start_timers()
        if listen:
            # pynetdicom writes received datasets to tempfile's directory: keep it on
            # the spool's filesystem so the durable rename is atomic.
            self._saved_tempdir = tempfile.tempdir
            tempfile.tempdir = str(self.spool.tmp_dir)
            gate = CallerGate(
                tuple(self.cfg.security.allowed_callers), self.cfg.security.accept_any_caller
            )
            self.server = start_server(self.cfg.node, self.intake, gate, self.bus)
        self.bus.publish(
            NodeStarted(ae_title=self.cfg.node.ae_title, port=self.cfg.node.port, **recovered)
        )

    def recover(self) -> dict[str, Any]:
        """Make the state consistent after a crash or restart."""
        purged = self.spool.purge_incoming()
        self.retention.finish_interrupted()
        reindexed = reindex_orphans(self.spool, self.store, self.clock)
        armed = self.store.arm_orphan_series(self.clock.now() + _quiet(self))
        requeued = self.store.requeue_interrupted_jobs()
        if purged or reindexed or armed or requeued:
            logger.info(
                "recovered: %d partial files removed, %d instances re-indexed, %d series re-armed, "
                "%d jobs re-queued",
                purged,
                reindexed,
                armed,
                requeued,
            )
        return {
            "recovered_series": armed,
            "requeued_jobs": requeued,
            "reindexed_instances": reindexed,
        }

    def _start_timers(self) -> None:
        c, d = self.cfg.completion, self.cfg.delivery
        self.scheduler.add_job(
            self.tick_completion,
            "interval",
            seconds=c.tick_seconds,
            id="completion",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self.delivery.tick,
            "interval",
            seconds=d.tick_seconds,
            id="delivery",
            max_instances=1,
            coalesce=True,
        )
        if self.retention.enabled:
            every_s = self.cfg.spool.purge_interval_minutes * 60
            self.scheduler.add_job(
                self.retention.tick,
                "interval",
                seconds=every_s,
                id="retention",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC)
                + timedelta(seconds=min(every_s, RETENTION_FIRST_RUN_S)),
            )
        self.scheduler.start()

    def _job_done(self, _job: JobView) -> None:
        """A result is ready: run the delivery tick now instead of at its next interval."""
        if self.scheduler.running:
            self.scheduler.modify_job("delivery", next_run_time=datetime.now(UTC))

    def healthy(self) -> bool:
        """Used by the systemd watchdog: every moving part still alive."""
        server_ok = self.server is None or bool(
            self.server.socket and self.server.socket.fileno() >= 0
        )
        return server_ok and self.scheduler.running and self.pool.alive()

    def stop(self, reason: str = "stop requested") -> None:
        self.bus.publish(NodeStopping(reason=reason))
        if self.server is not None:
            self.server.shutdown()
            tempfile.tempdir = self._saved_tempdir
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.stop()
        self.store.close()
        self.db.dispose()

    def _rule(self, name: str) -> Rule | None:
        return next((r for r in self.ruleset.rules if r.name == name), None)

    # -- timers -----------------------------------------------------------------

    def tick_completion(self) -> int:
        """Complete every series whose quiet window has passed; route each. Returns count."""
        due = self.store.due_series(self.clock.now(), self.intake.busy_series())
        for series_uid in due:
            attrs = self.store.complete_series(series_uid, self.clock.now())
            if attrs is not None:
                self._completed(attrs)
        if self.clinical.tick():  # documents joined (also from submit-text), waits expired
            self.pool.notify()
        return len(due)

    def _completed(self, attrs: dict[str, Any]) -> None:
        ids = _ids(attrs)
        self.bus.publish(
            SeriesCompleted(
                **ids, instance_count=attrs["InstanceCount"], generation=attrs["_generation"]
            )
        )
        self.clinical.ingest_series(attrs)  # SR / PDF: store its text for joining
        rules = matching_rules(self.ruleset, attrs)
        if not rules:
            self.bus.publish(NoRuleMatched(**ids, modality=str(attrs.get("Modality", ""))))
            return
        for rule in rules:
            self._create_job(attrs, rule, ids)
        self.pool.notify()

    def _create_job(self, attrs: dict[str, Any], rule: Rule, ids: dict[str, Any]) -> None:
        max_attempts = self.cfg.workers.max_attempts
        if rule.clinical_text is not None:
            job = self.clinical.create_job(attrs, rule, max_attempts)
            job_id = job.id
        else:
            job_id = self.store.create_job(
                attrs,
                rule.name,
                list(rule.pipeline),
                list(rule.destinations),
                max_attempts,
                self.clock.now(),
            )
        self.bus.publish(
            RuleMatched(
                **ids,
                job_id=job_id,
                rule=rule.name,
                pipeline=list(rule.pipeline),
                destinations=list(rule.destinations),
            )
        )
        if rule.clinical_text is not None:
            self.clinical.announce(job, rule)


def _steps(rule: Rule) -> list[str]:
    """Every engine a rule may run: its pipeline and its without-text fallback."""
    fallback = rule.clinical_text.without_text if rule.clinical_text else []
    return [*rule.pipeline, *fallback]


def _ids(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "patient_id": str(attrs.get("PatientID", "")),
        "study_uid": str(attrs["StudyInstanceUID"]),
        "series_uid": str(attrs["SeriesInstanceUID"]),
    }


def _quiet(node: Node) -> timedelta:
    return timedelta(seconds=node.cfg.completion.quiet_seconds)


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
