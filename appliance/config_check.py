"""``rtnode check-config``: every problem in every file, at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config import load_config
from appliance.yamlsource import ConfigError, ConfigProblem, load_yaml
from engines.registry import engine_names
from engines.segmentation.card import (
    BREAST_CTV_CARD,
    THORAX_CARD,
    ModelCardError,
    verify_cascade,
)
from rules.matcher import load_rules
from rules.schema import RuleSet

# Pipeline steps that run a model card: (the job parameter naming it, the default card).
MODEL_STEPS = {
    "segment_onnx": ("segmentation_model", THORAX_CARD),
    "segment_ctv": ("ctv_model", BREAST_CTV_CARD),
}


def check_all(config_path: Path) -> list[ConfigProblem]:
    """Validate the node config, its rules file and its structure template.

    A broken node config does not stop the other files from being checked: their
    paths and the destination names are then taken from the raw YAML where possible.
    """
    problems: list[ConfigProblem] = []
    rules_file: Path | None
    template: Path | None
    plugins: list[str] = []
    protocols: Path | None = None
    node_params: dict[str, Any] = {}
    try:
        cfg = load_config(config_path).config
        protocols = cfg.engines.clinical_protocols
        node_params = cfg.engines.as_params()
        rules_file, template, dests = (
            cfg.rules_file,
            cfg.structure_template,
            sorted(cfg.destinations),
        )
        plugins = sorted(cfg.engine_plugins)
    except ConfigError as exc:
        problems += exc.problems
        rules_file, template, dests = _raw_paths(config_path)
    if rules_file is not None:
        try:
            engines = sorted({*engine_names(), *plugins})
            ruleset = load_rules(rules_file, engines=engines, destinations=dests)
            problems += check_model_cards(rules_file, ruleset, node_params)
        except ConfigError as exc:
            problems += exc.problems
    if template is not None:
        problems += _check_template(template)
    problems += _check_protocols(protocols)
    return problems


def _check_protocols(directory: Path | None) -> list[ConfigProblem]:
    """The clinical RT strategy protocols (default: config/protocols)."""
    from engines.clinical.protocols import load_protocols

    try:
        load_protocols(directory)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def check_model_cards(
    rules_file: Path, ruleset: RuleSet, node_params: dict[str, Any] | None = None
) -> list[ConfigProblem]:
    """Every model card a rule runs (the rule's ``params``, else the node config's
    ``engines:``, else the shipped default): valid card, model file present, sha256."""
    problems: list[ConfigProblem] = []
    checked: set[Path] = set()
    for index, rule in enumerate(ruleset.rules):
        fallback = rule.clinical_text.without_text if rule.clinical_text else []
        for step in dict.fromkeys([*rule.pipeline, *fallback]):
            if step not in MODEL_STEPS:
                continue
            key, default = MODEL_STEPS[step]
            card_path = Path(str(rule.params.get(key) or (node_params or {}).get(key) or default))
            if card_path in checked:
                continue
            checked.add(card_path)
            try:
                verify_cascade(card_path)
            except ModelCardError as exc:
                where = f"rules.{index}.params.{key}" if key in rule.params else f"rules.{index}"
                problems.append(ConfigProblem(str(rules_file), 0, where, str(exc)))
    return problems


def _raw_paths(config_path: Path) -> tuple[Path | None, Path | None, list[str]]:
    try:
        data: Any = load_yaml(config_path).data
    except ConfigError:
        return None, None, []
    if not isinstance(data, dict):
        return None, None, []
    base = config_path.resolve().parent
    rules = data.get("rules_file", "rules.yaml")
    template = data.get("structure_template", "structures.yaml")
    dests = data.get("destinations")
    return (
        base / rules if isinstance(rules, str) else None,
        base / template if isinstance(template, str) else None,
        sorted(dests) if isinstance(dests, dict) else [],
    )


def _check_template(path: Path) -> list[ConfigProblem]:
    from engines.structures import load_template

    try:
        load_template(path)
    except ConfigError as exc:
        return list(exc.problems)
    except (OSError, ValueError) as exc:
        return [ConfigProblem(str(path), 0, "", str(exc))]
    return []
