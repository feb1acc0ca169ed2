"""Node engine ``clinical_text``: the job's clinical documents -> ``ctx.clinical`` + an SR.

Job params (all optional):

- ``clinical_llm_model``: ``bundled`` (default: the packaged SmolLM2), a GGUF path, or
  ``none`` (deterministic only). The model runs in this worker process and is loaded once
  per worker.
- ``clinical_llm_threads``: llama.cpp threads (default: the runtime's, cores - 1).
- ``clinical_protocols``: protocol folder (default ``config/protocols``).
- ``clinical_time_budget_s``: time for the LLM steps per case (default 5).

Without documents the engine sets ``ctx.clinical = None``, notes it and writes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.yamlsource import ConfigError
from engines.base import ClinicalDocument, EngineContext, EngineError
from engines.clinical.analysis import TIME_BUDGET_S, ClinicalAnalysis, analyse
from engines.clinical.budget import probe
from engines.clinical.report_sr import make_clinical_sr
from engines.llm.models import BUNDLED, resolve_model
from engines.llm.runtime import LlamaRuntime, LLMError, LLMUnavailable, available

logger = logging.getLogger(__name__)

NONE = "none"


def join_documents(documents: list[ClinicalDocument]) -> str:
    """The documents' texts, oldest first, each under a line naming its source."""
    ordered = sorted(documents, key=lambda d: d.received_at)
    return "\n\n".join(f"[{d.source}]\n{d.text.strip()}" for d in ordered)


def read_ct_headers(paths: list[Path]) -> list[Dataset]:
    """Headers (no pixels) of the CT images among ``paths``, in file order."""
    headers: list[Dataset] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
            continue
        if ds.get("Modality") == "CT" and "SOPInstanceUID" in ds:
            headers.append(ds)
    return headers


def result_notes(analysis: ClinicalAnalysis, documents: list[ClinicalDocument]) -> list[str]:
    """Job notes (the node audits them): documents, rules fired, disagreements, notes."""
    data = analysis.to_json()
    notes = [f"clinical_text: documents {', '.join(d.source for d in documents)}"]
    facts = ", ".join(f"{k}={data[k]}" for k in ("site", "laterality", "T", "N", "M", "surgery"))
    notes.append(f"clinical_text: facts {facts}")
    rules = ", ".join(f"{k}={v}" for k, v in data["protocol_rules"].items())
    notes.append(f"clinical_text: protocol rules {rules or 'none (no strategy)'}")
    for d in data["disagreements"]:
        notes.append(
            f"clinical_text: disagreement {d['field']}: rules {d['rules']!r}, "
            f"LLM {d['llm']!r}, used {d['used']!r} ({d['reason']})"
        )
    notes.extend(f"clinical_text: {note}" for note in data["notes"])
    return notes


class ClinicalTextEngine:
    """Facts, strategy and summary from the job's clinical text (see module docstring)."""

    name: ClassVar[str] = "clinical_text"
    inputs: ClassVar[tuple[str, ...]] = ("clinical_documents", "ct")
    outputs: ClassVar[tuple[str, ...]] = ("clinical", "sr")

    def __init__(self, **options: Any) -> None:
        self._options = dict(options)
        self._llm: LlamaRuntime | None = None

    def run(self, ctx: EngineContext) -> None:
        if not ctx.clinical_documents:
            ctx.clinical = None
            ctx.notes.append("clinical_text: no clinical documents joined to this series")
            return
        settings = {**self._options, **ctx.params}
        llm, note = self._runtime(settings)
        analysis = self._analyse(join_documents(ctx.clinical_documents), llm, settings)
        if note:
            analysis.notes.append(note)
        ctx.clinical = analysis.to_json()
        ctx.notes.extend(result_notes(analysis, ctx.clinical_documents))
        self._write_sr(ctx, analysis)

    def _analyse(
        self, text: str, llm: LlamaRuntime | None, settings: dict[str, Any]
    ) -> ClinicalAnalysis:
        protocols = settings.get("clinical_protocols")
        budget = float(settings.get("clinical_time_budget_s") or TIME_BUDGET_S)
        try:
            return analyse(text, llm, Path(protocols) if protocols else None, budget)
        except ConfigError as exc:
            raise EngineError(f"clinical_text: protocol files: {exc}") from exc

    def _write_sr(self, ctx: EngineContext, analysis: ClinicalAnalysis) -> None:
        cts = read_ct_headers(ctx.input_files)
        if not cts:
            ctx.notes.append("clinical_text: no CT among the inputs, strategy SR not written")
            return
        sources = [
            f"{d.source} (received {d.received_at or 'unknown'})" for d in ctx.clinical_documents
        ]
        sr = make_clinical_sr(cts, analysis.to_json(), sources)
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.output_dir / f"SR_{sr.SOPInstanceUID}.dcm"
        sr.save_as(path, enforce_file_format=True)
        ctx.outputs.append(path)
        logger.info("job %d: clinical strategy SR %s", ctx.job_id, path.name)

    def _runtime(self, settings: dict[str, Any]) -> tuple[LlamaRuntime | None, str]:
        """The worker's model (loaded once), or None with a note when the default model is
        missing or cannot start. An explicitly configured model that cannot is an error."""
        spec = str(settings.get("clinical_llm_model") or BUNDLED)
        if spec.lower() == NONE:
            return None, ""
        model = resolve_model(spec) or ""
        try:
            return self._loaded(model, settings.get("clinical_llm_threads")), ""
        except (LLMUnavailable, LLMError) as exc:
            if "clinical_llm_model" in settings:
                raise EngineError(f"clinical_text: LLM {spec}: {exc}") from exc
            return None, f"default LLM unavailable ({exc}): deterministic only"

    def _loaded(self, model: str, threads: Any) -> LlamaRuntime:
        """The runtime for ``model``, loaded and timed once per worker process."""
        available(model)
        if self._llm is None or str(self._llm.model_path) != model:
            self._llm = None
            runtime = LlamaRuntime(model, n_threads=int(threads) if threads else None)
            probe(runtime, load=True)  # load now and learn this machine's speed
            self._llm = runtime
        return self._llm
