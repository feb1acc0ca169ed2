"""``analyse``: one note in, facts + disagreements + strategy + summary out (the text stage).

The deterministic path always runs; the LLM, when given, runs inside a time budget (the
text stage must stay within a few seconds per case), and its failures or timeouts leave
the deterministic result in place with a note saying so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.clinical import budget, llm_extract, summary
from engines.clinical.facts import FACT_FIELDS, ClinicalFacts
from engines.clinical.protocols import DEFAULT_DIR, Protocol, load_protocols
from engines.clinical.reconcile import Disagreement, reconcile, reported
from engines.clinical.rules import extract
from engines.clinical.strategy import Strategy, decide
from engines.clinical.text import Note
from engines.llm.runtime import JsonGenerator, LLMError

logger = logging.getLogger(__name__)

TIME_BUDGET_S = 5.0  # the whole text stage, LLM included
FACTS_SHARE = 0.7  # of the budget, for the LLM facts; the narrative gets what is left
MIN_NARRATIVE_S = 1.0
# kept back from the narrative's share: the deadline is checked between tokens, so a call
# cut at it returns a token later (without the reserve, a note took 5.02-5.03 s with a 5 s
# budget on the 2-core VM)
FINISH_RESERVE_S = 0.1
_BREAST_KEYS = ("breast_or_chestwall", "regional_nodes", "scl_guideline", "dose", "boost")
_PROSTATE_KEYS = ("target", "seminal_vesicles", "pelvic_nodes", "risk_group", "dose")


@dataclass
class ClinicalAnalysis:
    """The text stage's result; :meth:`to_json` is what ``rtnode clinical --json`` prints."""

    facts: ClinicalFacts
    disagreements: list[Disagreement]
    strategy: Strategy | None
    summary: str
    summary_source: str  # "template" or "llm"
    notes: list[str] = field(default_factory=list)
    llm_used: bool = False
    llm_filled: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: reported(self.facts, name) for name in FACT_FIELDS}
        out["grade_group"] = self.facts.effective_grade_group()
        out["nodes_positive"] = self.facts.nodes_positive
        out["disagreements"] = [d.to_json() for d in self.disagreements]
        out["strategy"] = self._strategy_json()
        values = self.strategy.values if self.strategy else {}
        out["risk_group"] = values.get("risk_group")
        out["dose"] = out["strategy"].get("dose")
        out["protocol_rules"] = dict(self.strategy.rules) if self.strategy else {}
        out["summary"] = self.summary
        out["summary_source"] = self.summary_source
        out["evidence"] = {k: self._evidence(k, e) for k, e in self.facts.evidence.items()}
        out["stages"] = [s.to_json() for s in self.facts.stages]
        out["llm_used"] = self.llm_used
        out["notes"] = list(self.notes)
        out["seconds"] = round(self.seconds, 3)
        return out

    def _strategy_json(self) -> dict[str, Any]:
        if self.strategy is None:
            return {}
        keys = _BREAST_KEYS if self.strategy.site == "breast" else _PROSTATE_KEYS
        values = self.strategy.to_json()
        out = {k: values.get(k) for k in keys}
        out["protocol"] = self.strategy.protocol
        out["nodal_stage"] = self.strategy.nodal_stage
        return out

    def _evidence(self, name: str, evidence: Any) -> dict[str, Any]:
        source = "llm" if name in self.llm_filled else "rules"
        return {**evidence.to_json(), "source": source}


def analyse(
    text: str,
    llm: JsonGenerator | None,
    protocols_dir: Path | None = None,
    time_budget_s: float = TIME_BUDGET_S,
) -> ClinicalAnalysis:
    """Facts (rules, then LLM where the rules found nothing), strategy and summary of ``text``.

    ``llm`` is a :class:`engines.llm.LlamaRuntime` or :class:`engines.llm.LLMWorker` (or
    None: deterministic only); ``protocols_dir`` holds ``breast.yaml``/``prostate.yaml``;
    ``time_budget_s`` bounds the LLM steps (the deterministic path never waits for them).
    """
    started = time.monotonic()
    notes: list[str] = []
    facts, disagreements, filled, llm_used = _facts(text, llm, time_budget_s * FACTS_SHARE, notes)
    strategy = _strategy(facts, protocols_dir, notes)
    template = summary.template_summary(facts, strategy)
    narrative, source = template, "template"
    if llm is not None and llm_used:
        left = time_budget_s - (time.monotonic() - started) - FINISH_RESERVE_S
        narrative, source = _narrative(llm, template, left, notes, disagreements)
    _note_masked(text, notes)
    seconds = time.monotonic() - started
    return ClinicalAnalysis(
        facts, disagreements, strategy, narrative, source, notes, llm_used, filled, seconds
    )


