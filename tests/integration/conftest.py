"""Real peers on loopback: an ``rtnode serve`` subprocess, a DCMTK storescp "TPS", storescu.

Everything here talks to 127.0.0.1 only. Each node gets its own config file and data
directory under the test's ``tmp_path``; each process is started in its own process
group and stopped (terminate, then kill) at teardown, so no test leaves anything running.
DCMTK tools are always called by full path (pynetdicom installs commands of the same
names) with ``TCP_NODELAY=1`` in their environment (Nagle makes loopback 25x slower).

Every command helper takes a ``prefix`` (argv put in front of the command, e.g.
``["ip", "netns", "exec", NS]``) so that a test can run the node and DCMTK inside a
loopback-only network namespace next to a peer that cannot bind to 127.0.0.1 (Orthanc,
see ``tests/integration/orthanc.py``).

The process helpers are plain classes so that ``scripts/bench_node.py`` can reuse them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[2]
STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
ECHOSCU = Path("/usr/bin/echoscu")
RTNODE = Path(sys.executable).parent / "rtnode"
HOST = "127.0.0.1"
NODE_AE = "RTNODE"
CALLER_AE = "STORESCU"
TPS_AE = "TPS"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

DCMTK_MISSING = [str(p) for p in (STORESCU, STORESCP, ECHOSCU) if not p.exists()]
requires_dcmtk = pytest.mark.skipif(
    bool(DCMTK_MISSING), reason=f"DCMTK not installed ({', '.join(DCMTK_MISSING)} missing)"
)

T = TypeVar("T")


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (loopback is 25x slower without)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for(
    condition: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = 0.1
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def echoscu(
    port: int,
    called_ae: str,
    calling_ae: str = CALLER_AE,
    timeout_s: float = 5.0,
    *,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``echoscu`` once (verbose); raises ``subprocess.TimeoutExpired`` if it hangs."""
    cmd = [str(ECHOSCU), "-v", "-aet", calling_ae, "-aec", called_ae, "-to", "3", HOST, str(port)]
    return subprocess.run(
        [*prefix, *cmd],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def echo(
    port: int, called_ae: str, calling_ae: str = CALLER_AE, *, prefix: Sequence[str] = ()
) -> bool:
    """True if ``called_ae`` on ``port`` answers a C-ECHO."""
    try:
        return echoscu(port, called_ae, calling_ae, prefix=prefix).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def push(
    port: int,
    files: Path | Sequence[Path],
    *,
    calling_ae: str = CALLER_AE,
    called_ae: str = NODE_AE,
    extra: Sequence[str] = (),
    timeout_s: float = 300.0,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """C-STORE a directory (``+sd``, every file in it) or a list of files with storescu -v."""
    inputs = ["+sd", str(files)] if isinstance(files, Path) else [str(f) for f in files]
    cmd = [str(STORESCU), "-v", "-aet", calling_ae, "-aec", called_ae, *extra, HOST, str(port)]
    return subprocess.run(
        [*prefix, *cmd, *inputs],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


_SENDING = re.compile(r"Sending file: (?P<path>.+)$")
_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def acknowledged_files(storescu_log: str) -> list[Path]:
    """Files a ``storescu -v`` run got a Success response for (from its log)."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        if m := _SENDING.search(line):
            current = Path(m["path"].strip())
        elif (m := _RESPONSE.search(line)) and current is not None:
            if m["status"].startswith("Success"):
                acked.append(current)
            current = None
    return acked


def _stop_process(proc: subprocess.Popen[Any], *, grace_s: float = 10.0) -> None:
    """Terminate the process group we started; kill it if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # Kill whatever is left in the group (e.g. a worker orphaned by a SIGKILLed node).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied recursively (dicts merge, other values replace)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- the TPS


class StoreSCP:
    """``/usr/bin/storescp`` as a TPS: accepts every storage class, writes ``*.dcm``."""

    def __init__(self, port: int, out_dir: Path, log_path: Path, ae_title: str = TPS_AE) -> None:
        self.port = port
        self.out_dir = out_dir
        self.log_path = log_path
        self.ae_title = ae_title
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, ready_timeout_s: float = 15.0) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(STORESCP), "-aet", self.ae_title, "-od", str(self.out_dir), "-fe", ".dcm"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--accept-all", str(self.port)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, ready_timeout_s, f"storescp on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"storescp exited with {self.proc.returncode}:\n{self.log()}")
        return echo(self.port, self.ae_title)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, grace_s=5.0)

    def files(self) -> list[Path]:
        return sorted(self.out_dir.glob("*.dcm")) if self.out_dir.exists() else []

    def rtstructs(self) -> list[Dataset]:
        """Every complete RT Structure Set received so far (oldest file first)."""
        found: list[Dataset] = []
        for path in sorted(self.files(), key=lambda p: p.stat().st_mtime):
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # storescp may still be writing it: look again next poll
                continue
            if str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS:
                found.append(ds)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- the node


