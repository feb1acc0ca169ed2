"""Plain text from clinical documents: DICOM Text SR content trees and Encapsulated PDF.

Pure functions, no database and no network: the node calls :meth:`ExtractedText.from_file`
when an SR or PDF series completes (never in the association thread), and
``rtnode submit-text`` calls :func:`pdf_text` for a PDF given on the command line.

An SR becomes Markdown-like text in document order: the document title and every nested
CONTAINER's concept name are headings (``#``, ``##``, ...), other content items are
``Concept name: value`` lines (TEXT as written, CODE as its code meaning, NUM as value and
units, DATE/TIME/DATETIME in ISO form, PNAME, UIDREF), items nested under a non-container
item are indented below it. Spatial coordinates and image references carry no text and
are left out. Anything unusable raises :class:`TextExtractionError` with a message meant
for the audit log and the operator.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

SR_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    }
)
PDF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF
TEXT_SOP_CLASSES = SR_SOP_CLASSES | {PDF_SOP_CLASS}

MAX_DEPTH = 32  # content tree nesting; deeper trees are refused as malformed
MAX_PDF_PAGES = 200
MAX_PDF_BYTES = 32 * 1024 * 1024  # extraction runs in the completion tick: keep it bounded
MAX_TEXT_CHARS = 1_000_000

_UCUM_READABLE = {"a": "years", "mo": "months", "wk": "weeks", "d": "days", "h": "hours"}


class TextExtractionError(ValueError):
    """A document has no usable text; the message says why (shown and audited)."""


@dataclass(frozen=True)
class ExtractedText:
    """The text of one clinical document and the identifiers that join it to a CT."""

    kind: str  # "SR" or "PDF"
    sop_instance_uid: str
    patient_id: str
    study_uid: str
    accession_number: str
    text: str

    @property
    def source(self) -> str:
        """As :class:`engines.base.ClinicalDocument` names it: ``"SR <uid>"``."""
        return f"{self.kind} {self.sop_instance_uid}"

    @classmethod
    def from_file(cls, path: Path) -> ExtractedText:
        """Read a DICOM SR or Encapsulated PDF file; raises TextExtractionError."""
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # pydicom raises many types on malformed input
            raise TextExtractionError(f"unreadable DICOM file: {type(exc).__name__}") from exc
        return cls.from_dataset(ds)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ExtractedText:
        """Extract the text of an SR or Encapsulated PDF dataset; raises TextExtractionError."""
        sop_class = str(ds.get("SOPClassUID", ""))
        if str(ds.get("Manufacturer", "")).strip().lower() == "rtnode":
            raise TextExtractionError(
                "rtnode's own output (e.g. a strategy SR), not clinical input"
            )
        try:
            if sop_class in SR_SOP_CLASSES:
                kind, text = "SR", sr_text(ds)
            elif sop_class == PDF_SOP_CLASS:
                kind, text = "PDF", pdf_text(_pdf_bytes(ds))
            else:
                raise TextExtractionError(f"SOP Class {sop_class or '(none)'} holds no text")
            return cls(
                kind=kind,
                sop_instance_uid=_required(ds, "SOPInstanceUID"),
                patient_id=_required(ds, "PatientID"),
                study_uid=_required(ds, "StudyInstanceUID"),
                accession_number=str(ds.get("AccessionNumber", "") or "").strip(),
                text=text,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TextExtractionError):
                raise
            raise TextExtractionError(f"malformed dataset: {type(exc).__name__}: {exc}") from exc


def _required(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise TextExtractionError(f"no {keyword}: the document cannot be joined to a CT")
    return value


# -- SR ------------------------------------------------------------------------------------


def sr_text(ds: Dataset) -> str:
    """The content tree of an SR dataset as text; raises TextExtractionError when empty."""
    if "ContentSequence" not in ds:
        raise TextExtractionError("SR has no ContentSequence")
    lines = [f"# {title}"] if (title := _concept_name(ds)) else []
    body = list(_items(ds.ContentSequence, depth=1))
    if not any(kind == "value" for kind, _ in body):
        raise TextExtractionError("SR has no text, code, number or date content items")
    lines += [line for _, line in body]
    return normalise_text("\n".join(lines))


def _items(sequence: Any, depth: int, indent: str = "") -> Iterator[tuple[str, str]]:
    """(kind, line) for every item of ``sequence`` in order: kind "heading" or "value"."""
    if depth > MAX_DEPTH:
        raise TextExtractionError(f"SR content tree nested deeper than {MAX_DEPTH} levels")
    for item in sequence:
        value_type = str(item.get("ValueType", "")).upper()
        name = _concept_name(item)
        children = item.get("ContentSequence") or []
        if value_type == "CONTAINER":
            if name:
                yield "heading", f"{'#' * (depth + 1)} {name}"
            yield from _items(children, depth + 1, indent)
            continue
        value = _value(item, value_type)
        if value is not None:
            yield "value", f"{indent}{name}: {value}" if name else f"{indent}{value}"
        yield from _items(children, depth + 1, indent + "  ")


def _concept_name(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].get("CodeMeaning", "") or "").strip() if seq else ""


def _value(item: Dataset, value_type: str) -> str | None:
    """The item's value as text, or None for value types that carry no text."""
    if value_type == "TEXT":
        return _nonempty(item.get("TextValue"))
    if value_type == "CODE":
        seq = item.get("ConceptCodeSequence") or []
        return _nonempty(seq[0].get("CodeMeaning")) if seq else None
    if value_type == "NUM":
        return _num(item)
    if value_type == "DATE":
        return _iso_date(str(item.get("Date", "")))
    if value_type == "TIME":
        return _iso_time(str(item.get("Time", "")))
    if value_type == "DATETIME":
        raw = str(item.get("DateTime", ""))
        date = _iso_date(raw[:8])
        return f"{date} {_iso_time(raw[8:])}".strip() if date and raw[8:] else date
    if value_type == "PNAME":
        return _nonempty(str(item.get("PersonName", "")).replace("^", " "))
    if value_type == "UIDREF":
        return _nonempty(item.get("UID"))
    return None  # IMAGE, COMPOSITE, WAVEFORM, SCOORD, TCOORD...: no text


