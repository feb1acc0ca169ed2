"""Rules and LLM facts reconciled: the rules carry the result; an LLM value fills a field
only where the rules found nothing and the value literally occurs in the note (outside any
blanked instruction text). Every field where the two differ is reported, never hidden."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.clinical.facts import FACT_FIELDS, ClinicalFacts, Evidence
from engines.clinical.surgery import PATTERNS as SURGERY_PATTERNS
from engines.clinical.text import Note

BOOLEAN_FIELDS = ("neoadjuvant", "svi")
_BOOLEAN_WORDS = {
    "neoadjuvant": re.compile(r"neo-?adjuvant|pre-?operative|\bNACT\b|\byp[TN]", re.IGNORECASE),
    "svi": re.compile(r"seminal\s+vesic|\bSVI\b|T3b", re.IGNORECASE),
}


@dataclass(frozen=True)
class Disagreement:
    """One field where rules and LLM differ: both values, the one used, and why."""

    field: str
    rules: Any
    llm: Any
    used: Any
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "rules": self.rules,
            "llm": self.llm,
            "used": self.used,
            "reason": self.reason,
        }


def reported(facts: ClinicalFacts, name: str) -> Any:
    """A field as the output reports it (booleans never null)."""
    value = facts.value(name)
    return bool(value) if name in BOOLEAN_FIELDS else value


def reconcile(
    facts: ClinicalFacts, llm: dict[str, Any], note: Note
) -> tuple[ClinicalFacts, list[Disagreement], list[str]]:
    """The merged facts, the disagreements, and the fields the LLM filled (``llm`` holds
    the fields the model was asked)."""
    merged = copy.deepcopy(facts)
    disagreements: list[Disagreement] = []
    filled: list[str] = []
    for name in (f for f in FACT_FIELDS if f in llm):
        ours, theirs = reported(facts, name), llm[name]
        if _same(ours, theirs):
            continue
        if facts.value(name) is not None:
            disagreements.append(Disagreement(name, ours, theirs, ours, "rules value kept"))
            continue
        evidence = literal_evidence(name, theirs, note)
        if evidence is None:
            reason = "LLM value not found in the note: rejected"
            disagreements.append(Disagreement(name, ours, theirs, ours, reason))
            continue
        setattr(merged, name, theirs)
        merged.evidence[name] = evidence
        filled.append(name)
        reason = "rules found nothing; LLM value occurs in the note: used"
        disagreements.append(Disagreement(name, ours, theirs, theirs, reason))
    return merged, disagreements, filled


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) and isinstance(theirs, (int, float)):
        return abs(ours - float(theirs)) < 1e-6
    return bool(ours == theirs)


def literal_evidence(name: str, value: Any, note: Note) -> Evidence | None:
    """Where ``value`` of field ``name`` occurs in the note, or None (then it is not used)."""
    if value is None or value is False:
        return None
    pattern = _CHECKS[name](value)
    match = pattern.search(note.text) if pattern is not None else None
    if match is None:
        return None
    return Evidence(note.original[match.start() : match.end()], match.start(), match.end())


def _word(value: Any) -> re.Pattern[str] | None:
    return re.compile(rf"\b{re.escape(str(value))}\b", re.IGNORECASE)


def _stage(value: Any) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9])(yp|c|p)?{re.escape(str(value))}(?![0-9a-z])")


def _number(value: Any) -> re.Pattern[str]:
    whole, _, frac = f"{float(value):g}".partition(".")
    decimals = rf"[.,]{frac}\d*" if frac else r"(?:[.,]0+)?"
    return re.compile(rf"(?<![\d.,]){whole}{decimals}(?![\d])")


def _gleason(value: Any) -> re.Pattern[str]:
    primary, _, secondary = str(value).partition("+")
    return re.compile(rf"(?<!\d){primary}\s*\+\s*{secondary}(?!\d)")


def _boolean(name: str) -> Callable[[Any], re.Pattern[str] | None]:
    return lambda value: _BOOLEAN_WORDS[name] if value is True else None


_CHECKS: dict[str, Callable[[Any], re.Pattern[str] | None]] = {
    "site": _word,
    "laterality": _word,
    "T": _stage,
    "N": _stage,
    "M": _stage,
    "surgery": lambda value: SURGERY_PATTERNS.get(str(value)),
    "age": lambda value: re.compile(rf"(?<![\d.,]){int(value)}(?![\d.,]\d)"),
    "psa": _number,
    "gleason": _gleason,
    "neoadjuvant": _boolean("neoadjuvant"),
    "svi": _boolean("svi"),
}
