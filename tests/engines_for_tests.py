"""Engines used only by tests: they exercise the worker machinery, not radiotherapy."""

from __future__ import annotations

import os
import shutil
import signal
import time

from engines.base import EngineContext, EngineError


class CopyInputs:
    """Copies the first input file to the outputs (stands in for a real result)."""

    name = "copy_inputs"
    inputs = ("files",)
    outputs = ("files",)

    def run(self, ctx: EngineContext) -> None:
        target = ctx.output_dir / "result.dcm"
        shutil.copyfile(sorted(ctx.input_files)[0], target)
        ctx.outputs.append(target)


class Crash:
    """Dies like native code does: SIGSEGV."""

    name = "crash"
    inputs = ()
    outputs = ()

    def run(self, ctx: EngineContext) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)


class Refuse:
    """A deterministic input problem."""

    name = "refuse"
    inputs = ()
    outputs = ()

    def run(self, ctx: EngineContext) -> None:
        raise EngineError("no usable CT in the series")


class Slow:
    name = "slow"
    inputs = ()
    outputs = ()

    def run(self, ctx: EngineContext) -> None:
        time.sleep(float(ctx.params.get("slow_s", 30)))
