#!/usr/bin/env python
"""Benchmark the node on this machine: ingest throughput and CT -> RTSTRUCT latency.

Usage (from the repository root)::

    .venv/bin/python scripts/bench_node.py [--slices 200] [--e2e-slices 150] [--repeats 3]

1. Ingest: one synthetic 512x512 CT series (``--slices``) is pushed with DCMTK
   ``storescu`` alternately to DCMTK ``storescp`` and to ``rtnode serve`` (rules that
   match nothing), ``--repeats`` times each; each run gets a fresh receiver and output
   directory so the node never sees duplicates. The time is storescu's wall time
   (association, transfer, release).
2. End to end: a ``--e2e-slices`` CT is pushed to the node with the shipped config and
   the shipped organ rule's pipeline (classical External + the shipped thorax model +
   RTSTRUCT writer, destination a storescp TPS; no clinical text); the latency is
   from storescu's exit (association released) to the RTSTRUCT file at the TPS. The first
   run after start is cold (the worker process is spawned and loads its engines on the
   first job); the later runs are warm. Stage times come from the node's audit rows.

Everything runs on 127.0.0.1 with TCP_NODELAY=1 for the DCMTK tools.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
import pynetdicom  # noqa: E402

from tests.factories import make_ct_series, write_series  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    RTSTRUCT_SOP_CLASS,
    STORESCP,
    STORESCU,
    RtNode,
    StoreSCP,
    free_port,
    node_config,
    push,
    wait_for,
)

NO_MATCH_RULES = [
    {
        "name": "ingest-only",
        "description": "matches nothing: the ingest benchmark measures receiving only",
        "match": {"Modality": "^NO-SUCH-MODALITY$"},
        "pipeline": ["classical_body_lungs", "rtstruct_writer"],
        "destinations": ["tps"],
    }
]
E2E_RULES = [
    {
        "name": "ct-organs",
        "description": "the shipped organ rule's pipeline, without the clinical-text rule",
        "match": {"Modality": "^CT$"},
        "pipeline": ["classical_body_lungs", "segment_onnx", "rtstruct_writer"],
        "destinations": ["tps"],
    }
]
STAGES = (
    ("instances_received", "series_completed"),
    ("series_completed", "job_started"),
    ("job_started", "job_finished"),
    ("job_finished", "send_attempted"),
)


@dataclass(frozen=True)
class Transfer:
    receiver: str
    seconds: float
    instances: int
    bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds


@dataclass(frozen=True)
class Latency:
    run: int
    seconds: float
    quiet_s: float
    stages: dict[str, float]


# --------------------------------------------------------------------------- machine


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    mem_kb = int(mem[1]) if mem else 0
    dcmtk = subprocess.run([str(STORESCU), "--version"], capture_output=True, text=True)
    dcmtk_version = re.search(r"v(\d+\.\d+\.\d+)", dcmtk.stdout)
    disk = (
        subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True)
        .stdout.splitlines()[-1]
        .split()[1]
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": dcmtk_version[1] if dcmtk_version else "unknown",
        "temp filesystem": disk,
    }


# --------------------------------------------------------------------------- ingest


def timed_push(port: int, called_ae: str, files: list[Path]) -> float:
    start = time.perf_counter()
    done = push(port, files, called_ae=called_ae)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {called_ae} failed:\n{done.stderr[-3000:]}")
    return seconds


def ingest_dcmtk(work: Path, files: list[Path], run: int) -> Transfer:
    tps = StoreSCP(free_port(), work / f"storescp-{run}", work / f"storescp-{run}.log")
    tps.start()
    try:
        seconds = timed_push(tps.port, tps.ae_title, files)
        received = len(tps.files())
    finally:
        tps.stop()
    shutil.rmtree(tps.out_dir, ignore_errors=True)
    return Transfer("DCMTK storescp", seconds, received, _size(files))


def ingest_node(work: Path, files: list[Path], run: int) -> Transfer:
    cfg = node_config(work, rules=NO_MATCH_RULES, name=f"ingest-{run}.yaml", fast_timers=False)
    node = RtNode(cfg, work / f"var-{run}", free_port(), free_port(), work / f"node-{run}.log")
    node.start()
    try:
        wait_settled(node)
        seconds = timed_push(node.port, "RTNODE", files)
        received = len(node.spool_sop_uids())
    finally:
        node.stop()
    shutil.rmtree(node.data_dir, ignore_errors=True)
    return Transfer("rtnode serve", seconds, received, _size(files))


def wait_settled(node: RtNode, timeout_s: float = 120.0) -> None:
    """Until the node's worker process has loaded its engines (its "worker N ready" log
    line), plus a second: a node in service has long finished starting, and the
    worker's start-up (imports, model loading) would otherwise share the 2 CPUs with
    the push being timed."""
    wait_for(
        lambda: re.search(r"worker \d+ ready", node.log()) is not None,
        timeout_s,
        "the node's worker to load its engines",
    )
    time.sleep(1.0)


def _size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


# --------------------------------------------------------------------------- end to end


def end_to_end(work: Path, n_slices: int, runs: int) -> list[Latency]:
    tps = StoreSCP(free_port(), work / "tps", work / "tps.log").start()
    cfg = node_config(work, rules=E2E_RULES, name="e2e.yaml", fast_timers=False)
    quiet_s = float(_yaml(cfg)["completion"]["quiet_seconds"])
    node = RtNode(cfg, work / "var-e2e", free_port(), tps.port, work / "node-e2e.log")
    node.start()
    results = []
    try:
        for run in range(1, runs + 1):
            series = make_ct_series(n_slices=n_slices, seed=100 + run)
            files = write_series(series, work / f"e2e-ct-{run}")
            timed_push(node.port, "RTNODE", files)
            released = time.time()
            arrived = _wait_rtstruct(tps, series.series_uid, timeout_s=600)
            stages = _stage_times(node, series.series_uid)
            results.append(Latency(run, arrived - released, quiet_s, stages))
            print(f"  e2e run {run}: {arrived - released:.2f} s  {stages}", flush=True)
    except Exception:
        print(node.log()[-5000:], file=sys.stderr)
        raise
    finally:
        node.stop()
        tps.stop()
    return results


def _wait_rtstruct(tps: StoreSCP, series_uid: str, timeout_s: float) -> float:
    """Poll the TPS directory every 10 ms; returns time.time() when the file was seen."""
    seen: set[Path] = set()

    def check() -> float | None:
        for path in tps.files():
            if path in seen:
                continue
            now = time.time()
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # still being written: look again
                continue
            seen.add(path)
            if str(ds.SOPClassUID) == RTSTRUCT_SOP_CLASS and series_uid in _refs(ds):
                return now
        return None

    return wait_for(check, timeout_s, "the RTSTRUCT at the TPS", interval_s=0.01)


def _refs(ds: Any) -> set[str]:
    return {
        str(s.SeriesInstanceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        for st in f.get("RTReferencedStudySequence", [])
        for s in st.get("RTReferencedSeriesSequence", [])
    }


def _stage_times(node: RtNode, series_uid: str) -> dict[str, float]:
    def rows_ready() -> dict[str, datetime] | None:
        rows = [r for r in node.audit_rows() if r["series_uid"] == series_uid]
        first: dict[str, datetime] = {}
        for r in rows:
            first.setdefault(r["event"], datetime.fromisoformat(r["ts"]))
        return first if "send_attempted" in first else None

    first = wait_for(rows_ready, 30, "the send_attempted audit row")
    return {
        f"{a} -> {b}": round((first[b] - first[a]).total_seconds(), 2)
        for a, b in STAGES
        if a in first and b in first
    }


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


# --------------------------------------------------------------------------- report


def report(
    facts: dict[str, str], transfers: list[Transfer], latencies: list[Latency], n: int
) -> str:
    lines = ["### Machine", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", f"### Ingest ({n} x 512x512 CT, storescu wall time)", ""]
    lines += [
        "| receiver | runs | median s | MB/s (median) | instances/s (median) | all runs, s |",
        "|---|---|---|---|---|---|",
    ]
    medians: dict[str, float] = {}
    for receiver in ("DCMTK storescp", "rtnode serve"):
        runs = [t for t in transfers if t.receiver == receiver]
        med = statistics.median(t.seconds for t in runs)
        medians[receiver] = med
        lines.append(
            f"| {receiver} | {len(runs)} | {med:.2f} | {runs[0].bytes / 1e6 / med:.1f} | "
            f"{runs[0].instances / med:.0f} | {', '.join(f'{t.seconds:.2f}' for t in runs)} |"
        )
    ratio = medians["DCMTK storescp"] / medians["rtnode serve"]
    lines += ["", f"Node / DCMTK throughput ratio: **{ratio:.2f}x** (target >= 0.3x)", ""]
    lines += ["### Release -> RTSTRUCT at the TPS", ""]
    lines += [
        "| run | latency s | minus quiet window s | stages (from audit rows), s |",
        "|---|---|---|---|",
    ]
    for lat in latencies:
        kind = "cold" if lat.run == 1 else "warm"
        stages = "; ".join(f"{k} {v}" for k, v in lat.stages.items())
        lines.append(
            f"| {lat.run} ({kind}) | {lat.seconds:.2f} | {lat.seconds - lat.quiet_s:.2f} | "
            f"{stages} |"
        )
    quiet = latencies[0].quiet_s if latencies else 0.0
    lines += ["", f"Quiet window: {quiet:g} s (target: <= 10 s beyond it)"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=200, help="ingest series size (512x512)")
    p.add_argument("--e2e-slices", type=int, default=150, help="end-to-end series size")
    p.add_argument("--repeats", type=int, default=3, help="ingest runs per receiver")
    p.add_argument("--e2e-runs", type=int, default=3, help="end-to-end runs (1st is cold)")
    p.add_argument("--keep", type=Path, help="work here and keep the files (logs)")
    args = p.parse_args()
    for tool in (STORESCU, STORESCP):
        if not tool.exists():
            print(f"error: {tool} not found (install DCMTK)", file=sys.stderr)
            return 2

    facts = machine_facts()
    for k, v in facts.items():
        print(f"{k:>16}: {v}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="rtnode-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        series = make_ct_series(n_slices=args.slices, seed=7)
        files = write_series(series, work / "ct")
        print(
            f"built {len(files)} slices ({_size(files) / 1e6:.0f} MB) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        transfers: list[Transfer] = []
        for run in range(1, args.repeats + 1):
            for bench in (ingest_dcmtk, ingest_node):
                t = bench(work, files, run)
                transfers.append(t)
                print(
                    f"  ingest run {run} {t.receiver:<15} {t.seconds:6.2f} s "
                    f"{t.mb_per_s:7.1f} MB/s {t.instances_per_s:6.0f} inst/s "
                    f"({t.instances} stored)",
                    flush=True,
                )
        latencies = end_to_end(work, args.e2e_slices, args.e2e_runs)
        print()
        print(report(facts, transfers, latencies, args.slices))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
