"""Building blocks of the Comprehensive SR reports the node writes (AI drafts).

The TG-263 mapping report (:mod:`engines.naming.report_sr`) and the clinical strategy
report (:mod:`engines.clinical.report_sr`) share the header (a new series in the source
study, patient and study attributes copied, Manufacturer ``rtnode``), the content items
(TEXT, NUM, CONTAINER, codes of the product's private scheme) and the evidence sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from engines.dicom_output import COMPREHENSIVE_SR_STORAGE, copy_patient_study, new_file_meta

SCHEME = "99RTNODE"  # private coding scheme of this product
COMMENT = ("121106", "DCM", "Comment")
UTF8 = "ISO_IR 192"  # names, notes and summaries may hold any character
Concept = tuple[str, str, str]  # code value, coding scheme designator, code meaning

_OPTIONAL = ("StudyDescription",)


def sr_header(
    source: Dataset,
    now: datetime,
    *,
    title: Concept,
    series_number: int,
    series_description: str,
) -> Dataset:
    """A new Comprehensive SR instance in a new series of ``source``'s study, with its
    document title and no content yet."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = new_file_meta(COMPREHENSIVE_SR_STORAGE, sop_uid)
    ds.SpecificCharacterSet = UTF8
    copy_patient_study(ds, source, _OPTIONAL)
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR_STORAGE, sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
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
    ds.ConceptNameCodeSequence = Sequence([code(*title)])
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def text_item(concept: Concept, value: str) -> Dataset:
    """A CONTAINS TEXT item; an empty value is written as ``(empty)`` (TextValue is type 1)."""
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([code(*concept)])
    item.TextValue = value or "(empty)"
    return item


def num_item(concept: Concept, value: str, units: Concept) -> Dataset:
    """A CONTAINS NUM item; ``value`` is the formatted decimal string."""
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = Sequence([code(*units)])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = Sequence([code(*concept)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def container(concept: Concept, children: list[Dataset]) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
    item.ConceptNameCodeSequence = Sequence([code(*concept)])
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


def evidence(study_uid: str, instances: Iterable[tuple[str, str, str]]) -> Dataset:
    """One Current Requested Procedure Evidence item: ``instances`` are (series UID,
    SOP Class UID, SOP Instance UID), grouped by series in the order first seen."""
    by_series: dict[str, list[Dataset]] = {}
    for series_uid, sop_class, sop_uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_uid
        by_series.setdefault(series_uid, []).append(ref)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, refs in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = Sequence(refs)
        series_items.append(series)
    study.ReferencedSeriesSequence = Sequence(series_items)
    return study