def _facts(
    text: str, llm: JsonGenerator | None, budget_s: float, notes: list[str]
) -> tuple[ClinicalFacts, list[Disagreement], list[str], bool]:
    """Rules facts, reconciled with the LLM's when it answers in ``budget_s``."""
    rules_facts = extract(text)
    if llm is None:
        notes.append("LLM not used (no model configured): deterministic extraction only")
        return rules_facts, [], [], False
    reply = _ask_facts(llm, text, rules_facts, budget_s, notes)
    if reply is None:
        return rules_facts, [], [], False
    facts, disagreements, filled = reconcile(rules_facts, reply, Note.from_text(text))
    return facts, disagreements, filled, True


def facts_request_for(text: str) -> tuple[str, int]:
    """Prompt and token limit of the facts call ``analyse`` would make for ``text``."""
    facts = extract(text)
    fields = llm_extract.fields_to_ask(facts.site, {n: facts.value(n) for n in FACT_FIELDS})
    prompt, _, max_tokens = llm_extract.facts_request(text, fields)
    return prompt, max_tokens


def _ask_facts(
    llm: JsonGenerator, text: str, facts: ClinicalFacts, timeout_s: float, notes: list[str]
) -> dict[str, Any] | None:
    found = {name: facts.value(name) for name in FACT_FIELDS}
    fields = llm_extract.fields_to_ask(facts.site, found)
    prompt, schema, max_tokens = llm_extract.facts_request(text, fields)
    if not _admitted(llm, prompt, max_tokens, timeout_s, "facts", notes):
        return None
    notes.append(f"LLM asked for: {', '.join(fields)}")
    try:
        reply = budget.timed_generate(llm, prompt, schema, max_tokens, max(timeout_s, 0.5))
    except LLMError as exc:
        notes.append(f"LLM facts not used ({exc}): deterministic extraction only")
        logger.warning("clinical LLM facts failed: %s", exc)
        return None
    return llm_extract.normalise(reply, fields)


def _admitted(
    llm: JsonGenerator, prompt: str, max_tokens: int, left_s: float, what: str, notes: list[str]
) -> bool:
    """Whether the call is expected to finish in ``left_s`` (re-measuring a stale speed)."""
    if budget.is_stale(llm) and left_s > 2 * MIN_NARRATIVE_S:
        try:
            budget.probe(llm, timeout_s=left_s)
        except LLMError as exc:
            notes.append(f"LLM {what} not used (probe failed: {exc})")
            return False
    expected = budget.predicted_s(llm, prompt, max_tokens)
    if expected is not None and expected > left_s:
        notes.append(
            f"LLM {what} skipped: expected {expected:.1f} s on this machine, "
            f"{max(left_s, 0):.1f} s of the time budget left"
        )
        return False
    return True


def _narrative(
    llm: JsonGenerator,
    template: str,
    timeout_s: float,
    notes: list[str],
    disagreements: list[Disagreement],
) -> tuple[str, str]:
    prompt, schema, max_tokens = summary.narrative_request(template)
    if timeout_s < MIN_NARRATIVE_S or not _admitted(
        llm, prompt, max_tokens, timeout_s, "narrative", notes
    ):
        notes.append("template summary used")
        return template, "template"
    try:
        reply = budget.timed_generate(llm, prompt, schema, max_tokens, timeout_s)
    except LLMError as exc:
        notes.append(f"LLM narrative failed ({exc}): template summary used")
        return template, "template"
    narrative = str(reply.get("summary", "")).strip()
    problem = summary.narrative_problem(narrative, template)
    if problem:
        reason = f"LLM narrative rejected: {problem}"
        disagreements.append(Disagreement("summary", template, narrative, template, reason))
        notes.append(f"{reason}; template summary used")
        return template, "template"
    return narrative, "llm"


def _strategy(
    facts: ClinicalFacts, protocols_dir: Path | None, notes: list[str]
) -> Strategy | None:
    if facts.site is None:
        notes.append("site not recognised (breast or prostate): no strategy")
        return None
    protocol = protocols_for(protocols_dir or DEFAULT_DIR).get(facts.site)
    if protocol is None:
        notes.append(f"no {facts.site} protocol in {protocols_dir}: no strategy")
        return None
    if (facts.M or "").startswith("M1"):
        notes.append(
            f"{facts.M}: distant metastases; the protocol's locoregional strategy assumes "
            "curative intent, review the intent"
        )
    return decide(facts, protocol)


_CACHE: dict[tuple[str, tuple[float, ...]], dict[str, Protocol]] = {}


def protocols_for(directory: Path) -> dict[str, Protocol]:
    """The protocols of ``directory``, read again only when a file changed."""
    stamps = tuple(p.stat().st_mtime for p in sorted(directory.glob("*.yaml")))
    key = (str(directory.resolve()), stamps)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_protocols(directory)
    return _CACHE[key]


def _note_masked(text: str, notes: list[str]) -> None:
    masked = Note.from_text(text).masked
    if masked:
        notes.append(f"{len(masked)} instruction-like sentence(s) in the note ignored")
