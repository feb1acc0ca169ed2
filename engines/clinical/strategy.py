"""The RT strategy: a protocol's decision rules applied to the facts (no model involved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines.clinical.facts import ClinicalFacts, n_number
from engines.clinical.nodes import n_from_count
from engines.clinical.protocols import AtLeast, Condition, Protocol, Rule


@dataclass(frozen=True)
class Case:
    """The facts a condition reads (ages in years, PSA in ng/mL); None: not in the note."""

    surgery: str
    t: str | None
    n: int | None
    n_stage: str | None
    age: int | None
    psa: float | None
    grade_group: int | None
    primary_pattern: int | None
    svi: bool
    neoadjuvant: bool
    decided: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_facts(cls, facts: ClinicalFacts, protocol: Protocol) -> Case:
        n, n_stage = _nodal(facts, protocol)
        return cls(
            surgery=facts.surgery or "none",
            t=facts.T,
            n=n,
            n_stage=n_stage,
            age=facts.age,
            psa=facts.psa,
            grade_group=facts.effective_grade_group(),
            primary_pattern=facts.primary_pattern(),
            svi=bool(facts.svi),
            neoadjuvant=bool(facts.neoadjuvant),
        )


def _nodal(facts: ClinicalFacts, protocol: Protocol) -> tuple[int | None, str | None]:
    """The N number nodal rules read: the protocol's preferred written N stage, else the
    involved-node count the note gives."""
    nodal = facts.stage_for("N", tuple(protocol.nodal_stage_sources))
    if nodal is not None:
        return n_number(nodal.value), nodal.prefix + nodal.value
    if facts.nodes_positive is not None:
        count = facts.nodes_positive
        return n_from_count(count), f"{count} involved node(s) counted, no N stage written"
    return None, None


@dataclass(frozen=True)
class Strategy:
    """Decision name -> value, and decision name -> the id of the rule that fired."""

    site: str
    protocol: str
    values: dict[str, Any]
    rules: dict[str, str]
    nodal_stage: str | None

    def to_json(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.values.items()}


def decide(facts: ClinicalFacts, protocol: Protocol) -> Strategy:
    """Apply every decision of ``protocol`` in order; each records the rule that fired."""
    case = Case.from_facts(facts, protocol)
    rules: dict[str, str] = {}
    for name in protocol.decision_names():
        rule = first_match(getattr(protocol, name), case)
        case.decided[name] = rule.value
        rules[name] = rule.id
    label = f"{protocol.name} {protocol.version}"
    return Strategy(protocol.site, label, dict(case.decided), rules, case.n_stage)


def first_match(rules: list[Rule[Any]], case: Case) -> Rule[Any]:
    """The first rule whose condition holds (the last rule has none, so one always does)."""
    for rule in rules:
        if rule.when is None or holds(rule.when, case):
            return rule
    raise ValueError("protocol decision without a default rule")  # prevented by validation


def holds(cond: Condition, case: Case) -> bool:
    """Whether every key of ``cond`` holds for ``case``."""
    checks = (
        _leaf_checks(cond, case)
        + _stage_checks(cond, case)
        + _prostate_checks(cond, case)
        + _nested_checks(cond, case)
    )
    return all(checks)


def _leaf_checks(cond: Condition, case: Case) -> list[bool]:
    out = []
    if cond.surgery is not None:
        out.append(case.surgery in cond.surgery)
    if cond.age_min is not None:
        out.append(case.age is not None and case.age >= cond.age_min)
    if cond.age_below is not None:
        out.append(case.age is not None and case.age < cond.age_below)
    if cond.svi is not None:
        out.append(case.svi == cond.svi)
    if cond.neoadjuvant is not None:
        out.append(case.neoadjuvant == cond.neoadjuvant)
    for key in ("risk_group", "regional_nodes", "pelvic_nodes"):
        wanted = getattr(cond, key)
        if wanted is not None:
            value = case.decided.get(key)
            out.append(value in wanted if isinstance(wanted, list) else value == wanted)
    return out


def _stage_checks(cond: Condition, case: Case) -> list[bool]:
    out = []
    if cond.t_in is not None:
        out.append(case.t is not None and any(case.t.startswith(t) for t in cond.t_in))
    if cond.n_min is not None:
        out.append(case.n is not None and case.n >= cond.n_min)
    if cond.n_max is not None:
        out.append(case.n is not None and case.n <= cond.n_max)
    return out


def _prostate_checks(cond: Condition, case: Case) -> list[bool]:
    psa, gg = case.psa, case.grade_group
    out = []
    if cond.psa_min is not None:
        out.append(psa is not None and psa >= cond.psa_min)
    if cond.psa_above is not None:
        out.append(psa is not None and psa > cond.psa_above)
    if cond.psa_below is not None:
        out.append(psa is not None and psa < cond.psa_below)
    if cond.grade_group_min is not None:
        out.append(gg is not None and gg >= cond.grade_group_min)
    if cond.grade_group_max is not None:
        out.append(gg is not None and gg <= cond.grade_group_max)
    if cond.primary_pattern_min is not None:
        pp = case.primary_pattern
        out.append(pp is not None and pp >= cond.primary_pattern_min)
    return out


def _nested_checks(cond: Condition, case: Case) -> list[bool]:
    out = []
    if cond.any is not None:
        out.append(any(holds(c, case) for c in cond.any))
    if cond.all is not None:
        out.append(all(holds(c, case) for c in cond.all))
    if cond.at_least is not None:
        out.append(_count(cond.at_least, case))
    return out


def _count(at_least: AtLeast, case: Case) -> bool:
    return sum(holds(c, case) for c in at_least.of) >= at_least.count


def _plain(value: Any) -> Any:
    """Pydantic values (dose schemes) as plain JSON."""
    dump = getattr(value, "model_dump", None)
    return dump() if dump is not None else value
