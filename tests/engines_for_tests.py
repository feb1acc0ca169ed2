"""Engines used only by tests: they exercise the worker machinery, not radiotherapy."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time

import pydicom

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


class RecordParams:
    """Writes the job's ``ctx.params`` as JSON (rule parameters over the node's)."""

    name = "record_params"
    inputs = ()
    outputs = ("files",)

    def run(self, ctx: EngineContext) -> None:
        target = ctx.output_dir / "params.json"
        target.write_text(json.dumps(ctx.params, sort_keys=True, default=str))
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


class RecordClinical:
    """Writes the clinical documents it saw as a Basic Text SR (JSON in one TEXT item).

    The SR copies the patient and study of the first input, so it can go to a real TPS.
    """

    name = "record_clinical"
    inputs = ("files", "clinical_documents")
    outputs = ("files",)
    title = "clinical documents seen"

    def run(self, ctx: EngineContext) -> None:
        from tests.factories import make_text_sr, write_dataset

        src = pydicom.dcmread(sorted(ctx.input_files)[0], stop_before_pixels=True)
        seen = [dataclasses.asdict(d) for d in ctx.clinical_documents]
        ds = make_text_sr(json.dumps(seen), str(src.PatientID), str(src.StudyInstanceUID))
        ds.SeriesDescription = self.title
        ctx.outputs.append(write_dataset(ds, ctx.output_dir / "clinical_seen.dcm"))


class RecordNoText(RecordClinical):
    """The same record, marked as the without-text fallback."""

    name = "record_no_text"
    title = "fallback without clinical text"
