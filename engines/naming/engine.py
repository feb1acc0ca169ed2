"""Node engine ``tg263_rename``: RTSTRUCT in, renamed RTSTRUCT + mapping SR out.

Job params (all optional):

- ``tg263_overrides``: path of the site's overrides file (wins over everything),
- ``tg263_vocabulary``: vocabulary file (default ``config/tg263.yaml``),
- ``tg263_worksheet``: AAPM TG-263 worksheet (CSV/XLS) whose names count as compliant,
- ``tg263_llm_model``: GGUF model for the LLM fallback, or ``bundled`` (default: none,
  rules only).

The LLM, when configured, runs in this worker process (engines run only in worker
processes) and is loaded once per worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pydicom
from pydicom.errors import InvalidDicomError

from engines.base import EngineContext, EngineError
from engines.llm.models import resolve_model
from engines.llm.runtime import LlamaRuntime, LLMUnavailable, available
from engines.naming.overrides import OverridesError, load_overrides
from engines.naming.renamer import Renamer
from engines.naming.report_sr import make_mapping_sr
from engines.naming.rtstruct import (
    RoiMapping,
    RTStructError,
    StyleSource,
    decide_rois,
    is_rtstruct,
    rename_structure_set,
)
from engines.naming.vocabulary import VocabularyError, load_vocabulary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    """What renaming one RTSTRUCT file produced (``renamed``/``report`` unset on dry runs)."""

    source: Path
    mappings: list[RoiMapping]
    renamed: Path | None = None
    report: Path | None = None


def read_rtstruct(path: Path) -> pydicom.Dataset | None:
    """The dataset at ``path`` if it is an RT Structure Set, else ``None``."""
    try:
        ds = pydicom.dcmread(path, force=False)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return None
    return ds if is_rtstruct(ds) else None


def rename_rtstruct(
    source: Path, ds: pydicom.Dataset, renamer: Renamer, output_dir: Path | None
) -> FileResult:
    """Decide every ROI of ``ds``; unless ``output_dir`` is None, write the renamed copy
    and the mapping SR there (named after their SOP Instance UIDs)."""
    mappings = decide_rois(ds, renamer.decide)
    if output_dir is None:
        return FileResult(source, mappings)
    style = StyleSource(renamer.colour, renamer.interpreted_type)
    renamed = rename_structure_set(ds, mappings, style)
    report = make_mapping_sr(ds, renamed.dataset, mappings)
    output_dir.mkdir(parents=True, exist_ok=True)
    renamed_path = output_dir / f"RS_{renamed.dataset.SOPInstanceUID}.dcm"
    report_path = output_dir / f"SR_{report.SOPInstanceUID}.dcm"
    renamed.dataset.save_as(renamed_path, enforce_file_format=True)
    report.save_as(report_path, enforce_file_format=True)
    return FileResult(source, mappings, renamed_path, report_path)


def mapping_note(mapping: RoiMapping) -> str:
    """One job note per ROI (the node audits job notes)."""
    d = mapping.decision
    return (
        f"tg263 roi {mapping.roi_number}: {d.old_name!r} -> {d.new_name!r} "
        f"({d.method}, {d.confidence:.2f})"
    )


class TG263RenameEngine:
    """Renames the structure sets among a job's inputs to TG-263 (see module docstring)."""

    name: ClassVar[str] = "tg263_rename"
    inputs: ClassVar[tuple[str, ...]] = ("rtstruct",)
    outputs: ClassVar[tuple[str, ...]] = ("rtstruct", "sr")

    def __init__(self, **options: Any) -> None:
        self._options = dict(options)
        self._renamers: dict[tuple[str, ...], Renamer] = {}
        self._llm: LlamaRuntime | None = None

    def run(self, ctx: EngineContext) -> None:
        renamer = self._renamer(ctx.params)
        found = [(p, ds) for p in ctx.input_files if (ds := read_rtstruct(p)) is not None]
        if not found:
            raise EngineError("tg263_rename: no RT Structure Set among the job's input files")
        for path, ds in found:
            try:
                result = rename_rtstruct(path, ds, renamer, ctx.output_dir)
            except RTStructError as exc:
                raise EngineError(f"tg263_rename: {path.name}: {exc}") from exc
            ctx.outputs.extend(p for p in (result.renamed, result.report) if p is not None)
            ctx.notes.extend(mapping_note(m) for m in result.mappings)
            logger.info("job %d: %s renamed (%d ROIs)", ctx.job_id, path.name, len(result.mappings))

    def _renamer(self, params: dict[str, Any]) -> Renamer:
        settings = {**self._options, **params}
        keys = ("tg263_vocabulary", "tg263_worksheet", "tg263_overrides", "tg263_llm_model")
        key = tuple(str(settings.get(k) or "") for k in keys)
        if key not in self._renamers:
            self._renamers[key] = self._build(*key)
        return self._renamers[key]

    def _build(self, vocabulary: str, worksheet: str, overrides: str, model: str) -> Renamer:
        try:
            vocab = load_vocabulary(vocabulary or None, worksheet or None)
            site = load_overrides(overrides or None)
            llm = self._llm_runtime(model)
        except (VocabularyError, OverridesError, LLMUnavailable) as exc:
            raise EngineError(f"tg263_rename: {exc}") from exc
        return Renamer(vocab, site, llm)

    def _llm_runtime(self, spec: str) -> LlamaRuntime | None:
        model = resolve_model(spec) or ""
        if not available(model or None):
            return None
        if self._llm is None or str(self._llm.model_path) != model:
            self._llm = LlamaRuntime(model)  # one model per worker, loaded on first use
        return self._llm
