"""The renamer: overrides, then compliance, then rules, then (optionally) the LLM.

This is the one entry point the engine, the CLI and the evaluation use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from engines.llm.runtime import JsonGenerator
from engines.naming.compliance import ComplianceChecker
from engines.naming.decision import COMPLIANT, OVERRIDE, Decision
from engines.naming.llm_fallback import ask_llm
from engines.naming.matcher import Matcher
from engines.naming.overrides import Overrides, load_overrides
from engines.naming.vocabulary import RGB, Vocabulary, load_vocabulary

logger = logging.getLogger(__name__)

_PRV_SUFFIX = re.compile(r"_PRV\d*")
_TARGET = re.compile(r"^(GTV|CTV|ITV|PTV)")
_TARGET_TYPES = {"GTV": "GTV", "CTV": "CTV", "ITV": "CTV", "PTV": "PTV"}


@dataclass
class RenamerStats:
    """Counts for reports: how many names reached the LLM and how many it settled."""

    names: int = 0
    llm_eligible: int = 0
    llm_calls: int = 0
    llm_accepted: int = 0
    methods: dict[str, int] = field(default_factory=dict)


class Renamer:
    """Decides TG-263 names; build once per vocabulary/overrides, reuse for many names.

    ``llm`` is any :class:`~engines.llm.runtime.JsonGenerator` (``None``: rules only). Names
    the rules leave with candidates are counted as LLM-eligible either way.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        overrides: Overrides | None = None,
        llm: JsonGenerator | None = None,
        llm_timeout_s: float = 30.0,
    ) -> None:
        self.vocabulary = vocabulary
        self.overrides = overrides or Overrides()
        self.matcher = Matcher(vocabulary)
        side_words = vocabulary.model.laterality.left + vocabulary.model.laterality.right
        self.compliance = ComplianceChecker(vocabulary.names, side_words)
        self.llm = llm
        self.llm_timeout_s = llm_timeout_s
        self.stats = RenamerStats()

    @classmethod
    def from_paths(
        cls,
        vocabulary: Path | str | None = None,
        worksheet: Path | str | None = None,
        overrides: Path | str | None = None,
        llm: JsonGenerator | None = None,
    ) -> Renamer:
        return cls(load_vocabulary(vocabulary, worksheet), load_overrides(overrides), llm)

    def decide(self, name: str) -> Decision:
        """The decision for one structure name (never raises on odd text)."""
        decision = self._decide(name)
        self.stats.names += 1
        self.stats.methods[decision.method] = self.stats.methods.get(decision.method, 0) + 1
        return decision

    def _decide(self, name: str) -> Decision:
        override = self.overrides.lookup(name)
        if override is not None:
            return Decision(name, override, OVERRIDE, 1.0, "site override")
        if self.compliance.is_compliant(name):
            return Decision(name, name, COMPLIANT, 1.0, "already TG-263")
        decision = self.matcher.decide(name)
        if not decision.abstained or not decision.candidates:
            return decision
        self.stats.llm_eligible += 1
        if self.llm is None:
            return decision
        self.stats.llm_calls += 1
        answered = ask_llm(self.llm, self.matcher, decision, self.llm_timeout_s)
        self.stats.llm_accepted += int(not answered.abstained)
        return answered

    def colour(self, name: str) -> RGB | None:
        """Display colour for a TG-263 name: overrides, vocabulary, PRV base, target type."""
        for candidate in (name, _PRV_SUFFIX.sub("", name), _target_type(name)):
            if candidate:
                rgb = self.overrides.colour(candidate) or self.vocabulary.colour(candidate)
                if rgb is not None:
                    return rgb
        return None

    def interpreted_type(self, name: str) -> str | None:
        """RT ROI Interpreted Type for a TG-263 name (PRVs are AVOIDANCE)."""
        if _PRV_SUFFIX.search(name):
            return "AVOIDANCE"
        target = _target_type(name)
        if target:
            return _TARGET_TYPES[target]
        entry = self.vocabulary.structure(name)
        return entry.interpreted_type if entry is not None else None


def _target_type(name: str) -> str:
    match = _TARGET.match(name)
    return match.group(1) if match else ""
