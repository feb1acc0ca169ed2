"""``rtnode status``: what the node has received, is doing and failed to do."""

from __future__ import annotations

from typing import Any

from appliance.audit import AuditFilter, AuditLog
from appliance.clinical_status import clinical_report, format_clinical
from appliance.clinical_store import ClinicalStore
from appliance.clock import SystemClock
from appliance.config import LoadedConfig
from appliance.db import JobState
from appliance.retention import format_spool, spool_report
from appliance.retention_store import RetentionStore
from appliance.service import NodePaths, open_database
from appliance.store import Store

_ERROR_EVENTS = (
    "association_rejected",
    "store_refused",
    "delivery_dead_lettered",
    "clinical_text_rejected",
    "clinical_text_late",
)


def collect_status(loaded: LoadedConfig) -> dict[str, Any]:
    """A plain dict (JSON-ready) of the node's state read from its database."""
    engine = open_database(NodePaths(loaded.data_dir))
    store, audit, clock = Store(engine), AuditLog(engine, SystemClock()), SystemClock()
    cfg = loaded.config
    report = {
        "node": {
            "ae_title": cfg.node.ae_title,
            "host": cfg.node.host,
            "port": cfg.node.port,
            "data_dir": str(loaded.data_dir),
        },
        "series": store.count_series(),
        "spool": spool_report(RetentionStore(engine), cfg.spool, clock.now()),
        "recent_series": [_series(s) for s in store.recent_series(5)],
        "jobs": store.jobs_by_state(),
        "failed_jobs": [_job(j) for j in store.recent_jobs(5, JobState.FAILED)],
        "last_done_job": _last_done(store),
        "clinical": clinical_report(ClinicalStore(engine), clock),
        "destinations": _destinations(loaded, store.delivery_summary()),
        "last_errors": _errors(audit),
    }
    engine.dispose()
    return report


def _series(s: Any) -> dict[str, Any]:
    return {
        "series_uid": s.series_uid,
        "patient_id": s.patient_id,
        "state": s.state,
        "instances": s.instance_count,
        "modality": s.attributes.get("Modality", ""),
        "last_received_at": s.last_received_at,
    }


def _job(j: Any) -> dict[str, Any]:
    return {"id": j.id, "rule": j.rule_name, "attempts": j.attempts, "error": j.last_error}


def _last_done(store: Store) -> dict[str, Any] | None:
    """The newest finished job with its engine notes (execution providers, skipped ROIs...)."""
    jobs = store.recent_jobs(1, JobState.DONE)
    if not jobs:
        return None
    job = jobs[0]
    return {
        "id": job.id,
        "rule": job.rule_name,
        "outputs": len(job.outputs),
        "notes": job.notes[:20],
    }


def _destinations(loaded: LoadedConfig, summary: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, dest in loaded.config.destinations.items():
        out[name] = {"address": f"{dest.ae_title}@{dest.host}:{dest.port}", **summary.get(name, {})}
    return out


def _errors(audit: AuditLog) -> list[dict[str, Any]]:
    rows = []
    for event in (*_ERROR_EVENTS, "job_finished", "send_attempted"):
        rows += audit.query(AuditFilter(event=event, limit=20))
    bad = [
        r
        for r in rows
        if r.event in _ERROR_EVENTS
        or '"ok": false' in r.detail
        or '"state": "failed"' in r.detail
        or ('"error": "' in r.detail and '"error": ""' not in r.detail)
    ]
    bad.sort(key=lambda r: r.id)
    return [
        {"id": r.id, "ts": r.ts, "event": r.event, "job_id": r.job_id, "detail": r.detail}
        for r in bad[-10:]
    ]


def format_status(report: dict[str, Any]) -> str:
    """Human-readable text for the terminal."""
    n = report["node"]
    lines = [f"rtnode {n['ae_title']} on {n['host']}:{n['port']}  data: {n['data_dir']}", ""]
    lines.append("series:       " + _counts(report["series"]))
    for s in report["recent_series"]:
        lines.append(
            f"  {s['modality']:<6} {s['state']:<9} {s['instances']:>5} inst  "
            f"patient={s['patient_id']} {s['series_uid']}"
        )
    if "spool" in report:
        lines.extend(format_spool(report["spool"]))
    lines.append("jobs:         " + _counts(report["jobs"]))
    for j in report["failed_jobs"]:
        lines.append(
            f"  FAILED job {j['id']} ({j['rule']}, {j['attempts']} attempts): {j['error']}"
        )
    if "clinical" in report:
        lines.extend(format_clinical(report["clinical"]))
    done = report.get("last_done_job")
    if done:
        lines.append(f"last done job {done['id']} ({done['rule']}, {done['outputs']} outputs)")
        lines.extend(f"  note: {note}" for note in done["notes"])
    lines.append("destinations:")
    for name, d in report["destinations"].items():
        counts = {k: v for k, v in d.items() if k != "address"}
        lines.append(f"  {name:<12} {d['address']:<32} {_counts(counts)}")
    lines.append("last errors:" + ("" if report["last_errors"] else "  none"))
    for e in report["last_errors"]:
        lines.append(f"  {e['ts']} {e['event']} job={e['job_id'] or '-'} {e['detail']}")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
