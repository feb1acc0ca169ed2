from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import apply_overrides, load_config, parse_destination
from appliance.config_check import check_all
from appliance.yamlsource import ConfigError
from tests.support import REPO


def test_shipped_config_is_valid() -> None:
    assert check_all(REPO / "config" / "rtnode.yaml") == []


def test_relative_paths_resolve_against_config_file() -> None:
    loaded = load_config(REPO / "config" / "rtnode.yaml")
    assert loaded.config.rules_file == REPO / "config" / "rules.yaml"
    assert loaded.data_dir == REPO / "var"
    assert len(loaded.sha256) == 64


def test_every_error_is_reported_with_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "rtnode.yaml"
    cfg.write_text(
        "node:\n  port: 99999\n  ae_title: THIS_TITLE_IS_TOO_LONG\n"
        "delivery:\n  max_attempts: 0\nbogus: 1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    found = {(p.key, p.line) for p in err.value.problems}
    assert found == {
        ("node.port", 2),
        ("node.ae_title", 3),
        ("delivery.max_attempts", 5),
        ("bogus", 6),
    }
    assert all(p.file == str(cfg) for p in err.value.problems)


def test_check_all_reports_config_and_rules_problems_together(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r\n    match: {NotAKeyword: x}\n    pipeline: [no_such_engine]\n"
        "    destinations: [nowhere]\n"
    )
    cfg = tmp_path / "rtnode.yaml"
    cfg.write_text(
        f"node: {{port: 0}}\nstructure_template: {REPO / 'config' / 'structures.yaml'}\n"
    )
    keys = {p.key for p in check_all(cfg)}
    assert "node.port" in keys
    assert any(k.startswith("rules.0.match") for k in keys)


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "rtnode.yaml"
    cfg.write_text("node: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "invalid YAML" in str(err.value)


def test_overrides() -> None:
    cfg = load_config(REPO / "config" / "rtnode.yaml").config
    out = apply_overrides(
        cfg,
        ae_title="NODE2",
        port=4242,
        allow_callers=["STORESCU"],
        destinations=["tps=PACS@127.0.0.2:104", "archive=ARCH@127.0.0.1:11114"],
    )
    assert out.node.ae_title == "NODE2" and out.node.port == 4242
    assert "STORESCU" in [c.ae_title for c in out.security.allowed_callers]
    assert out.destinations["tps"].ae_title == "PACS" and out.destinations["tps"].port == 104
    assert out.destinations["archive"].host == "127.0.0.1"
    assert cfg.node.port == 11112  # the original is unchanged


@pytest.mark.parametrize("text", ["tps", "tps=AET@host", "=A@h:1", "tps=A@h:port"])
def test_bad_destination_override(text: str) -> None:
    with pytest.raises(ValueError):
        parse_destination(text)


def test_one_llm_setting_serves_renaming_and_clinical_text() -> None:
    from appliance.config import EngineSettings

    params = EngineSettings(llm_model="bundled", llm_threads=1).as_params()
    assert params["tg263_llm_model"] == params["clinical_llm_model"] == "bundled"
    assert params["clinical_llm_threads"] == 1 and params["clinical_time_budget_s"] == 5.0
    off = EngineSettings(llm_model=None).as_params()
    assert "tg263_llm_model" not in off and off["clinical_llm_model"] == "none"


def test_thread_spinning_reaches_the_segmentation_runtime() -> None:
    from appliance.config import EngineSettings
    from engines.segmentation.runtime import RuntimeSettings

    on = EngineSettings(segmentation_thread_spinning=True).as_params()
    assert RuntimeSettings.from_params(on).thread_spinning is True
    default = EngineSettings().as_params()
    assert RuntimeSettings.from_params(default).thread_spinning is False
