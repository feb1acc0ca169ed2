"""The text stage's result as a Comprehensive SR (an AI draft for review).

One new instance in a new series of the CT's study, referencing every CT image it was made
for (Current Requested Procedure Evidence), with containers for the summary, the facts (age
and PSA as NUM items with UCUM units), the strategy with the protocol rule behind each
decision, the rules/LLM disagreements and the source documents.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engines.dicom_output import CT_IMAGE_STORAGE
from engines.sr import (
    COMMENT,
    COMPREHENSIVE_SR_STORAGE,
    SCHEME,
    container,
    evidence,
    num_item,
    sr_header,
    text_item,
)

__all__ = ["COMPREHENSIVE_SR_STORAGE", "make_clinical_sr"]

TITLE = ("RTSTRAT", SCHEME, "Radiotherapy strategy from clinical text")
SUMMARY = ("CLSUMM", SCHEME, "Clinical summary")
FACTS = ("CLFACTS", SCHEME, "Clinical facts")
STRATEGY = ("RTPLANSTRAT", SCHEME, "Radiotherapy strategy")
DISAGREEMENTS = ("CLDISAG", SCHEME, "Rules and LLM disagreements")
SOURCES = ("CLSRC", SCHEME, "Source documents")
SERIES_NUMBER = 902
DRAFT_TEXT = (
    "AI draft: clinical facts, strategy and summary were derived automatically from clinical "
    "text (deterministic rules, protocol files, optional local LLM). Review before clinical use."
)
UNITS = {"age": ("a", "UCUM", "year"), "psa": ("ng/mL", "UCUM", "nanogram per milliliter")}


def make_clinical_sr(
    ct_images: Seq[Dataset],
    result: dict[str, Any],
    sources: Seq[str],
    now: datetime | None = None,
) -> Dataset:
    """The SR for ``result`` (``ClinicalAnalysis.to_json()``) in the study of ``ct_images``."""
    if not ct_images:
        raise ValueError("the clinical SR needs the CT images it refers to")
    ds = sr_header(
        ct_images[0],
        now or datetime.now(),
        title=TITLE,
        series_number=SERIES_NUMBER,
        series_description="RT strategy from clinical text (AI draft)",
    )
    ds.ContentSequence = Sequence(
        [
            text_item(COMMENT, DRAFT_TEXT),
            text_item(SUMMARY, str(result.get("summary") or "")),
            container(FACTS, _fact_items(result)),
            container(STRATEGY, _strategy_items(result)),
            container(DISAGREEMENTS, _disagreement_items(result)),
            container(SOURCES, [text_item(COMMENT, s[:1024]) for s in sources] or [_none()]),
        ]
    )
    refs = [
        (
            str(image.SeriesInstanceUID),
            str(image.get("SOPClassUID", CT_IMAGE_STORAGE)),
            str(image.SOPInstanceUID),
        )
        for image in ct_images
    ]
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(
        [evidence(str(ct_images[0].StudyInstanceUID), refs)]
    )
    return ds


def _fact_items(result: dict[str, Any]) -> list[Dataset]:
    keys = ["site", "laterality", "T", "N", "M", "nodes_positive", "surgery", "neoadjuvant", "age"]
    if result.get("site") == "prostate":
        keys += ["psa", "gleason", "grade_group", "svi"]
    items = []
    for key in keys:
        value = result.get(key)
        if key in UNITS and value is not None:
            items.append(
                num_item((f"CL{key.upper()}", SCHEME, key), f"{float(value):g}", UNITS[key])
            )
        else:
            items.append(text_item((f"CL{key.upper()}", SCHEME, key), _plain(value)))
    return items


def _strategy_items(result: dict[str, Any]) -> list[Dataset]:
    strategy: dict[str, Any] = result.get("strategy") or {}
    rules: dict[str, str] = result.get("protocol_rules") or {}
    items = []
    for key, value in strategy.items():
        rule = f" [rule {rules[key]}]" if key in rules else ""
        items.append(text_item((f"ST{key.upper()[:12]}", SCHEME, key), f"{_plain(value)}{rule}"))
    return items or [_none()]


def _disagreement_items(result: dict[str, Any]) -> list[Dataset]:
    items = []
    for d in result.get("disagreements") or []:
        text = (
            f"{d['field']}: rules {_plain(d['rules'])}; LLM {_plain(d['llm'])}; "
            f"used {_plain(d['used'])} ({d['reason']})"
        )
        items.append(text_item(COMMENT, text[:1024]))
    return items or [_none()]


def _plain(value: Any) -> str:
    if value is None:
        return "not stated"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and "prescriptions" in value:
        doses = "; ".join(
            f"{p['dose_gy']:g} Gy in {p['fractions']} fractions to {p['target']}"
            for p in value["prescriptions"]
        )
        return f"{value['name']} ({doses})"
    return str(value)


def _none() -> Dataset:
    return text_item(COMMENT, "none")
