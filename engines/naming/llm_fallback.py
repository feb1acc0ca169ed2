"""Ask the LLM to choose among the rules' candidates, then check its answer.

The LLM sees the raw name and the vocabulary names the rules shortlisted; the JSON schema's
``enum`` lets it answer only one of them or ``keep``. Its answer is used only when its
laterality equals what the rules parsed and it shares a specific anatomy word with the name
(the category is plausible); otherwise the decision abstains and says why.
"""

from __future__ import annotations

import logging
from typing import Any

from engines.llm.runtime import JsonGenerator, LLMError
from engines.naming.decision import LLM, Decision, abstain
from engines.naming.matcher import GENERIC_WORDS, Matcher

logger = logging.getLogger(__name__)

KEEP = "keep"
LLM_CONFIDENCE = 0.6


def llm_schema(candidates: tuple[str, ...]) -> dict[str, Any]:
    """JSON schema whose only field is a closed choice among ``candidates`` and ``keep``."""
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": [*candidates, KEEP]}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def llm_prompt(raw: str, candidates: tuple[str, ...]) -> str:
    listed = ", ".join(candidates)
    return (
        "A radiotherapy structure set contains a structure named "
        f'"{raw}". Which AAPM TG-263 name means the same structure? '
        f"Choose one of: {listed}. Answer keep if none of them is the same structure.\n"
        'Reply as JSON: {"answer": "<name>"}'
    )


def ask_llm(
    generator: JsonGenerator,
    matcher: Matcher,
    decision: Decision,
    timeout_s: float = 30.0,
) -> Decision:
    """The LLM's validated choice for an abstained ``decision`` that has candidates."""
    raw, candidates = decision.old_name, decision.candidates
    try:
        reply = generator.generate_json(
            llm_prompt(raw, candidates), llm_schema(candidates), 24, timeout_s
        )
    except LLMError as exc:
        logger.warning("LLM failed for %r: %s", raw, exc)
        return abstain(raw, f"{decision.reason}; LLM failed: {exc}")
    answer = str(reply.get("answer", ""))
    problem = validate_answer(matcher, raw, answer, candidates)
    if problem:
        return abstain(raw, f"{decision.reason}; LLM answer {answer!r} rejected: {problem}")
    return Decision(
        raw,
        answer,
        LLM,
        LLM_CONFIDENCE,
        f"LLM chose among {len(candidates)}",
        candidates=candidates,
    )


def validate_answer(matcher: Matcher, raw: str, answer: str, candidates: tuple[str, ...]) -> str:
    """Why ``answer`` must not be used ("" when it may)."""
    if answer == KEEP:
        return "the LLM kept the name"
    if answer not in candidates:
        return "not among the candidates"
    structure = matcher.vocabulary.structure(answer)
    if structure is None:
        return "not a vocabulary name"
    parsed = matcher.parse(raw)
    if parsed.unknown:
        return f"the name has words the vocabulary does not know {parsed.unknown}"
    side = parsed.side or "".join(sorted(parsed.weak_sides))
    if structure.side != side:
        return f"laterality {structure.side or 'none'} but the name says {side or 'none'}"
    specific = set(parsed.anatomy) - GENERIC_WORDS
    missing = specific - matcher.words_of(structure.base)
    if not specific or missing:
        return f"category {structure.category} does not fit the words {sorted(missing)}"
    return ""
