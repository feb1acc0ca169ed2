"""The worker pool: jobs run in child processes, never in the node's own threads.

Each slot is a thread in the node that owns one long-lived worker process (spawned, so
native libraries start clean). If the process dies mid-job (a segfault in native code,
an OOM kill, a timeout), the slot records a failed attempt with the reason, starts a
new process and goes on; the job is retried until its attempts run out.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.events import EventBus, JobFinished, JobStarted
from appliance.pipeline import JobRequest, JobResult, worker_main
from appliance.store import JobView, Store, StoreError
from engines.base import ClinicalDocument

logger = logging.getLogger(__name__)

_POLL_S = 0.2


@dataclass(frozen=True)
class PoolSettings:
    count: int
    job_timeout_s: float
    output_root: Path
    params: dict[str, Any]
    extra_engines: dict[str, str]
    rule_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # over ``params``
    idle_poll_s: float = 1.0
    warm_engines: tuple[str, ...] = ()  # loaded in every worker at start


class WorkerSlot:
    """One worker process and the pipe to it."""

    def __init__(self, index: int, settings: PoolSettings) -> None:
        self.index = index
        self._settings = settings
        self._ctx = mp.get_context("spawn")
        self._proc: SpawnProcess | None = None
        self._conn: Connection | None = None
        self.starts = 0

    @property
    def restarts(self) -> int:
        """Processes started after the first (each one replaced a dead or hung worker)."""
        return max(0, self.starts - 1)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def _ensure_process(self) -> tuple[SpawnProcess, Connection]:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self.starts += 1
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=worker_main,
                args=(
                    child,
                    logging.getLogger().level or logging.INFO,
                    self._settings.extra_engines,
                ),
                name=f"rtnode-worker-{self.index}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._proc, self._conn = proc, parent
            logger.info("worker slot %d started process %d", self.index, proc.pid)
        return self._proc, self._conn

    def execute(self, req: JobRequest, on_start: Any = None) -> JobResult:
        """Run ``req`` in the worker; a dead or hung worker becomes a failed result."""
        proc, conn = self._ensure_process()
        if on_start is not None:
            on_start(proc.pid)
        try:
            conn.send(req)
        except (BrokenPipeError, OSError) as exc:
            self._discard()
            return JobResult(req.job_id, False, error=f"could not reach worker: {exc}")
        return self._await(proc, conn, req)

    def _await(self, proc: SpawnProcess, conn: Connection, req: JobRequest) -> JobResult:
        deadline = time.monotonic() + self._settings.job_timeout_s
        while time.monotonic() < deadline:
            try:
                if conn.poll(_POLL_S):
                    result: JobResult = conn.recv()
                    return result
            except (EOFError, OSError):
                pass
            if not proc.is_alive():
                proc.join(1)
                self._discard()
                return JobResult(
                    req.job_id, False, error=f"worker process died (exit code {proc.exitcode})"
                )
        self.stop()
        return JobResult(
            req.job_id, False, error=f"timed out after {self._settings.job_timeout_s:.0f} s"
        )

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._discard()


class WorkerPool:
    """Claims pending jobs from the store and runs them on worker slots."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Clock,
        settings: PoolSettings,
        on_job_done: Callable[[JobView], None] | None = None,
        *,
        documents: Callable[[list[int]], list[ClinicalDocument]] | None = None,
    ) -> None:
        self._on_job_done = on_job_done
        self._documents = documents
        self._store = store
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self.slots = [WorkerSlot(i, settings) for i in range(settings.count)]
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for slot in self.slots:
            t = threading.Thread(
                target=self._loop, args=(slot,), name=f"slot-{slot.index}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def notify(self) -> None:
        """New work is pending: wake idle slots now."""
        self._wake.set()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for slot in self.slots:
            slot.stop()
        for t in self._threads:
            t.join(10)

    def _warm(self, slot: WorkerSlot) -> None:
        """Start the worker and load the engines the rules use, before the first job."""
        if not self._settings.warm_engines:
            return
        req = JobRequest(0, list(self._settings.warm_engines), [], "", warm_only=True)
        result = slot.execute(req)
        if not result.ok:
            logger.error("worker slot %d could not load its engines: %s", slot.index, result.error)

    def _loop(self, slot: WorkerSlot) -> None:
        self._warm(slot)
        while not self._stopping.is_set():
            try:
                job = self._store.claim_job(self._clock.now())
            except StoreError:
                logger.exception("could not claim a job")
                job = None
            if job is None:
                self._wake.wait(self._settings.idle_poll_s)
                self._wake.clear()
                continue
            try:
                self.run_job(slot, job)
            except StoreError:
                # The outcome could not be recorded: the job stays "running" and is
                # re-queued at the next start; the slot itself keeps serving.
                logger.exception("could not record the outcome of job %d", job.id)

    def run_job(self, slot: WorkerSlot, job: JobView) -> JobResult:
        """Run one claimed job and record its outcome."""
        req = JobRequest(
            job_id=job.id,
            pipeline=job.pipeline,
            input_files=self._store.series_files(job.series_uid),
            output_dir=str(
                self._settings.output_root / f"job-{job.id}" / f"attempt-{job.attempts}"
            ),
            params={**self._settings.params, **self._settings.rule_params.get(job.rule_name, {})},
            clinical_documents=self._job_documents(job),
        )
        ids: dict[str, Any] = {
            "patient_id": job.patient_id,
            "study_uid": job.study_uid,
            "series_uid": job.series_uid,
            "job_id": job.id,
        }

        def started(pid: int) -> None:
            self._bus.publish(JobStarted(**ids, attempt=job.attempts, worker_pid=pid))

        result = slot.execute(req, on_start=started)
        if self._stopping.is_set() and not result.ok:
            return result  # shutting down: the job stays running and is requeued at start
        self._record(job, result, ids)
        return result

    def _job_documents(self, job: JobView) -> list[ClinicalDocument]:
        """The clinical documents joined to the job (read when it starts)."""
        if self._documents is None or not job.clinical_document_ids:
            return []
        return self._documents(job.clinical_document_ids)

    def _record(self, job: JobView, result: JobResult, ids: dict[str, Any]) -> None:
        now = self._clock.now()
        if result.ok:
            self._store.finish_job(job.id, result.outputs, result.notes, now, delivery_at=now)
            state = "done"
            if self._on_job_done is not None:
                self._on_job_done(job)
        else:
            view = self._store.fail_job(job.id, result.error, now, permanent=result.permanent)
            state = view.state
            logger.warning("job %d attempt %d failed: %s", job.id, job.attempts, result.error)
        self._bus.publish(
            JobFinished(
                **ids,
                state=state,
                attempt=job.attempts,
                error=result.error,
                outputs=len(result.outputs),
                notes=result.notes,
            )
        )
