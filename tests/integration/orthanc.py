"""Orthanc as a TPS peer, inside a loopback-only network namespace.

Orthanc 1.10 (Debian 12) has no option to bind its DICOM and HTTP servers to one address:
it listens on 0.0.0.0. So a test never starts it in the host's network namespace. It
creates a fresh namespace that holds nothing but its own ``lo`` (no veth, no route out),
starts Orthanc there with ``ip netns exec``, and runs ``rtnode serve`` and the DCMTK tools
in the same namespace. Inside it, 127.0.0.1 is that namespace's loopback: nothing outside
the namespace can reach those ports, and the fixed port numbers cannot clash with anything
on the host. The REST API is called with ``curl`` run in the namespace.

Creating a namespace needs CAP_SYS_ADMIN (root); where that is refused, or Orthanc or curl
is missing, :func:`orthanc_unavailable` says why and the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.conftest import HOST, _stop_process, wait_for

ORTHANC = Path("/usr/sbin/Orthanc")
CURL = Path("/usr/bin/curl")
ORTHANC_AE = "ORTHANC"
ORTHANC_DICOM_PORT = 4242  # fixed: the namespace is fresh, nothing else listens in it
ORTHANC_HTTP_PORT = 8042
NODE_PORT_IN_NS = 11112
NS_PREFIX = "rtnode-test-"
_SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
_counter = itertools.count()


class NamespaceUnavailable(Exception):
    """Network namespaces cannot be created here (no ``ip``, or not permitted)."""


def _ip_command() -> str:
    found = shutil.which("ip", path=_SBIN_PATH)
    if found is None:
        raise NamespaceUnavailable("iproute2 `ip` not found")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


class NetNamespace:
    """A network namespace with only a loopback interface, deleted by :meth:`delete`."""

    def __init__(self, name: str, ip: str) -> None:
        self.name = name
        self.ip = ip

    @classmethod
    def create(cls) -> NetNamespace:
        """A fresh ``rtnode-test-<pid>-<n>`` namespace with ``lo`` up.

        Raises :class:`NamespaceUnavailable` with the tool's message when it cannot.
        """
        ip = _ip_command()
        _delete_stale_namespaces(ip)
        name = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}"
        added = _run(ip, "netns", "add", name)
        if added.returncode != 0:
            raise NamespaceUnavailable(f"`ip netns add` failed: {added.stderr.strip()}")
        namespace = cls(name, ip)
        up = _run(ip, "-n", name, "link", "set", "lo", "up")
        if up.returncode != 0:
            namespace.delete()
            raise NamespaceUnavailable(f"cannot bring lo up: {up.stderr.strip()}")
        return namespace

    @property
    def prefix(self) -> list[str]:
        """Put in front of a command to run it inside the namespace."""
        return [self.ip, "netns", "exec", self.name]

    def interfaces(self) -> list[str]:
        """Names of the namespace's network interfaces."""
        done = _run(self.ip, "-n", self.name, "-o", "link", "show")
        assert done.returncode == 0, done.stderr
        return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]

    def addresses(self) -> list[str]:
        """Every address (with prefix length) configured in the namespace."""
        done = _run(self.ip, "-n", self.name, "-o", "addr", "show")
        assert done.returncode == 0, done.stderr
        return [line.split()[3] for line in done.stdout.splitlines()]

    def listening_pids(self, *, inside: bool) -> dict[int, set[int]]:
        """pid -> TCP ports it listens on, seen from inside the namespace or from the host."""
        ss = shutil.which("ss", path=_SBIN_PATH) or "ss"
        cmd = [*self.prefix, ss, "-Hltnp"] if inside else [ss, "-Hltnp"]
        done = _run(*cmd)
        assert done.returncode == 0, done.stderr
        found: dict[int, set[int]] = {}
        for line in done.stdout.splitlines():
            port = int(line.split()[3].rsplit(":", 1)[1])
            for pid in re.findall(r"pid=(\d+)", line):
                found.setdefault(int(pid), set()).add(port)
        return found

    def delete(self) -> None:
        _run(self.ip, "netns", "delete", self.name)


def _delete_stale_namespaces(ip: str) -> None:
    """Delete namespaces left by test runs whose process is gone (a killed pytest)."""
    listed = _run(ip, "netns", "list")
    for line in listed.stdout.splitlines():
        m = re.match(rf"{re.escape(NS_PREFIX)}(\d+)-\d+\b", line)
        if m is None or int(m[1]) == os.getpid():
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:
            _run(ip, "netns", "delete", m[0])
        except PermissionError:  # alive, someone else's
            continue


def orthanc_unavailable() -> str | None:
    """Why the Orthanc tests cannot run here, or None when they can."""
    missing = [str(p) for p in (ORTHANC, CURL) if not p.exists()]
    if missing:
        return f"Orthanc TPS tests need {', '.join(missing)} (apt install orthanc curl)"
    return None


def orthanc_config(
    storage_dir: Path, modalities: dict[str, tuple[str, str, int]], *, ae_title: str = ORTHANC_AE
) -> dict[str, Any]:
    """An Orthanc configuration for a TPS stand-in.

    Only the peers in ``modalities`` (name -> (AE title, host, port)) may store to it, from
    their host; REST on loopback only, no plugins, no web UI, state under ``storage_dir``.
    """
    return {
        "Name": "rtnode-test-tps",
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(storage_dir),
        "Plugins": [],
        "LuaScripts": [],
        "DicomAet": ae_title,
        "DicomPort": ORTHANC_DICOM_PORT,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {name: list(spec) for name, spec in modalities.items()},
        "HttpPort": ORTHANC_HTTP_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "DicomScuTimeout": 30,
    }


class Orthanc:
    """``/usr/sbin/Orthanc`` in a namespace, with a small REST client (curl in the same one)."""

    def __init__(self, namespace: NetNamespace, work_dir: Path, config: dict[str, Any]) -> None:
        self.namespace = namespace
        self.work_dir = work_dir
        self.config = config
        self.log_path = work_dir / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ae_title(self) -> str:
        return str(self.config["DicomAet"])

    @property
    def dicom_port(self) -> int:
        return int(self.config["DicomPort"])

    def start(self, *, ready_timeout_s: float = 30.0) -> Orthanc:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.namespace.prefix, str(ORTHANC), "--verbose", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, ready_timeout_s, "Orthanc's REST API", interval_s=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()}")
        with contextlib.suppress(AssertionError):
            return self.get("/system")["DicomAet"] == self.ae_title
        return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, grace_s=10.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- REST -------------------------------------------------------------------

    def _curl(self, path: str, *options: str) -> bytes:
        url = f"http://{HOST}:{self.config['HttpPort']}{path}"
        cmd = [*self.namespace.prefix, str(CURL), "--silent", "--show-error", "--fail"]
        done = subprocess.run(
            [*cmd, "--max-time", "120", *options, url], capture_output=True, timeout=150
        )
        if done.returncode != 0:
            raise AssertionError(f"curl {path}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def get(self, path: str) -> Any:
        return json.loads(self._curl(path))

    def get_bytes(self, path: str) -> bytes:
        return self._curl(path)

    def post(self, path: str, body: Any) -> Any:
        data = json.dumps(body)
        return json.loads(self._curl(path, "-X", "POST", "--data-binary", data))

    def instances_of(self, modality: str) -> list[dict[str, Any]]:
        """Simplified tags (plus ``_id``) of every stored instance of ``modality``."""
        found = []
        for instance_id in self.get("/instances"):
            tags = self.get(f"/instances/{instance_id}/simplified-tags")
            if tags.get("Modality") == modality:
                found.append({**tags, "_id": instance_id})
        return found
