"""The mapping report as a Comprehensive SR: one container per ROI (old name, new name,
method, confidence), marked as an AI draft, referencing the original and renamed RTSTRUCTs."""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engines.naming.rtstruct import RT_STRUCTURE_SET_STORAGE, RoiMapping
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

__all__ = ["COMPREHENSIVE_SR_STORAGE", "make_mapping_sr"]

TITLE = ("TG263MAP", SCHEME, "TG-263 structure name mapping")
ROI_CONTAINER = ("ROIMAP", SCHEME, "Structure name mapping")
OLD_NAME = ("ROIOLD", SCHEME, "Original ROI name")
NEW_NAME = ("ROINEW", SCHEME, "TG-263 ROI name")
METHOD = ("ROIMETH", SCHEME, "Renaming method")
CONFIDENCE = ("ROICONF", SCHEME, "Renaming confidence")
ROI_NUMBER = ("ROINUM", SCHEME, "ROI number")
REASON = ("ROIWHY", SCHEME, "Renaming reason")
NO_UNITS = ("1", "UCUM", "no units")
DRAFT_TEXT = (
    "AI draft: structure names were mapped to AAPM TG-263 automatically (rules, optional "
    "local LLM). Review every mapping before clinical use."
)


def make_mapping_sr(
    original: Dataset, renamed: Dataset, mappings: list[RoiMapping], now: datetime | None = None
) -> Dataset:
    """A Comprehensive SR listing every ROI's mapping (a new series in the same study)."""
    ds = sr_header(
        original,
        now or datetime.now(),
        title=TITLE,
        series_number=901,
        series_description="TG-263 mapping (AI draft)",
    )
    ds.ContentSequence = Sequence(
        [text_item(COMMENT, DRAFT_TEXT)] + [_roi_item(m) for m in mappings]
    )
    refs = [
        (str(d.SeriesInstanceUID), RT_STRUCTURE_SET_STORAGE, str(d.SOPInstanceUID))
        for d in (original, renamed)
    ]
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(
        [evidence(str(original.get("StudyInstanceUID", "")), refs)]
    )
    return ds


def _roi_item(mapping: RoiMapping) -> Dataset:
    d = mapping.decision
    children = [
        text_item(ROI_NUMBER, str(mapping.roi_number)),
        text_item(OLD_NAME, d.old_name),
        text_item(NEW_NAME, d.new_name),
        text_item(METHOD, d.method),
        num_item(CONFIDENCE, f"{d.confidence:.2f}", NO_UNITS),
    ]
    if d.reason:
        children.append(text_item(REASON, d.reason[:1024]))
    return container(ROI_CONTAINER, children)
