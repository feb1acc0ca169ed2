"""The mapping report as a Comprehensive SR: one container per ROI (old name, new name,
method, confidence), marked as an AI draft, referencing the original and renamed RTSTRUCTs."""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from engines.naming.rtstruct import RT_STRUCTURE_SET_STORAGE, RoiMapping

COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
SCHEME = "99RTNODE"  # private coding scheme of this product
TITLE = ("TG263MAP", SCHEME, "TG-263 structure name mapping")
ROI_CONTAINER = ("ROIMAP", SCHEME, "Structure name mapping")
OLD_NAME = ("ROIOLD", SCHEME, "Original ROI name")
NEW_NAME = ("ROINEW", SCHEME, "TG-263 ROI name")
METHOD = ("ROIMETH", SCHEME, "Renaming method")
CONFIDENCE = ("ROICONF", SCHEME, "Renaming confidence")
ROI_NUMBER = ("ROINUM", SCHEME, "ROI number")
REASON = ("ROIWHY", SCHEME, "Renaming reason")
COMMENT = ("121106", "DCM", "Comment")
NO_UNITS = ("1", "UCUM", "no units")
DRAFT_TEXT = (
    "AI draft: structure names were mapped to AAPM TG-263 automatically (rules, optional "
    "local LLM). Review every mapping before clinical use."
)
_PATIENT_STUDY = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def make_mapping_sr(
    original: Dataset, renamed: Dataset, mappings: list[RoiMapping], now: datetime | None = None
) -> Dataset:
    """A Comprehensive SR listing every ROI's mapping (a new series in the same study)."""
    now = now or datetime.now()
    ds = _header(original, now)
    ds.ContentSequence = Sequence([_text(COMMENT, DRAFT_TEXT)] + [_roi_item(m) for m in mappings])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(original, renamed)])
    return ds


def _header(original: Dataset, now: datetime) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(sop_uid)
    for keyword in _PATIENT_STUDY:
        if keyword in original:
            setattr(ds, keyword, original[keyword].value)
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR_STORAGE, sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDescription = "TG-263 mapping (AI draft)"
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


def _roi_item(mapping: RoiMapping) -> Dataset:
    d = mapping.decision
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
    item.ConceptNameCodeSequence = Sequence([_code(*ROI_CONTAINER)])
    item.ContinuityOfContent = "SEPARATE"
    children = [
        _text(ROI_NUMBER, str(mapping.roi_number)),
        _text(OLD_NAME, d.old_name or "(empty)"),
        _text(NEW_NAME, d.new_name or "(empty)"),
        _text(METHOD, d.method),
        _num(CONFIDENCE, d.confidence),
    ]
    if d.reason:
        children.append(_text(REASON, d.reason[:1024]))
    item.ContentSequence = Sequence(children)
    return item


def _text(concept: tuple[str, str, str], value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    item.TextValue = value
    return item


def _num(concept: tuple[str, str, str], value: float) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{value:.2f}"
    measured.MeasurementUnitsCodeSequence = Sequence([_code(*NO_UNITS)])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = Sequence([_code(*concept)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _evidence(original: Dataset, renamed: Dataset) -> Dataset:
    by_series: dict[str, list[Dataset]] = {}
    for ds in (original, renamed):
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ref.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ref)
    study = Dataset()
    study.StudyInstanceUID = str(original.get("StudyInstanceUID", ""))
    series_items = []
    for series_uid, refs in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = Sequence(refs)
        series_items.append(series)
    study.ReferencedSeriesSequence = Sequence(series_items)
    return study
