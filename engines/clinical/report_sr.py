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

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SCHEME = "99RTNODE"  # the product's private coding scheme (as the renaming report)
TITLE = ("RTSTRAT", SCHEME, "Radiotherapy strategy from clinical text")
SUMMARY = ("CLSUMM", SCHEME, "Clinical summary")
FACTS = ("CLFACTS", SCHEME, "Clinical facts")
STRATEGY = ("RTPLANSTRAT", SCHEME, "Radiotherapy strategy")
DISAGREEMENTS = ("CLDISAG", SCHEME, "Rules and LLM disagreements")
SOURCES = ("CLSRC", SCHEME, "Source documents")
COMMENT = ("121106", "DCM", "Comment")
SERIES_NUMBER = 902
DRAFT_TEXT = (
    "AI draft: clinical facts, strategy and summary were derived automatically from clinical "
    "text (deterministic rules, protocol files, optional local LLM). Review before clinical use."
)
UNITS = {"age": ("a", "UCUM", "year"), "psa": ("ng/mL", "UCUM", "nanogram per milliliter")}
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_OPTIONAL = ("StudyDescription",)
UTF8 = "ISO_IR 192"  # notes, names and the summary may hold any character


def make_clinical_sr(
    ct_images: Seq[Dataset],
    result: dict[str, Any],
    sources: Seq[str],
    now: datetime | None = None,
) -> Dataset:
    """The SR for ``result`` (``ClinicalAnalysis.to_json()``) in the study of ``ct_images``."""
    if not ct_images:
        raise ValueError("the clinical SR needs the CT images it refers to")
    ds = _header(ct_images[0], now or datetime.now())
    ds.ContentSequence = Sequence(
        [
            _text(COMMENT, DRAFT_TEXT),
            _text(SUMMARY, str(result.get("summary") or "")),
            _container(FACTS, _fact_items(result)),
            _container(STRATEGY, _strategy_items(result)),
            _container(DISAGREEMENTS, _disagreement_items(result)),
            _container(SOURCES, [_text(COMMENT, s[:1024]) for s in sources] or [_none()]),
        ]
    )
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(ct_images)])
    return ds


def _header(ct: Dataset, now: datetime) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(sop_uid)
    for keyword in _OPTIONAL:
        if keyword in ct:
            setattr(ds, keyword, ct[keyword].value)
    for keyword in _PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, ct[keyword].value if keyword in ct else "")
    ds.SpecificCharacterSet = UTF8
    ds.StudyInstanceUID = ct.StudyInstanceUID
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR_STORAGE, sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "RT strategy from clinical text (AI draft)"
    ds.InstanceNumber = 1
    ds.Manufacturer = "rtnode"
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.PerformedProcedureCodeSequence = Sequence([])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(*TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def _file_meta(sop_uid: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_SR_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _fact_items(result: dict[str, Any]) -> list[Dataset]:
    keys = ["site", "laterality", "T", "N", "M", "nodes_positive", "surgery", "neoadjuvant", "age"]
    if result.get("site") == "prostate":
        keys += ["psa", "gleason", "grade_group", "svi"]
    items = []
    for key in keys:
        value = result.get(key)
        if key in UNITS and value is not None:
            items.append(_num((f"CL{key.upper()}", SCHEME, key), float(value), UNITS[key]))
        else:
            items.append(_text((f"CL{key.upper()}", SCHEME, key), _plain(value)))
    return items


def _strategy_items(result: dict[str, Any]) -> list[Dataset]:
    strategy: dict[str, Any] = result.get("strategy") or {}
    rules: dict[str, str] = result.get("protocol_rules") or {}
    items = []
    for key, value in strategy.items():
        rule = f" [rule {rules[key]}]" if key in rules else ""
        items.append(_text((f"ST{key.upper()[:12]}", SCHEME, key), f"{_plain(value)}{rule}"))
    return items or [_none()]


def _disagreement_items(result: dict[str, Any]) -> list[Dataset]:
    items = []
    for d in result.get("disagreements") or []:
        text = (
            f"{d['field']}: rules {_plain(d['rules'])}; LLM {_plain(d['llm'])}; "
            f"used {_plain(d['used'])} ({d['reason']})"
        )
        items.append(_text(COMMENT, text[:1024]))
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
    return _text(COMMENT, "none")


def _container(concept: tuple[str, str, str], children: list[Dataset]) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


def _text(concept: tuple[str, str, str], value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    item.TextValue = value or "(empty)"
    return item


def _num(concept: tuple[str, str, str], value: float, units: tuple[str, str, str]) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{value:g}"
    measured.MeasurementUnitsCodeSequence = Sequence([_code(*units)])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _evidence(ct_images: Seq[Dataset]) -> Dataset:
    by_series: dict[str, list[Dataset]] = {}
    for image in ct_images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = str(image.get("SOPClassUID", CT_IMAGE_STORAGE))
        ref.ReferencedSOPInstanceUID = str(image.SOPInstanceUID)
        by_series.setdefault(str(image.SeriesInstanceUID), []).append(ref)
    study = Dataset()
    study.StudyInstanceUID = str(ct_images[0].StudyInstanceUID)
    series_items = []
    for series_uid, refs in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = Sequence(refs)
        series_items.append(series)
    study.ReferencedSeriesSequence = Sequence(series_items)
    return study