def _nonempty(value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


def _num(item: Dataset) -> str | None:
    measured = item.get("MeasuredValueSequence") or []
    if not measured:
        qualifier = item.get("NumericValueQualifierCodeSequence") or []
        return _nonempty(qualifier[0].get("CodeMeaning")) if qualifier else None
    mv = measured[0]
    number = _nonempty(mv.get("NumericValue"))
    if number is None:
        return None
    units = mv.get("MeasurementUnitsCodeSequence") or []
    unit = _unit(units[0]) if units else ""
    return f"{number} {unit}".strip()


def _unit(code: Dataset) -> str:
    """UCUM units as written (``ng/mL``), time units in words, unitless ``1`` as nothing."""
    value = str(code.get("CodeValue", "") or "")
    if str(code.get("CodingSchemeDesignator", "")) == "UCUM" and value:
        if value == "1":
            return ""
        return _UCUM_READABLE.get(value, value)
    return str(code.get("CodeMeaning", "") or value)


def _iso_date(raw: str) -> str | None:
    raw = raw.strip()
    if re.fullmatch(r"\d{8}", raw):
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return raw or None


def _iso_time(raw: str) -> str:
    raw = raw.strip()
    if re.fullmatch(r"\d{4}(\d{2})?(\.\d+)?", raw):
        return ":".join(raw[i : i + 2] for i in range(0, min(len(raw), 6), 2))
    return raw


# -- PDF -----------------------------------------------------------------------------------


def _pdf_bytes(ds: Dataset) -> bytes:
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "application/pdf")).strip()
    if mime.lower() != "application/pdf":
        raise TextExtractionError(f"encapsulated document is {mime!r}, not application/pdf")
    data = ds.get("EncapsulatedDocument")
    if not data:
        raise TextExtractionError("Encapsulated PDF has no EncapsulatedDocument")
    length = ds.get("EncapsulatedDocumentLength")
    return bytes(data[: int(length)] if length else data)


def pdf_text(data: bytes) -> str:
    """The text layer of a PDF, pages separated by a blank line; raises TextExtractionError."""
    from pypdf import PdfReader

    if not data.lstrip()[:5] == b"%PDF-":
        raise TextExtractionError("not a PDF file (no %PDF- header)")
    if len(data) > MAX_PDF_BYTES:
        raise TextExtractionError(f"PDF larger than {MAX_PDF_BYTES // (1024 * 1024)} MiB")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise TextExtractionError("PDF is encrypted")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise TextExtractionError(f"PDF has more than {MAX_PDF_PAGES} pages")
        pages = [page.extract_text() or "" for page in reader.pages]
    except TextExtractionError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise TextExtractionError(f"unreadable PDF: {type(exc).__name__}: {exc}") from exc
    text = normalise_text("\n\n".join(pages))
    if not text:
        raise TextExtractionError("PDF has no text layer (a scanned image?)")
    return text


# -- shared --------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Strip NULs and trailing spaces, unify newlines, at most one blank line in a row.

    Raises TextExtractionError when the text is longer than ``MAX_TEXT_CHARS``.
    """
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    if len(out) > MAX_TEXT_CHARS:
        raise TextExtractionError(f"text longer than {MAX_TEXT_CHARS} characters")
    return out if out.strip() else ""
