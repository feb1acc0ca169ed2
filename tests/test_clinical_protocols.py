"""Protocol files as validated data, and the strategy rules they drive."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.yamlsource import ConfigError
from engines.clinical.facts import ClinicalFacts, Evidence, Stage
from engines.clinical.protocols import DEFAULT_DIR, load_protocol, load_protocols
from engines.clinical.rules import extract
from engines.clinical.strategy import decide

PROTOCOLS = load_protocols()


def _stage(kind: str, prefix: str, value: str) -> Stage:
    return Stage(kind, prefix, value, Evidence(prefix + value, 0, 0))


def breast(surgery: str | None, *stages: str, age: int = 60) -> ClinicalFacts:
    parsed = [
        _stage(s[s.index(k)], s[: s.index(k)], s[s.index(k) :])
        for s in stages
        for k in "TN"
        if k in s
    ]
    facts = ClinicalFacts(site="breast", surgery=surgery, age=age, stages=parsed)
    facts.T = next((s.value for s in parsed if s.kind == "T"), None)
    return facts


def test_shipped_protocols_load() -> None:
    assert set(PROTOCOLS) == {"breast", "prostate"}


@pytest.mark.parametrize(
    ("surgery", "stages", "target", "nodes", "guideline", "rule"),
    [
        ("mastectomy", ("pT2", "pN0"), "chestwall", False, None, "BR-SCL-NONE"),
        ("BCS", ("cT1c", "cN0", "pN1a"), "breast", True, "ESTRO", "BR-SCL-ESTRO"),
        ("BCS", ("cT2", "cN1", "pN2a"), "breast", True, "RTOG", "BR-SCL-RTOG"),
        ("mastectomy", ("cT3", "cN1", "ypN0"), "chestwall", False, None, "BR-SCL-NONE"),
        ("mastectomy", ("cT3", "cN2", "ypN1a"), "chestwall", True, "ESTRO", "BR-SCL-ESTRO"),
        (None, ("cT2", "cN3"), "breast", True, "RTOG", "BR-SCL-RTOG"),
    ],
)
def test_breast_strategy(
    surgery: str | None,
    stages: tuple[str, ...],
    target: str,
    nodes: bool,
    guideline: str | None,
    rule: str,
) -> None:
    strategy = decide(breast(surgery, *stages), PROTOCOLS["breast"])
    values = strategy.values
    assert (values["breast_or_chestwall"], values["regional_nodes"]) == (target, nodes)
    assert values["scl_guideline"] == guideline
    assert strategy.rules["scl_guideline"] == rule


@pytest.mark.parametrize(
    ("note", "nodes", "guideline"),
    [
        ("Left breast cancer, WLE: 24 mm IDC, 3/14 nodes involved.", True, "ESTRO"),
        ("Left breast cancer, mastectomy, 11 of 20 nodes involved.", True, "RTOG"),
        ("Left breast cancer, WLE, sentinel nodes 0/3.", False, None),
        ("Left breast cancer, WLE, pN0(sn); 1/2 nodes positive on review.", False, None),
    ],
)
def test_node_count_decides_only_without_a_written_n_stage(
    note: str, nodes: bool, guideline: str | None
) -> None:
    strategy = decide(extract(note), PROTOCOLS["breast"])
    assert (strategy.values["regional_nodes"], strategy.values["scl_guideline"]) == (
        nodes,
        guideline,
    )


def test_breast_boost_is_data() -> None:
    young = decide(breast("BCS", "pT1c", "pN0", age=42), PROTOCOLS["breast"])
    assert young.rules["boost"] == "BR-BOOST-YOUNG"
    assert young.values["boost"].prescriptions[0].dose_gy == pytest.approx(13.35)
    assert decide(breast("mastectomy", "pT1c", age=42), PROTOCOLS["breast"]).values["boost"] is None


@pytest.mark.parametrize(
    ("note", "risk", "target", "sv", "pelvis"),
    [
        ("Prostate cancer, 60 yo, cT1c, PSA 5, Gleason 3+3.", "low", "prostate", False, False),
        (
            "Prostate, 60 yo, cT1c, PSA 7, Gleason 3+4.",
            "intermediate_favourable",
            "prostate",
            True,
            False,
        ),
        (
            "Prostate, 60 yo, cT2b, PSA 12, Gleason 3+4.",
            "intermediate_unfavourable",
            "prostate",
            True,
            False,
        ),
        ("Prostate, 60 yo, cT1c, PSA 25, Gleason 3+3.", "high", "prostate", True, True),
        ("Prostate, 60 yo, cT3a, PSA 25, Gleason 3+3.", "very_high", "prostate", True, True),
        ("Prostate, 60 yo, cT2a, PSA 6, Gleason 5+4.", "very_high", "prostate", True, True),
        ("Prostate, 84 yo, cT3b, PSA 40, Gleason 4+5.", "very_high", "prostate", True, False),
        (
            "Prostate, 70 yo, cT2a cN1, PSA 6, Gleason 3+4.",
            "intermediate_favourable",
            "prostate",
            True,
            True,
        ),
        (
            "Prostate, 66 yo, s/p RALP, pT3b pN0, PSA 9, Gleason 4+3.",
            "very_high",
            "prostate_bed",
            True,
            True,
        ),
        (
            "Prostate, 66 yo, s/p RALP, pT2c pN0, PSA 6, Gleason 3+4.",
            "intermediate_unfavourable",
            "prostate_bed",
            False,
            False,
        ),
        ("Prostate, 66 yo, cT1c, Gleason 3+3.", "unknown", "prostate", False, False),
    ],
)
def test_prostate_strategy(note: str, risk: str, target: str, sv: bool, pelvis: bool) -> None:
    strategy = decide(extract(note), PROTOCOLS["prostate"])
    v = strategy.values
    assert (v["risk_group"], v["target"], v["seminal_vesicles"], v["pelvic_nodes"]) == (
        risk,
        target,
        sv,
        pelvis,
    )
    assert set(strategy.rules) == {
        "risk_group",
        "target",
        "seminal_vesicles",
        "pelvic_nodes",
        "dose",
    }


def test_age_threshold_comes_from_the_file(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_DIR, tmp_path / "p")
    path = tmp_path / "p" / "prostate.yaml"
    path.write_text(path.read_text().replace("age_min: 80", "age_min: 90"))
    facts = extract("Prostate, 84 yo, cT3b, PSA 40, Gleason 4+5.")
    assert decide(facts, load_protocol(path)).values["pelvic_nodes"] is True
    assert decide(facts, load_protocol(path)).rules["pelvic_nodes"] == "PR-PN-RISK"


def test_unknown_keys_are_errors_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "breast.yaml"
    text = (DEFAULT_DIR / "breast.yaml").read_text()
    path.write_text(
        text.replace("when: {surgery: [mastectomy]}", "when: {surgery: [mastectomy], nodes: 1}")
    )
    with pytest.raises(ConfigError) as info:
        load_protocol(path)
    problem = info.value.problems[0]
    assert problem.file == str(path) and problem.line > 0
    assert "breast_or_chestwall.0.when.nodes" in problem.key
    assert "Extra inputs are not permitted" in problem.message


def test_a_decision_needs_a_default_rule(tmp_path: Path) -> None:
    path = tmp_path / "breast.yaml"
    text = (DEFAULT_DIR / "breast.yaml").read_text()
    path.write_text(text.replace("  - id: BR-TGT-WB\n    value: breast\n", ""))
    with pytest.raises(ConfigError, match="must have no 'when'"):
        load_protocol(path)


def test_every_file_problem_is_reported_together(tmp_path: Path) -> None:
    (tmp_path / "breast.yaml").write_text("site: breast\nname: x\n")
    (tmp_path / "lung.yaml").write_text("site: lung\n")
    with pytest.raises(ConfigError) as info:
        load_protocols(tmp_path)
    files = {Path(p.file).name for p in info.value.problems}
    assert files == {"breast.yaml", "lung.yaml"}
