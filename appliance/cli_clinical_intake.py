"""``rtnode submit-text``: clinical text for sites whose TPS cannot send SR.

``rtnode submit-text --patient-id ID (--study-uid UID | --accession ACC) FILE`` stores the
text of FILE (UTF-8 text, or a PDF with a text layer) as a clinical document of that
patient and study in the node's database, and audits it. It works whether the node runs
or not: the running node joins it to a waiting CT at its next completion tick, a stopped
one when it starts. Exit status: 0 stored, 1 the document was refused (no text, not text,
unreadable PDF; audited) or the database failed, 2 usage (unknown file, missing or bad
identifiers).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from appliance.audit import AuditLog
from appliance.clinical_store import SUBMIT_TEXT, ClinicalStore, NewDocument
from appliance.clinical_text import received_event
from appliance.clock import SystemClock
from appliance.config import load_config
from appliance.events import ClinicalTextRejected, EventBus
from appliance.store import StoreError
from dicom_node.text_extract import TextExtractionError, normalise_text, pdf_text

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def add_submit_text_parser(
    subparsers: Any, common: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add ``submit-text`` to ``rtnode``'s sub-parsers; ``common`` adds --config/--data-dir."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "submit-text",
        help="store clinical text (a text or PDF file) for a patient's study",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    common(p)
    p.add_argument("--patient-id", required=True, help="Patient ID, as on the CT")
    p.add_argument("--study-uid", help="Study Instance UID of the CT's study")
    p.add_argument("--accession", help="Accession Number of the CT's study")
    p.add_argument("file", type=Path, metavar="FILE", help="UTF-8 text file or PDF")
    p.set_defaults(func=cmd_submit_text)
    return p


def cmd_submit_text(args: argparse.Namespace) -> int:
    """Run ``rtnode submit-text``; returns the exit status."""
    problem = _usage_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from appliance.service import NodePaths, open_database

    loaded = load_config(args.config).with_overrides(data_dir=args.data_dir)
    engine = open_database(NodePaths(loaded.data_dir))
    try:
        return _submit(args, engine)
    finally:
        engine.dispose()


def _submit(args: argparse.Namespace, engine: Engine) -> int:
    bus, clock = EventBus(), SystemClock()
    AuditLog(engine, clock).bind(bus)
    patient, study, accession = _keys(args)
    try:
        text = read_document(args.file)
    except TextExtractionError as exc:
        reason = f"{args.file.name}: {exc}"
        rejected = ClinicalTextRejected(
            patient_id=patient, study_uid=study, source=SUBMIT_TEXT, reason=reason
        )
        bus.publish(rejected)
        print(f"error: {reason} (nothing stored)", file=sys.stderr)
        return EXIT_REFUSED
    doc = NewDocument(patient, study, accession, SUBMIT_TEXT, None, text)
    try:
        doc_id = ClinicalStore(engine).add_document(doc, clock.now())
    except StoreError as exc:
        print(f"error: could not store the document: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    bus.publish(received_event(doc, doc_id))
    keys = ", ".join(f"{k} {v}" for k, v in (("study", study), ("accession", accession)) if v)
    print(f"document {doc_id} stored for patient {patient} ({keys}), {len(text)} characters")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> tuple[str, str, str]:
    return (
        args.patient_id.strip(),
        (args.study_uid or "").strip(),
        (args.accession or "").strip(),
    )


def _usage_problem(args: argparse.Namespace) -> str:
    patient, study, accession = _keys(args)
    if not patient or len(patient) > 64:
        return "--patient-id must be 1 to 64 characters"
    if not study and not accession:
        return "give --study-uid or --accession (or both): the text is joined to the CT by them"
    if study and (len(study) > 64 or not _UID.match(study)):
        return f"--study-uid {study!r} is not a DICOM UID (digits and dots, at most 64)"
    if len(accession) > 16:
        return "--accession must be at most 16 characters"
    if not args.file.is_file():
        return f"{args.file}: no such file"
    return ""


def read_document(path: Path) -> str:
    """The text of a UTF-8 text file or a PDF's text layer; raises TextExtractionError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TextExtractionError(f"cannot read: {exc.strerror}") from exc
    if data.lstrip()[:5] == b"%PDF-":
        return pdf_text(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextExtractionError("not UTF-8 text (and not a PDF)") from exc
    text = normalise_text(text)
    if not text:
        raise TextExtractionError("the file contains no text")
    return text
