"""The clinical summary (RO-LMM-S): a deterministic template, and an optional LLM narrative
accepted only when every number, stage and side it states comes from the facts/strategy."""

from __future__ import annotations

import re
from typing import Any

from engines.clinical.facts import ClinicalFacts
from engines.clinical.strategy import Strategy

MAX_CHARS = 320
MAX_TOKENS = 96
_STAGE_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:yp|yc|c|p)?[TNM](?:is|[0-4][a-d]?|x|X)(?:mi)?\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_SIDE = re.compile(r"\b(left|right|bilateral)\b", re.IGNORECASE)
# Words that name a category the facts decide: a narrative may use only those the
# template uses (no "mastectomy" after breast-conserving surgery, no "prostate" for breast).
_CATEGORY_WORDS = re.compile(
    r"\b(mastectom\w*|lumpectom\w*|breast-conserving|prostatectom\w*|prostate|breast|"
    r"chest wall|neoadjuvant|seminal vesicle\w*|pelvic nodes?|regional nodes?|RTOG|ESTRO|"
    r"low|intermediate|high)\b",
    re.IGNORECASE,
)
_RISK_WORDS = {
    "very_low": "very low",
    "low": "low",
    "intermediate_favourable": "favourable intermediate",
    "intermediate_unfavourable": "unfavourable intermediate",
    "high": "high",
    "very_high": "very high",
    "unknown": "undetermined",
}
_SURGERY_WORDS = {
    "BCS": "breast-conserving surgery",
    "mastectomy": "mastectomy",
    "prostatectomy": "radical prostatectomy",
}


def template_summary(facts: ClinicalFacts, strategy: Strategy | None) -> str:
    """A short summary written from the facts and strategy alone."""
    parts = [_who(facts), _stage(facts), _treatment(facts)]
    if facts.site == "prostate":
        parts.append(_prostate(facts))
    if strategy is not None:
        parts.append(_plan(strategy))
    return " ".join(p for p in parts if p)


def _who(facts: ClinicalFacts) -> str:
    age = f"{facts.age}-year-old patient" if facts.age is not None else "Patient"
    side = f"{facts.laterality} " if facts.laterality else ""
    site = f"{facts.site} cancer" if facts.site else "cancer of unstated site"
    return f"{age} with {side}{site}."


def _stage(facts: ClinicalFacts) -> str:
    stages = [s.prefix + s.value for s in facts.stages if not s.in_history]
    unique = list(dict.fromkeys(stages))
    return f"Stages as written: {' '.join(unique)}." if unique else "No TNM stage stated."


def _treatment(facts: ClinicalFacts) -> str:
    words = []
    if facts.neoadjuvant:
        words.append("neoadjuvant therapy")
    if facts.surgery:
        words.append(_SURGERY_WORDS[facts.surgery])
    return f"Treated with {' then '.join(words)}." if words else "No surgery stated."


def _prostate(facts: ClinicalFacts) -> str:
    items = []
    if facts.psa is not None:
        items.append(f"PSA {facts.psa:g} ng/mL")
    if facts.gleason:
        items.append(f"Gleason {facts.gleason}")
    if facts.effective_grade_group() is not None:
        items.append(f"grade group {facts.effective_grade_group()}")
    items.append("seminal vesicle invasion" if facts.svi else "no seminal vesicle invasion stated")
    text = ", ".join(items)
    return text[:1].upper() + text[1:] + "."


def _plan(strategy: Strategy) -> str:
    v = strategy.values
    if strategy.site == "breast":
        nodes = (
            f"with regional nodes ({v['scl_guideline']})"
            if v["regional_nodes"]
            else ("without regional nodes")
        )
        text = (
            f"Suggested RT: {v['breast_or_chestwall'].replace('chestwall', 'chest wall')} {nodes}"
        )
    else:
        risk = _RISK_WORDS.get(str(v["risk_group"]), str(v["risk_group"]))
        extras = [
            n
            for n, k in (("seminal vesicles", "seminal_vesicles"), ("pelvic nodes", "pelvic_nodes"))
            if v[k]
        ]
        target = v["target"].replace("_", " ")
        text = f"NCCN {risk} risk. Suggested RT: {' + '.join([target, *extras])}"
    dose = v.get("dose")
    if dose is not None:
        text += ", " + "; ".join(_prescription(p) for p in dose.prescriptions)
    boost = v.get("boost")
    if boost is not None:
        text += ", boost " + "; ".join(_prescription(p) for p in boost.prescriptions)
    return text + f" (protocol {strategy.protocol})."


def _prescription(p: Any) -> str:
    return f"{p.dose_gy:g} Gy in {p.fractions} fractions to {p.target.replace('_', ' ')}"


# -- LLM narrative ---------------------------------------------------------------------------


def narrative_schema() -> dict[str, Any]:
    """One string, bounded."""
    return {
        "type": "object",
        "properties": {"summary": {"type": "string", "minLength": 20, "maxLength": MAX_CHARS}},
        "required": ["summary"],
        "additionalProperties": False,
    }


def narrative_prompt(template: str) -> str:
    return (
        "Rewrite these verified facts as a short clinical summary for a radiation oncologist, "
        "in two sentences. Use only the numbers and stages given.\n"
        f"Facts: {template}"
    )


def narrative_request(template: str) -> tuple[str, dict[str, Any], int]:
    """Prompt, schema and token limit of the narrative call."""
    return narrative_prompt(template), narrative_schema(), MAX_TOKENS


def narrative_problem(narrative: str, template: str) -> str:
    """Why ``narrative`` must not be used ("" when every number, stage, side and category
    term it states also occurs in the deterministic ``template``)."""
    if len(narrative) < 20:
        return "narrative empty or too short"
    problems = []
    for name, regex in (("stages", _STAGE_TOKEN), ("sides", _SIDE), ("terms", _CATEGORY_WORDS)):
        extra = _tokens(regex, narrative) - _tokens(regex, template)
        if extra:
            problems.append(f"{name} not in the facts: {sorted(extra)}")
    without_stages = _STAGE_TOKEN.sub(" ", narrative)
    numbers = _numbers(without_stages) - _numbers(_STAGE_TOKEN.sub(" ", template))
    if numbers:
        problems.append(f"numbers not in the facts: {sorted(numbers)}")
    return "; ".join(problems)


def _tokens(regex: re.Pattern[str], text: str) -> set[str]:
    return {m.group(0).lower() for m in regex.finditer(text)}


def _numbers(text: str) -> set[float]:
    return {float(m.group(0).replace(",", ".")) for m in _NUMBER.finditer(text)}
