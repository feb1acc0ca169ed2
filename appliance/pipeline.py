"""Runs a job's pipeline inside a worker process.

This module is the worker side of :mod:`appliance.workers`: it receives job requests
over a pipe, runs the named engines in order on an :class:`EngineContext`, and answers
with the outputs. Engines are created once per worker and reused for every job.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engines.base import ClinicalDocument, Engine, EngineContext, EngineError
from engines.registry import UnknownEngine, create_engine, register_engine
from engines.volume import VolumeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    job_id: int
    pipeline: list[str]
    input_files: list[str]
    output_dir: str
    params: dict[str, Any] = field(default_factory=dict)
    warm_only: bool = False  # load the pipeline's engines, run nothing
    clinical_documents: list[ClinicalDocument] = field(default_factory=list)  # joined text


@dataclass(frozen=True)
class JobResult:
    job_id: int
    ok: bool
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    permanent: bool = False


class PipelineRunner:
    """Engines cached by name; one runner lives for the life of a worker process."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = create_engine(name)
        return self._engines[name]

    def run(self, req: JobRequest) -> JobResult:
        if req.warm_only:
            for name in req.pipeline:
                self.engine(name)
            return JobResult(req.job_id, True)
        out_dir = Path(req.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = EngineContext(
            job_id=req.job_id,
            input_files=[Path(p) for p in req.input_files],
            output_dir=out_dir,
            params=dict(req.params),
            clinical_documents=list(req.clinical_documents),
        )
        try:
            for name in req.pipeline:
                self.engine(name).run(ctx)
        except (EngineError, VolumeError) as exc:
            return JobResult(req.job_id, False, error=str(exc), permanent=True, notes=ctx.notes)
        except (ImportError, UnknownEngine) as exc:  # a broken install does not heal by retrying
            return JobResult(req.job_id, False, error=f"engine unavailable: {exc}", permanent=True)
        outputs = [str(p) for p in ctx.outputs]
        return JobResult(req.job_id, True, outputs=outputs, notes=ctx.notes)


def worker_main(conn: Connection, log_level: int, extra_engines: dict[str, str]) -> None:
    """Entry point of a worker process: answer job requests until the pipe closes."""
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s"
    )
    for name, target in extra_engines.items():
        register_engine(name, target)
    runner = PipelineRunner()
    logger.info("worker %d ready", os.getpid())
    while True:
        try:
            req = conn.recv()
        except EOFError:
            return
        conn.send(_run_safely(runner, req))


def _run_safely(runner: PipelineRunner, req: JobRequest) -> JobResult:
    try:
        return runner.run(req)
    except Exception as exc:  # an engine bug must become a job failure, not a dead worker
        logger.error("job %d failed: %s", req.job_id, traceback.format_exc())
        return JobResult(req.job_id, False, error=f"{type(exc).__name__}: {exc}")
