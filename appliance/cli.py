"""The ``rtnode`` command line: serve, check-config, status, audit, resend (and the
sub-commands of their own modules: rename, models, submit-text)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.audit import AuditFilter, AuditLog
from appliance.cli_clinical import add_clinical_parser
from appliance.cli_clinical_intake import add_submit_text_parser
from appliance.cli_models import add_model_parsers
from appliance.cli_rename import add_rename_parser
from appliance.clock import SystemClock
from appliance.config import LoadedConfig, load_config
from appliance.events import EventBus, ResendRequested
from appliance.yamlsource import ConfigError

logger = logging.getLogger("rtnode")

DEFAULT_CONFIG = Path(os.environ.get("RTNODE_CONFIG", "config/rtnode.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtnode`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtnode", description="rtnode DICOM AI node")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node")
    _common(serve)
    serve.add_argument("--ae-title", help="override node.ae_title")
    serve.add_argument("--port", type=int, help="override node.port")
    serve.add_argument(
        "--allow-caller",
        action="append",
        default=[],
        metavar="AET",
        help="add a calling AE title to the allow-list (repeatable)",
    )
    serve.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="NAME=AET@HOST:PORT",
        help="add or replace a destination (repeatable)",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate config, rules and templates")
    _common(check)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="series, jobs, destinations, last errors")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    audit = sub.add_parser("audit", help="show or verify the audit log")
    _common(audit)
    audit.add_argument("--patient", help="PatientID")
    audit.add_argument("--study", help="StudyInstanceUID")
    audit.add_argument("--event", help="event name, e.g. job_finished")
    audit.add_argument("--since", type=datetime.fromisoformat, help="ISO time (UTC)")
    audit.add_argument("--until", type=datetime.fromisoformat, help="ISO time (UTC)")
    audit.add_argument("--limit", type=int, default=200)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument("--verify", action="store_true", help="verify the hash chain")
    audit.set_defaults(func=cmd_audit)

    resend = sub.add_parser("resend", help="re-queue a dead-lettered or failed job")
    _common(resend)
    resend.add_argument("job_id", type=int)
    resend.set_defaults(func=cmd_resend)

    add_rename_parser(sub)
    add_model_parsers(sub)
    add_submit_text_parser(sub, _common)
    add_clinical_parser(sub)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"node config file (default {DEFAULT_CONFIG}, or $RTNODE_CONFIG)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="override node.data_dir (spool, database, outputs)"
    )


def _load(args: argparse.Namespace) -> LoadedConfig:
    loaded = load_config(args.config)
    return loaded.with_overrides(
        ae_title=getattr(args, "ae_title", None),
        port=getattr(args, "port", None),
        data_dir=args.data_dir,
        allow_callers=getattr(args, "allow_caller", None),
        destinations=getattr(args, "destination", None),
    )


# -- serve -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from appliance.lifecycle import (
        SystemdNotifier,
        Watchdog,
        install_signal_handlers,
        watchdog_interval_s,
    )
    from appliance.service import Node

    _configure_logging(args.log_level)
    try:
        loaded = _load(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node = Node(loaded)
    stop = threading.Event()
    install_signal_handlers(stop.set)
    node.start()
    notifier = SystemdNotifier()
    watchdog = _start_watchdog(notifier, node, watchdog_interval_s(os.environ), Watchdog)
    cfg = loaded.config.node
    notifier.ready(f"listening as {cfg.ae_title} on {cfg.host}:{cfg.port}")
    print(f"rtnode listening as {cfg.ae_title} on {cfg.host}:{cfg.port}", flush=True)
    stop.wait()
    notifier.stopping()
    if watchdog is not None:
        watchdog.stop()
    node.stop("signal")
    return 0


def _start_watchdog(notifier: Any, node: Any, interval: float | None, cls: Any) -> Any:
    if interval is None:
        return None
    watchdog = cls(notifier, interval, node.healthy)
    watchdog.start()
    return watchdog


def _configure_logging(level: str) -> None:
    # Under systemd the journal adds timestamps; elsewhere add our own.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# -- check-config ------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from appliance.config_check import check_all

    problems = check_all(args.config)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


# -- status ----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from appliance.status_report import collect_status, format_status

    loaded = _load(args)
    report = collect_status(loaded)
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 0


# -- audit -----------------------------------------------------------------------


def _audit_log(loaded: LoadedConfig) -> AuditLog:
    from appliance.service import NodePaths, open_database

    return AuditLog(open_database(NodePaths(loaded.data_dir)), SystemClock())


def cmd_audit(args: argparse.Namespace) -> int:
    log = _audit_log(_load(args))
    if args.verify:
        count, problems = log.verify()
        for p in problems:
            print(f"row {p.row_id}: {p.message}", file=sys.stderr)
        print(f"{count} rows checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    flt = AuditFilter(
        patient_id=args.patient,
        study_uid=args.study,
        event=args.event,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    for row in log.query(flt):
        fields = {
            "id": row.id,
            "ts": row.ts,
            "event": row.event,
            "patient_id": row.patient_id,
            "study_uid": row.study_uid,
            "series_uid": row.series_uid,
            "job_id": row.job_id,
            "detail": json.loads(row.detail),
        }
        if args.json:
            print(json.dumps(fields))
        else:
            print(
                f"{row.id:>6} {row.ts} {row.event:<22} patient={row.patient_id} "
                f"study={row.study_uid} job={row.job_id or '-'} {row.detail}"
            )
    return 0


# -- resend ----------------------------------------------------------------------


def cmd_resend(args: argparse.Namespace) -> int:
    from appliance.service import NodePaths, open_database
    from appliance.store import Store, StoreError

    loaded = _load(args)
    engine = open_database(NodePaths(loaded.data_dir))
    store, clock = Store(engine), SystemClock()
    try:
        deliveries, job_requeued = store.requeue(args.job_id, clock.now())
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    job = store.get_job(args.job_id)
    bus = EventBus()
    AuditLog(engine, clock).bind(bus)
    if job is not None:
        bus.publish(
            ResendRequested(
                patient_id=job.patient_id,
                study_uid=job.study_uid,
                series_uid=job.series_uid,
                job_id=job.id,
                deliveries=deliveries,
                job_requeued=job_requeued,
            )
        )
    if not deliveries and not job_requeued:
        print(f"job {args.job_id}: nothing to resend (no dead-lettered delivery, job not failed)")
        return 1
    print(
        f"job {args.job_id}: {deliveries} delivery(ies) re-queued"
        + (", job re-queued" if job_requeued else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
