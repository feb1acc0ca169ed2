"""The clinical-text part of ``rtnode status``: jobs waiting for text, recent documents."""

from __future__ import annotations

from typing import Any

from appliance.clinical_store import ClinicalStore
from appliance.clock import Clock


def clinical_report(store: ClinicalStore, clock: Clock, limit: int = 5) -> dict[str, Any]:
    """JSON-ready: waiting jobs (with their deadline) and the newest documents (no text)."""
    now = clock.now()
    waiting = [
        {
            "job_id": job.id,
            "rule": job.rule_name,
            "patient_id": job.patient_id,
            "study_uid": job.study_uid,
            "deadline": deadline,
            "seconds_left": round((deadline - now).total_seconds()) if deadline else None,
        }
        for job, deadline in store.waiting_jobs()
    ]
    documents = [
        {
            "id": d.id,
            "source": d.source,
            "patient_id": d.patient_id,
            "study_uid": d.study_uid,
            "accession_number": d.accession_number,
            "chars": d.chars,
            "received_at": d.received_at,
            "state": d.state,
        }
        for d in store.recent_documents(limit)
    ]
    return {"waiting_jobs": waiting, "recent_documents": documents}


def format_clinical(report: dict[str, Any]) -> list[str]:
    """Terminal lines for :func:`clinical_report`'s dict."""
    lines = [f"waiting for clinical text: {len(report['waiting_jobs']) or 'none'}"]
    for w in report["waiting_jobs"]:
        lines.append(
            f"  job {w['job_id']} ({w['rule']}) patient={w['patient_id']} study={w['study_uid']}"
            f" until {w['deadline']} ({w['seconds_left']} s left)"
        )
    lines.append("clinical documents (newest):" + ("" if report["recent_documents"] else " none"))
    for d in report["recent_documents"]:
        key = d["study_uid"] or f"accession {d['accession_number']}"
        lines.append(
            f"  {d['id']:>4} {d['state']:<7} {d['source'][:40]:<40} patient={d['patient_id']}"
            f" {key} {d['chars']} chars {d['received_at']}"
        )
    return lines
