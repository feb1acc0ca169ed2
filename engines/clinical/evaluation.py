"""Scoring the text stage against labelled notes (``scripts/eval_clinical.py``).

Laterality, site, surgery, booleans, age, PSA and Gleason are scored exactly; T, N and M at
category level (``T1c`` counts as ``T1``), as the issue's targets are stated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engines.clinical.facts import FACT_FIELDS, category

CATEGORY_FIELDS = ("T", "N", "M")


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    expected: dict[str, Any]


def read_cases(directory: Path, labels: str = "labels.yaml") -> list[Case]:
    """Every labelled note of ``directory`` (``<name>.txt`` + an entry in ``labels``)."""
    data: dict[str, dict[str, Any]] = yaml.safe_load((directory / labels).read_text())
    return [
        Case(name, (directory / f"{name}.txt").read_text(encoding="utf-8"), expected)
        for name, expected in sorted(data.items())
    ]


def matches(name: str, got: Any, want: Any) -> bool:
    """Whether ``got`` counts as ``want`` for field ``name``."""
    if name in CATEGORY_FIELDS:
        return category(got) == category(want)
    if name == "psa" and got is not None and want is not None:
        return abs(float(got) - float(want)) < 1e-6
    if name in ("neoadjuvant", "svi"):
        return bool(got) == bool(want)
    return bool(got == want)


@dataclass
class Scores:
    """Correct counts per field, the misses, and seconds per case."""

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, case: Case, got: dict[str, Any], seconds: float) -> None:
        self.seconds.append(seconds)
        for name in FACT_FIELDS:
            if name not in case.expected or name not in got:
                continue
            ok = matches(name, got[name], case.expected[name])
            self.total[name] = self.total.get(name, 0) + 1
            self.correct[name] = self.correct.get(name, 0) + int(ok)
            if not ok:
                self.misses.append(
                    f"{case.name}: {name} expected {case.expected[name]!r}, got {got[name]!r}"
                )

    def percent(self, name: str) -> float:
        return 100.0 * self.correct.get(name, 0) / max(1, self.total.get(name, 0))

    def lines(self) -> list[str]:
        out = [
            f"  {name:<12} {self.percent(name):6.1f} %  "
            f"({self.correct.get(name, 0)}/{self.total.get(name, 0)})"
            + ("  [category level]" if name in CATEGORY_FIELDS else "")
            for name in FACT_FIELDS
            if name in self.total
        ]
        if self.seconds:
            mean = sum(self.seconds) / len(self.seconds)
            out.append(
                f"  seconds/case mean {mean:.3f}, max {max(self.seconds):.3f} "
                f"({len(self.seconds)} cases)"
            )
        return out


def score(cases: list[Case], run: Callable[[str], tuple[dict[str, Any], float]]) -> Scores:
    """Run every case through ``run`` (text -> (reported facts, seconds)) and score it."""
    scores = Scores()
    for case in cases:
        got, seconds = run(case.text)
        scores.add(case, got, seconds)
    return scores
