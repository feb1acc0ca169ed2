"""``rtnode check-config``: every problem in every file, at once."""

from __future__ import annotations

from pathlib import Path

from appliance.config import load_config
from appliance.yamlsource import ConfigError, ConfigProblem
from engines.registry import engine_names
from rules.matcher import load_rules


def check_all(config_path: Path) -> list[ConfigProblem]:
    """Validate the node config, its rules file and its structure template."""
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        return list(exc.problems)
    cfg = loaded.config
    problems: list[ConfigProblem] = []
    try:
        load_rules(cfg.rules_file, engines=engine_names(), destinations=sorted(cfg.destinations))
    except ConfigError as exc:
        problems += exc.problems
    problems += _check_template(cfg.structure_template)
    return problems


def _check_template(path: Path) -> list[ConfigProblem]:
    from engines.structures import load_template

    try:
        load_template(path)
    except ConfigError as exc:
        return list(exc.problems)
    except (OSError, ValueError) as exc:
        return [ConfigProblem(str(path), 0, "", str(exc))]
    return []
