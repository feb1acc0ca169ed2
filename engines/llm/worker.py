"""A :class:`LlamaRuntime` in a spawned child process (for callers that must survive a
native crash, such as the CLI). Requests go over a pipe; a child that dies or hangs past
the deadline is killed and replaced on the next call."""

from __future__ import annotations

import logging
import multiprocessing as mp
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from engines.llm.runtime import LlamaRuntime, LLMError, LLMTimeout, available

logger = logging.getLogger(__name__)

LOAD_GRACE_S = 60.0  # the first call also loads the model


def _serve(conn: Connection, config: dict[str, Any]) -> None:
    runtime = LlamaRuntime(**config)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        prompt, schema, max_tokens, timeout_s = request
        try:
            conn.send(("ok", runtime.generate_json(prompt, schema, max_tokens, timeout_s)))
        except LLMTimeout as exc:
            conn.send(("timeout", str(exc)))
        except Exception as exc:  # any failure goes back to the caller as an error
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class LLMWorker:
    """Same API as :class:`LlamaRuntime`; the model lives in one child process."""

    def __init__(
        self,
        model_path: Path | str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
    ) -> None:
        available(model_path)
        self._config: dict[str, Any] = {
            "model_path": str(model_path),
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "n_gpu_layers": n_gpu_layers,
            "seed": seed,
        }
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._fresh = True

    def _start(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        context = mp.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._config), daemon=True)
        self._process.start()
        child.close()
        self._conn, self._fresh = parent, True
        logger.info("LLM worker %d started", self._process.pid)
        return parent

    def generate_json(
        self, prompt: str, schema: dict[str, Any], max_tokens: int = 64, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        conn = self._start()
        wait_s = timeout_s + 5.0 + (LOAD_GRACE_S if self._fresh else 0.0)
        try:
            conn.send((prompt, schema, max_tokens, timeout_s))
            if not conn.poll(wait_s):
                self.close()
                raise LLMTimeout(f"LLM worker gave no answer in {wait_s:.0f} s (killed)")
            status, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self._process.exitcode if self._process is not None else None
            self.close()
            raise LLMError(f"LLM worker died (exit code {code})") from exc
        self._fresh = False
        if status == "ok":
            return dict(payload)
        if status == "timeout":
            raise LLMTimeout(str(payload))
        raise LLMError(str(payload))

    def close(self) -> None:
        """Stop the child process (a later call starts a new one)."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
        self._process, self._conn = None, None

    def __enter__(self) -> LLMWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
