"""The systemd unit, its README drop-ins, sysusers.d and tmpfiles.d files, checked offline.

``systemd-analyze verify`` exits 0 even for unknown keys and unparsable values (it
only prints them), so every verify test also asserts that no output line names rtnode.
None of this needs systemd running as PID 1.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "rtnode.service"
PRODUCTION_BINARY = "/opt/rtnode/venv/bin/rtnode"
DROPIN_BLOCK = re.compile(
    r"```ini\n# /etc/systemd/system/rtnode\.service\.d/(?P<name>[\w-]+\.conf)\n(?P<body>.*?)```",
    re.DOTALL,
)
MAX_EXPOSURE_TENTHS = 35  # `systemd-analyze security` score 3.5 ("OK"); the unit scores 3.0.

HARDENING = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "KillMode": "mixed",
    "User": "rtnode",
    "Group": "rtnode",
    "UMask": "0027",
    "StateDirectory": "rtnode",
    "ConfigurationDirectory": "rtnode",
    "StandardOutput": "journal",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "NoNewPrivileges": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelLogs": "true",
    "ProtectControlGroups": "true",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "true",
    "LockPersonality": "true",
    "RestrictRealtime": "true",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "LimitCORE": "0",
}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (it ships with systemd)")
    return path


def _parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _stand_in_binary() -> str:
    """An executable that exists here, in place of the production ExecStart binary."""
    console_script = Path(sys.executable).with_name("rtnode")
    return str(console_script) if console_script.exists() else "/bin/true"


def _install_unit(directory: Path, dropins: dict[str, str]) -> Path:
    """Copy the unit (ExecStart rewritten) and drop-ins into ``directory``."""
    unit = directory / "rtnode.service"
    unit.write_text(UNIT.read_text().replace(PRODUCTION_BINARY, _stand_in_binary()))
    if dropins:
        (directory / "rtnode.service.d").mkdir()
    for name, body in dropins.items():
        (directory / "rtnode.service.d" / name).write_text(body)
    return unit


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("systemd-analyze"), "verify", "--man=no", str(unit))


def _rtnode_problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "rtnode" in line]


def _readme_dropins() -> dict[str, str]:
    readme = (SYSTEMD_DIR / "README.md").read_text()
    return {m["name"]: m["body"] for m in DROPIN_BLOCK.finditer(readme)}


def test_unit_verifies_clean(tmp_path: Path) -> None:
    result = _verify(_install_unit(tmp_path, {}))
    assert result.returncode == 0, result.stderr
    assert _rtnode_problems(result) == []


def test_readme_documents_the_gpu_and_port_104_dropins() -> None:
    assert {"gpu.conf", "port104.conf"} <= set(_readme_dropins())


@pytest.mark.parametrize("name", sorted(_readme_dropins()))
def test_readme_dropin_verifies_clean(tmp_path: Path, name: str) -> None:
    result = _verify(_install_unit(tmp_path, {name: _readme_dropins()[name]}))
    assert result.returncode == 0, result.stderr
    assert _rtnode_problems(result) == []


def test_verify_reports_a_bad_key(tmp_path: Path) -> None:
    """Guards the check above: a typo must show up even though verify exits 0."""
    result = _verify(_install_unit(tmp_path, {"typo.conf": "[Service]\nProtectSytem=strict\n"}))
    assert any("ProtectSytem" in line for line in _rtnode_problems(result))


def test_exposure_stays_low(tmp_path: Path) -> None:
    unit = _install_unit(tmp_path, {})
    result = _run(
        _tool("systemd-analyze"),
        "security",
        "--offline=yes",
        f"--threshold={MAX_EXPOSURE_TENTHS}",
        "--no-pager",
        str(unit),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_hardening_keys_are_set() -> None:
    service = _parse_unit(UNIT.read_text())["Service"]
    assert {key: service.get(key) for key in HARDENING} == HARDENING


def test_memory_deny_write_execute_is_not_set() -> None:
    assert "MemoryDenyWriteExecute" not in _parse_unit(UNIT.read_text())["Service"]


def test_exec_start_matches_state_and_config_directories() -> None:
    unit = _parse_unit(UNIT.read_text())
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[:2] == [PRODUCTION_BINARY, "serve"]
    assert exec_start[exec_start.index("--data-dir") + 1] == "/var/lib/rtnode"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/rtnode/rtnode.yaml"
    assert "network-online.target" in unit["Unit"]["After"]
    assert "network-online.target" in unit["Unit"]["Wants"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = _run(
        _tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD_DIR / "rtnode.sysusers")
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^rtnode:x:\d+:\d+:rtnode DICOM AI node:/var/lib/rtnode:", passwd, re.M)


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles must chown, which needs root")
def test_tmpfiles_creates_owned_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    sysusers = _run(
        _tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD_DIR / "rtnode.sysusers")
    )
    assert sysusers.returncode == 0, sysusers.stderr
    result = _run(
        _tool("systemd-tmpfiles"),
        f"--root={tmp_path}",
        "--create",
        str(SYSTEMD_DIR / "rtnode.tmpfiles"),
    )
    assert result.returncode == 0, result.stderr
    state, config = (tmp_path / "var/lib/rtnode").stat(), (tmp_path / "etc/rtnode").stat()
    assert (stat.S_IMODE(state.st_mode), stat.S_IMODE(config.st_mode)) == (0o750, 0o750)
    assert state.st_uid == state.st_gid == config.st_gid != 0
    assert config.st_uid == 0
