"""Match a completed series' attributes against the rule set."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.config import validate_document
from appliance.yamlsource import ConfigError, ConfigProblem, load_yaml
from rules.schema import PATH_PARAMS, Condition, Range, Rule, RuleSet

Attributes = Mapping[str, Any]


def load_rules(
    path: Path, *, engines: Sequence[str] | None = None, destinations: Sequence[str] | None = None
) -> RuleSet:
    """Load ``path`` and check that every pipeline step and destination exists.

    ``engines`` / ``destinations`` of None skip that check.

    Raises :class:`ConfigError` with every problem (file, line, key).
    """
    doc = load_yaml(path)
    ruleset = validate_document(doc, RuleSet)
    problems: list[ConfigProblem] = []
    for index, rule in enumerate(ruleset.rules):
        for step, name in enumerate(rule.pipeline):
            if engines is not None and name not in engines:
                msg = f"unknown engine {name!r} (known: {', '.join(engines)})"
                problems.append(doc.problem(("rules", index, "pipeline", step), msg))
        fallback = rule.clinical_text.without_text if rule.clinical_text else []
        for step, name in enumerate(fallback):
            if engines is not None and name not in engines:
                msg = f"unknown engine {name!r} (known: {', '.join(engines)})"
                where = ("rules", index, "clinical_text", "without_text", step)
                problems.append(doc.problem(where, msg))
        for slot, dest in enumerate(rule.destinations):
            if destinations is not None and dest not in destinations:
                msg = f"unknown destination {dest!r} (configured: {', '.join(destinations or []) or 'none'})"
                problems.append(doc.problem(("rules", index, "destinations", slot), msg))
    if problems:
        raise ConfigError(problems)
    base = path.resolve().parent
    return ruleset.model_copy(
        update={"rules": [_resolve_paths(rule, base) for rule in ruleset.rules]}
    )


def _resolve_paths(rule: Rule, base: Path) -> Rule:
    """``rule`` with relative file parameters made absolute against ``base``."""
    params = {
        key: str(base / value)
        if key in PATH_PARAMS and isinstance(value, str) and not Path(value).is_absolute()
        else value
        for key, value in rule.params.items()
    }
    return rule.model_copy(update={"params": params}) if params != rule.params else rule


def matching_rules(ruleset: RuleSet, attrs: Attributes) -> list[Rule]:
    """Every enabled rule whose ``match`` holds and whose ``exclude`` does not."""
    return [r for r in ruleset.rules if r.enabled and rule_matches(r, attrs)]


def rule_matches(rule: Rule, attrs: Attributes) -> bool:
    if not all(_holds(cond, attrs.get(key)) for key, cond in rule.match.items()):
        return False
    return not any(_holds(cond, attrs.get(key)) for key, cond in rule.exclude.items())


def _holds(cond: Condition, value: Any) -> bool:
    if isinstance(cond, Range):
        return _in_range(cond, value)
    patterns = [cond] if isinstance(cond, str) else cond
    return any(_pattern_holds(p, value) for p in patterns)


def _pattern_holds(pattern: str, value: Any) -> bool:
    negate = pattern.startswith("!")
    body = pattern[1:] if negate else pattern
    text = "" if value is None else str(value)
    found = re.search(body, text) is not None
    return found != negate


def _in_range(cond: Range, value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    if cond.min is not None and number < cond.min:
        return False
    return cond.max is None or number <= cond.max
