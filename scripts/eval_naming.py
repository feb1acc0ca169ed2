"""Evidence for the TG-263 renamer (docs/naming.md): run from the repository root.

    .venv/bin/python scripts/eval_naming.py [--shared ../shared/data/tg263] [--llm-model PATH|bundled]

Prints: dev-set scores (clean accuracy, wrong renames, abstentions, base-organ accuracy on
modifier rows, LLM-eligible fraction), compliant names unchanged, the unlabeled names run
(errors), throughput without the LLM (fresh renamer, cold caches), and the machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.cli_rename import resolve_model_path
from engines.llm.worker import LLMWorker
from engines.naming.evaluation import evaluate, read_labelled
from engines.naming.renamer import Renamer
from engines.naming.vocabulary import load_vocabulary

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tg263"


def names_in(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def dev_scores(shared: Path, renamer: Renamer) -> None:
    scores, _ = evaluate(renamer, read_labelled(shared / "clinic_names_dev.csv"))
    print("## dev set (clinic_names_dev.csv)")
    for line in scores.lines()[:-1]:
        print(f"- {line}")
    if renamer.llm is not None:
        print(f"- LLM calls: {renamer.stats.llm_calls}, accepted: {renamer.stats.llm_accepted}")
    print("- wrong renames on clean rows (raw -> answer, label):")
    for raw, new, label in scores.wrong_examples:
        print(f"  - {raw!r} -> {new} (label {label})")


def compliant(shared: Path, renamer: Renamer) -> None:
    names = names_in(shared / "tg263_style_parsed_examples.csv", "Structure")
    unchanged = sum(renamer.decide(n).new_name == n for n in names)
    print("## compliant names (tg263_style_parsed_examples.csv)")
    print(f"- unchanged: {unchanged}/{len(names)} ({unchanged / len(names):.2%})")


def unlabeled(shared: Path, renamer: Renamer) -> None:
    names = names_in(shared / "clinic_names_unlabeled.csv", "raw_name")
    errors, renamed = 0, 0
    for name in names:
        try:
            renamed += renamer.decide(name).renamed
        except Exception:  # counted: the evidence is that there are none
            errors += 1
            traceback.print_exc()
    print("## unlabeled names (clinic_names_unlabeled.csv)")
    print(
        f"- names: {len(names)}, errors: {errors}, renamed: {renamed}, kept: {len(names) - renamed}"
    )


def throughput(shared: Path) -> None:
    names = names_in(shared / "clinic_names_dev.csv", "raw_name")
    names += names_in(shared / "clinic_names_unlabeled.csv", "raw_name")
    names += names_in(shared / "tg263_style_parsed_examples.csv", "Structure")
    renamer = Renamer(load_vocabulary())  # fresh: word caches cold
    started = time.perf_counter()
    for name in names:
        renamer.decide(name)
    cold = len(names) / (time.perf_counter() - started)
    started = time.perf_counter()
    for name in names:
        renamer.decide(name)
    warm = len(names) / (time.perf_counter() - started)
    print("## throughput without the LLM (one process, one core)")
    print(
        f"- {len(names)} names: {cold:.0f} names/s first pass (cold caches), {warm:.0f} names/s repeated"
    )


def machine() -> None:
    cpu = platform.processor() or "unknown CPU"
    model = Path("/proc/cpuinfo")
    if model.exists():
        for line in model.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print("## machine")
    print(
        f"- {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--llm-model", help="GGUF path or 'bundled' (LLM fallback on)")
    args = parser.parse_args()
    model = resolve_model_path(args.llm_model)
    llm = LLMWorker(model) if model is not None else None
    try:
        renamer = Renamer(load_vocabulary(), llm=llm)
        dev_scores(args.shared, renamer)
        compliant(args.shared, Renamer(load_vocabulary()))
        unlabeled(args.shared, Renamer(load_vocabulary()))
        throughput(args.shared)
        machine()
    finally:
        if llm is not None:
            llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
