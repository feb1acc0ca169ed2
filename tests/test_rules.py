from __future__ import annotations

from pathlib import Path

import pytest

from appliance.yamlsource import ConfigError
from rules.matcher import load_rules, matching_rules
from rules.schema import Rule, RuleSet
from tests.support import REPO

CT = {
    "Modality": "CT",
    "SeriesDescription": "Thorax 3mm",
    "BodyPartExamined": "CHEST",
    "SliceThickness": 3.0,
    "CallingAETitle": "TPS",
    "StudyDescription": "RT planning",
}


def _rule(**kw: object) -> RuleSet:
    return RuleSet(rules=[Rule(name="r", pipeline=["classical_body_lungs"], **kw)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "exclude", "expected"),
    [
        ({"Modality": "^CT$"}, {}, True),
        ({"Modality": "(?i)^ct$"}, {}, True),
        ({"Modality": "^MR$"}, {}, False),
        ({"SeriesDescription": ["(?i)pelvis", "(?i)thorax"]}, {}, True),
        ({"BodyPartExamined": "!HEAD"}, {}, True),
        ({"BodyPartExamined": "!CHEST"}, {}, False),
        ({"SliceThickness": {"min": 1, "max": 5}}, {}, True),
        ({"SliceThickness": {"max": 2}}, {}, False),
        ({"CallingAETitle": "^TPS$"}, {}, True),
        ({"Modality": "^CT$"}, {"SeriesDescription": "(?i)3mm"}, False),
        ({"Modality": "^CT$"}, {"SeriesDescription": "(?i)scout"}, True),
        ({"PatientSex": "^F$"}, {}, False),  # absent attribute does not match
    ],
)
def test_conditions(match: dict, exclude: dict, expected: bool) -> None:
    assert bool(matching_rules(_rule(match=match, exclude=exclude), CT)) is expected


def test_disabled_rule_never_matches() -> None:
    assert matching_rules(_rule(match={"Modality": "CT"}, enabled=False), CT) == []


def test_shipped_rules_route_ct_but_not_scouts() -> None:
    rules = load_rules(REPO / "config" / "rules.yaml")
    ct = {**CT, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}
    assert [r.name for r in matching_rules(rules, ct)] == ["ct-organs", "ct-clinical-context"]
    organs, context = matching_rules(rules, ct)
    assert organs.pipeline == ["classical_body_lungs", "segment_onnx", "rtstruct_writer"]
    assert organs.clinical_text is None  # organs never wait for text
    assert context.clinical_text is not None and context.clinical_text.without_text == []
    assert context.pipeline[0] == "clinical_text" and "segment_ctv" in context.pipeline
    assert matching_rules(rules, {**ct, "SeriesDescription": "Topogram 0.6"}) == []
    rs = {**ct, "Modality": "RTSTRUCT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.3"}
    assert [r.name for r in matching_rules(rules, rs)] == ["rtstruct-tg263"]
    assert matching_rules(rules, {**rs, "Manufacturer": "rtnode"}) == []  # our own drafts
    assert matching_rules(rules, {**ct, "Modality": "RTPLAN"}) == []


def test_rule_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: a\n"
        "    match:\n"
        "      NotAKeyword: x\n"
        "    pipeline: [classical_body_lungs]\n"
        "  - name: b\n"
        "    match: {Modality: '(unclosed'}\n"
        "    pipeline: [classical_body_lungs]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    problems = {(p.key, p.line) for p in err.value.problems}
    assert ("rules.0.match", 4) in problems or ("rules.0.match", 3) in problems
    assert any(k.startswith("rules.1.match") for k, _ in problems)


def test_unknown_engine_and_destination(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    pipeline: [nope]\n    destinations: [pacs]\n")
    with pytest.raises(ConfigError) as err:
        load_rules(path, engines=["classical_body_lungs"], destinations=["tps"])
    messages = [str(p) for p in err.value.problems]
    assert len(messages) == 2
    assert any("unknown engine 'nope'" in m and ":3:" in m for m in messages)
    assert any("unknown destination 'pacs'" in m and ":4:" in m for m in messages)


def test_duplicate_rule_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: a, pipeline: [x]}\n  - {name: a, pipeline: [x]}\n")
    with pytest.raises(ConfigError, match="duplicate rule names"):
        load_rules(path)


def _write_rules(tmp_path: Path, clinical_text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: ctv\n"
        "    pipeline: [classical_body_lungs, rtstruct_writer]\n"
        "    clinical_text:\n" + clinical_text
    )
    return path


def test_clinical_text_need_is_read_with_defaults(tmp_path: Path) -> None:
    path = _write_rules(tmp_path, "      without_text: []\n")
    need = load_rules(path).rules[0].clinical_text
    assert need is not None and need.wait_seconds == 60.0 and need.without_text == []


def test_clinical_text_fallback_engines_are_checked_like_the_pipeline(tmp_path: Path) -> None:
    path = _write_rules(
        tmp_path, "      wait_seconds: 30\n      without_text: [classical_body_lungs, nope]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_rules(path, engines=["classical_body_lungs", "rtstruct_writer"])
    [problem] = err.value.problems
    assert problem.key == "rules.0.clinical_text.without_text.1" and problem.line == 6
    assert "unknown engine 'nope'" in str(problem)


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("      wait_seconds: 60\n", "rules.0.clinical_text.without_text", "Field required"),
        ("      wait_seconds: -1\n      without_text: []\n", "wait_seconds", "greater than"),
        ("      wait_seconds: 9999999\n      without_text: []\n", "wait_seconds", "less than"),
        ("      without_text: []\n      wait: 5\n", "clinical_text.wait", "Extra inputs"),
    ],
)
def test_clinical_text_errors_are_clear(tmp_path: Path, body: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(_write_rules(tmp_path, body))
    assert any(key in p.key and message in str(p) for p in err.value.problems), [
        str(p) for p in err.value.problems
    ]


def test_example_rules_with_clinical_text_are_valid() -> None:
    from engines.registry import engine_names

    rules = load_rules(
        REPO / "config" / "rules.example.yaml", engines=engine_names(), destinations=["tps"]
    )
    need = rules.rules[0].clinical_text
    assert need is not None and need.wait_seconds == 60 and need.without_text


def test_rule_params_paths_are_relative_to_the_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: site\n"
        "    pipeline: [segment_onnx]\n"
        "    params: {segmentation_model: models/site.yaml, segmentation_threads: 1,\n"
        "             ctv_model: /abs/ctv.yaml}\n"
    )
    (rule,) = load_rules(path).rules
    assert rule.params == {
        "segmentation_model": str(tmp_path / "models" / "site.yaml"),
        "segmentation_threads": 1,
        "ctv_model": "/abs/ctv.yaml",
    }


def test_rule_params_names_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    pipeline: [x]\n    params: {Bad-Key: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    assert "lower_snake_case" in str(err.value)