SHIPPED: list[dict[str, Any]] = []  # make_node(rules=SHIPPED): config/rules.yaml unchanged


def foundation_rules() -> list[dict[str, Any]]:
    """The shipped rules, with every CT rule replaced by the classical one.

    The foundation's tests (delivery, restarts, malformed input, retention, peers) need a
    CT to come back as one quick RTSTRUCT (External, Lung_L, Lung_R); the shipped CT rules
    also run the segmentation model and wait for clinical text, which
    ``test_shipped_rules.py`` covers.
    """
    shipped = yaml.safe_load((REPO / "config" / "rules.yaml").read_text())["rules"]
    ct_rules = [r for r in shipped if r.get("match", {}).get("Modality") == "^CT$"]
    classical = {
        "name": "ct-body-lungs",
        "match": ct_rules[0]["match"] if ct_rules else {"Modality": "^CT$"},
        "exclude": ct_rules[0].get("exclude", {}) if ct_rules else {},
        "pipeline": ["classical_body_lungs", "rtstruct_writer"],
        "destinations": ["tps"],
    }
    return [classical, *(r for r in shipped if r not in ct_rules)]


def node_config(
    tmp_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    name: str = "rtnode.yaml",
    fast_timers: bool = True,
) -> Path:
    """Write a node config based on the shipped ``config/rtnode.yaml``.

    The repository's rules and structure template are referenced by absolute path;
    ``fast_timers`` shortens the quiet window and the delivery backoff for tests;
    ``rules`` replaces the shipped rules with these (written beside the config).
    """
    base = yaml.safe_load((REPO / "config" / "rtnode.yaml").read_text())
    base["rules_file"] = str(REPO / "config" / "rules.yaml")
    base["structure_template"] = str(REPO / "config" / "structures.yaml")
    fast = {
        "completion": {"quiet_seconds": 1, "tick_seconds": 0.25},
        "delivery": {"backoff_initial_s": 0.5, "backoff_max_s": 2, "tick_seconds": 0.5},
        "workers": {"job_timeout_s": 120},
        "storage": {"min_free_disk_mb": 64},
    }
    cfg = deep_merge(base, fast) if fast_timers else base
    cfg = deep_merge(cfg, overrides or {})
    if rules is not None:
        rules_path = tmp_dir / f"{Path(name).stem}.rules.yaml"
        rules_path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
        cfg["rules_file"] = str(rules_path)
    path = tmp_dir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class RtNode:
    """``rtnode serve`` as a subprocess, plus its CLI and a read-only view of its database."""

    def __init__(
        self,
        config_path: Path,
        data_dir: Path,
        port: int,
        tps_port: int,
        log_path: Path,
        *,
        allow_callers: Iterable[str] = (CALLER_AE,),
        tps_ae: str = TPS_AE,
        prefix: Sequence[str] = (),
    ) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.port = port
        self.tps_port = tps_port
        self.tps_ae = tps_ae
        self.log_path = log_path
        self.allow_callers = tuple(allow_callers)
        self.prefix = tuple(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ----------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "node not started"
        return self.proc.pid

    def start(self, *, ready_timeout_s: float = 60.0) -> RtNode:
        cmd = [str(RTNODE), "serve", *self._common(), "--port", str(self.port)]
        for aet in self.allow_callers:
            cmd += ["--allow-caller", aet]
        cmd += ["--destination", f"tps={self.tps_ae}@{HOST}:{self.tps_port}"]
        cmd = [*self.prefix, *cmd]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, ready_timeout_s, f"rtnode on port {self.port}", interval_s=0.2)
        return self

    def _ready(self) -> bool:
        if not self.running():
            raise AssertionError(f"rtnode exited with {self.proc and self.proc.returncode}")
        return echo(self.port, NODE_AE, prefix=self.prefix)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node process only (as a crash would); its workers see EOF and exit."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- command line -----------------------------------------------------------

    def _common(self) -> list[str]:
        return ["--config", str(self.config_path), "--data-dir", str(self.data_dir)]

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rtnode ARGS --config ... --data-dir ...`` as a subprocess."""
        return subprocess.run(
            [str(RTNODE), *args, *self._common()],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def audit_cli(self, *args: str) -> list[dict[str, Any]]:
        """``rtnode audit --json`` rows (oldest first)."""
        done = self.cli("audit", "--json", "--limit", "100000", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    # -- database (read-only, for fast polling) ------------------------------------

    @property
    def database(self) -> Path:
        return self.data_dir / "rtnode.sqlite3"

    def audit_rows(self, event: str | None = None) -> list[dict[str, Any]]:
        """Audit rows read straight from SQLite (cheap enough to poll every 50 ms)."""
        if not self.database.exists():
            return []
        sql = "SELECT id, ts, event, study_uid, series_uid, job_id, detail FROM audit"
        params: tuple[str, ...] = ()
        if event:
            sql, params = sql + " WHERE event = ?", (event,)
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
            ) as db:
                rows = db.execute(sql + " ORDER BY id", params).fetchall()
        except sqlite3.OperationalError:  # schema not there yet, or locked: poll again
            return []
        keys = ("id", "ts", "event", "study_uid", "series_uid", "job_id", "detail")
        return [{**dict(zip(keys, r, strict=True)), "detail": json.loads(r[6])} for r in rows]

    def spool_sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the files in ``DATA_DIR/spool/<study>/<series>/<sop>.dcm``."""
        return {p.stem for p in (self.data_dir / "spool").glob("*/*/*.dcm")}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_tps(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: ``make_tps(port=None, start=True)`` -> a storescp TPS writing to tmp_path."""
    started: list[StoreSCP] = []

    def factory(port: int | None = None, *, start: bool = True) -> StoreSCP:
        index = len(started)
        tps = StoreSCP(
            port or free_port(), tmp_path / f"tps{index}", tmp_path / f"storescp{index}.log"
        )
        started.append(tps)
        return tps.start() if start else tps

    yield factory
    for tps in started:
        tps.stop()


@pytest.fixture
def make_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., RtNode]]:
    """Factory: ``make_node(tps_port, overrides=None, rules=None, start=True)`` -> RtNode.

    ``rules=None`` means :func:`foundation_rules` (the shipped rules with the classical CT
    pipeline); ``rules=SHIPPED`` the shipped rules file as it is. Each node has its own
    config and data dir under tmp_path. ``port`` (default: a free
    one), ``tps_ae``, ``allow_callers`` and ``prefix`` go to :class:`RtNode`. At teardown
    every node is stopped; if the test failed, the node logs are printed.
    """
    nodes: list[RtNode] = []

    def factory(
        tps_port: int,
        *,
        overrides: dict[str, Any] | None = None,
        rules: list[dict[str, Any]] | None = None,
        start: bool = True,
        port: int | None = None,
        tps_ae: str = TPS_AE,
        allow_callers: Iterable[str] = (CALLER_AE,),
        prefix: Sequence[str] = (),
    ) -> RtNode:
        index = len(nodes)
        if rules is None:
            rules = foundation_rules()
        chosen = None if rules is SHIPPED else rules
        cfg = node_config(tmp_path, overrides=overrides, rules=chosen, name=f"rtnode{index}.yaml")
        node = RtNode(
            cfg,
            tmp_path / f"var{index}",
            port or free_port(),
            tps_port,
            tmp_path / f"rtnode{index}.log",
            allow_callers=allow_callers,
            tps_ae=tps_ae,
            prefix=prefix,
        )
        nodes.append(node)
        return node.start() if start else node

    yield factory
    for node in nodes:
        node.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for node in nodes:
            print(f"\n===== {node.log_path}\n{node.log()[-20000:]}")


@pytest.fixture
def tps(make_tps: Callable[..., StoreSCP]) -> StoreSCP:
    """A running storescp TPS."""
    return make_tps()


@pytest.fixture
def node(make_node: Callable[..., RtNode], tps: StoreSCP) -> RtNode:
    """A running node whose destination ``tps`` is the running storescp."""
    return make_node(tps.port)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so fixtures can print logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
