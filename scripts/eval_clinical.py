"""Evidence for the clinical text stage (docs/clinical.md): run from the repository root.

    .venv/bin/python scripts/eval_clinical.py [--notes DIR] [--llm-model bundled|PATH|none]
        [--llm-cases N] [--threads N] [--budget S] [--llm-alone]

Prints, on the labelled notes: field accuracy of the deterministic path (laterality %,
T/N/M/surgery at category level, the other fields) and seconds per case; then, on the first
N notes, the full text stage with the LLM inside its time budget (seconds per case, how
often the model answered in time, accuracy of the reconciled result), with ``--llm-alone``
the LLM asked every field without a budget (its own accuracy and latency); and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.clinical.analysis import TIME_BUDGET_S, analyse
from engines.clinical.budget import probe
from engines.clinical.evaluation import Case, Scores, read_cases, score
from engines.clinical.facts import FACT_FIELDS
from engines.clinical.llm_extract import ask_facts
from engines.llm.models import resolve_model
from engines.llm.runtime import LlamaRuntime, LLMError

DEFAULT_NOTES = Path(__file__).resolve().parents[1] / "tests" / "data" / "clinical_notes"
MANDATORY = ("laterality", "T", "N", "M", "surgery")


def rules_only(text: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = analyse(text, None).to_json()
    return result, time.perf_counter() - started


def show(title: str, scores: Scores) -> None:
    print(f"## {title}")
    for line in scores.lines():
        print(line)
    for miss in scores.misses:
        print(f"  miss: {miss}")


def with_llm(cases: list[Case], llm: LlamaRuntime, budget_s: float) -> None:
    answered = narratives = disagreements = 0

    def run(text: str) -> tuple[dict[str, Any], float]:
        nonlocal answered, narratives, disagreements
        started = time.perf_counter()
        result = analyse(text, llm, time_budget_s=budget_s).to_json()
        answered += int(result["llm_used"])
        narratives += int(result["summary_source"] == "llm")
        disagreements += len(result["disagreements"])
        return result, time.perf_counter() - started

    scores = score(cases, run)
    show(f"text stage with the LLM, budget {budget_s:g} s ({len(cases)} notes)", scores)
    print(
        f"  LLM facts answered: {answered}/{len(cases)}; LLM narratives used: "
        f"{narratives}/{len(cases)}; disagreements reported: {disagreements}"
    )


def llm_alone(cases: list[Case], llm: LlamaRuntime) -> None:
    failures = 0

    def run(text: str) -> tuple[dict[str, Any], float]:
        nonlocal failures
        started = time.perf_counter()
        try:
            reply = ask_facts(llm, text, FACT_FIELDS, timeout_s=300)
        except LLMError:
            failures += 1
            reply = {}
        return reply, time.perf_counter() - started

    scores = score(cases, run)
    show(f"LLM alone, every field, no budget ({len(cases)} notes)", scores)
    print(f"  LLM failures (bad or truncated output): {failures}")


def machine(threads: int | None) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## machine")
    print(f"  {platform.platform()}, python {platform.python_version()}")
    print(f"  {os.cpu_count()} CPU cores, load average {load}, llama.cpp threads {threads}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, default=DEFAULT_NOTES)
    parser.add_argument("--llm-model", default="bundled")
    parser.add_argument("--llm-cases", type=int, default=10, help="notes run with the LLM")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument(
        "--llm-alone", action="store_true", help="also ask the LLM every field without a budget"
    )
    parser.add_argument("--budget", type=float, default=TIME_BUDGET_S, help="text stage budget")
    args = parser.parse_args()
    cases = read_cases(args.notes)
    scores = score(cases, rules_only)
    show(f"deterministic path ({len(cases)} notes)", scores)
    worst = min(scores.percent(f) for f in MANDATORY)
    print(
        f"  laterality {scores.percent('laterality'):.1f} %, worst of T/N/M/surgery {worst:.1f} %"
    )
    model = resolve_model(None if args.llm_model == "none" else args.llm_model)
    llm = None
    if model and args.llm_cases > 0:
        llm = LlamaRuntime(model, n_threads=args.threads)
        probe(llm, load=True)  # as the engine does once per worker
        subset = cases[:: max(1, len(cases) // args.llm_cases)][: args.llm_cases]
        with_llm(subset, llm, args.budget)
        if args.llm_alone:
            llm_alone(subset, llm)
    machine(llm.n_threads if llm else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
