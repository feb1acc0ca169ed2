"""The answer for one structure name: new name, how it was found, and how sure."""

from __future__ import annotations

from dataclasses import dataclass, field

# method values, from most to least certain
OVERRIDE = "override"  # the site's overrides file
COMPLIANT = "compliant"  # already a TG-263 name (or TG-263 syntax): unchanged
EXACT = "exact"  # the name's own words are a vocabulary name's words (case, separators)
RULES = "rules"  # synonyms, abbreviations, laterality, PRV, versions
FUZZY = "fuzzy"  # as rules, after repairing a misspelt or glued word
TARGET = "target"  # GTV/CTV/ITV/PTV with classifier, index, level, dose
LLM = "llm"  # the local LLM chose among rule candidates; validated
ABSTAIN = "abstain"  # kept as is

METHODS = (OVERRIDE, COMPLIANT, EXACT, RULES, FUZZY, TARGET, LLM, ABSTAIN)


@dataclass(frozen=True)
class Decision:
    """How one structure name is renamed.

    ``new_name == old_name`` whenever ``method`` is ``abstain`` or ``compliant``.
    ``candidates`` lists the vocabulary names the rules could not choose between (what an
    LLM may choose from); ``reason`` says why, in words, for reports and the audit.
    """

    old_name: str
    new_name: str
    method: str
    confidence: float
    reason: str = ""
    side: str = ""
    modifiers: tuple[str, ...] = ()
    candidates: tuple[str, ...] = field(default=(), compare=False)

    @property
    def renamed(self) -> bool:
        return self.new_name != self.old_name

    @property
    def abstained(self) -> bool:
        return self.method == ABSTAIN

    def as_row(self) -> dict[str, str]:
        """Plain fields for CSV reports and job notes."""
        return {
            "old_name": self.old_name,
            "new_name": self.new_name,
            "method": self.method,
            "confidence": f"{self.confidence:.2f}",
            "reason": self.reason,
        }


def abstain(name: str, reason: str, candidates: tuple[str, ...] = ()) -> Decision:
    """Keep ``name``; ``reason`` says why."""
    return Decision(name, name, ABSTAIN, 0.0, reason=reason, candidates=candidates)
