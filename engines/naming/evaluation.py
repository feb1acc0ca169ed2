"""Score the renamer on a labelled CSV (columns raw_name, tg263_name, clean, modifier_flags).

- clean rows (``clean == 1``): *correct* when the new name equals the label, *abstained*
  when the name was kept, *wrong* when it was renamed to anything else;
- rows with ``modifier_flags`` (PRV, opt, ring...), filed under their base organ: correct
  when the base organ of the new name (PRV margin, side order, z/opt dropped) is the label;
- ``NO_SINGLE_TG263_NAME`` labels are right when the name is kept.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engines.naming.decision import Decision
from engines.naming.renamer import Renamer

NO_SINGLE = "NO_SINGLE_TG263_NAME"
_PRV = re.compile(r"_PRV\d*")
_SIDE_AFTER = re.compile(r"^(?P<base>.+?)(?P<mods>(?:_PRV\d*|~)+)_(?P<side>[LR])$")


@dataclass(frozen=True)
class LabelledName:
    raw_name: str
    label: str
    clean: bool
    modifier_flags: str


@dataclass
class Scores:
    """Headline numbers; rates are fractions of their row group."""

    clean_rows: int = 0
    correct: int = 0
    wrong: int = 0
    abstained: int = 0
    modifier_rows: int = 0
    base_correct: int = 0
    names: int = 0
    llm_eligible: int = 0
    llm_calls: int = 0
    seconds: float = 0.0
    wrong_examples: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.clean_rows if self.clean_rows else 0.0

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.clean_rows if self.clean_rows else 0.0

    @property
    def abstention_rate(self) -> float:
        return self.abstained / self.clean_rows if self.clean_rows else 0.0

    @property
    def precision(self) -> float:
        """Correct among the clean rows the renamer answered (abstentions left out)."""
        answered = self.correct + self.wrong
        return self.correct / answered if answered else 0.0

    @property
    def base_accuracy(self) -> float:
        return self.base_correct / self.modifier_rows if self.modifier_rows else 0.0

    @property
    def llm_fraction(self) -> float:
        return self.llm_eligible / self.names if self.names else 0.0

    @property
    def names_per_s(self) -> float:
        return self.names / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        return [
            f"clean rows: {self.clean_rows}",
            f"accuracy (clean): {self.accuracy:.2%} ({self.correct})",
            f"wrong renames (clean): {self.wrong_rate:.2%} ({self.wrong})",
            f"abstentions (clean): {self.abstention_rate:.2%} ({self.abstained})",
            f"precision (clean, answered only): {self.precision:.2%}",
            f"modifier rows: {self.modifier_rows}",
            f"base-organ accuracy (modifier rows): {self.base_accuracy:.2%} ({self.base_correct})",
            f"names sent to the LLM (or eligible): {self.llm_fraction:.2%} ({self.llm_eligible})",
            f"names/s: {self.names_per_s:.0f}",
        ]


def read_labelled(path: Path) -> list[LabelledName]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            LabelledName(
                row["raw_name"],
                row.get("tg263_name", ""),
                str(row.get("clean", "")).strip() == "1",
                row.get("modifier_flags", "") or "",
            )
            for row in csv.DictReader(handle)
        ]


def base_organ(name: str) -> str:
    """``Cochlea_PRV03_L`` -> ``Cochlea_L``; ``SpinalCord_PRV05`` -> ``SpinalCord``."""
    match = _SIDE_AFTER.match(name)
    if match:
        return f"{match['base']}_{match['side']}"
    return _PRV.sub("", name).replace("~", "")


def evaluate(renamer: Renamer, rows: Iterable[LabelledName]) -> tuple[Scores, list[Decision]]:
    """Decide every row and score the decisions (see the module docstring)."""
    rows = list(rows)
    started = time.perf_counter()
    decisions = [renamer.decide(row.raw_name) for row in rows]
    scores = Scores(names=len(rows), seconds=time.perf_counter() - started)
    for row, decision in zip(rows, decisions, strict=True):
        _score(scores, row, decision)
    scores.llm_eligible = renamer.stats.llm_eligible
    scores.llm_calls = renamer.stats.llm_calls
    return scores, decisions


def _score(scores: Scores, row: LabelledName, decision: Decision) -> None:
    new, kept = decision.new_name, not decision.renamed
    right = (kept and row.label == NO_SINGLE) or new == row.label
    if row.clean:
        scores.clean_rows += 1
        if right:
            scores.correct += 1
        elif kept:
            scores.abstained += 1
        else:
            scores.wrong += 1
            scores.wrong_examples.append((row.raw_name, new, row.label))
    if row.modifier_flags:
        scores.modifier_rows += 1
        scores.base_correct += int(right or base_organ(new) == row.label)
