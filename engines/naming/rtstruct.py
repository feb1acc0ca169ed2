"""Rename the ROIs of an RT Structure Set into a new instance (an AI draft for review).

The copy gets new SOP Instance and Series UIDs and keeps the Study, the Frame of Reference,
every contour and every reference. Only ROI names, display colours of renamed ROIs, their RT
ROI Interpreted Type and the labels that mark the object as a renamed draft change. Two ROIs
never end up with one name: where a new name is taken, that ROI keeps its own name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engines.dicom_output import RT_STRUCTURE_SET_STORAGE
from engines.naming.decision import ABSTAIN, Decision

logger = logging.getLogger(__name__)

DRAFT_LABEL = "TG263 AI DRAFT"  # StructureSetLabel (SH, 16 characters at most)
DRAFT_DESCRIPTION = "TG-263 renamed AI draft - review before clinical use"
SERIES_DESCRIPTION = "TG-263 renamed (AI draft)"
RGB = tuple[int, int, int]


class RTStructError(ValueError):
    """The dataset is not an RT Structure Set that can be renamed."""


@dataclass(frozen=True)
class RoiMapping:
    """One ROI of the structure set and the decision taken for it."""

    roi_number: int
    decision: Decision


@dataclass(frozen=True)
class RenamedStructureSet:
    dataset: Dataset
    mappings: list[RoiMapping]


@dataclass(frozen=True)
class StyleSource:
    """Where display colours and interpreted types of TG-263 names come from."""

    colour: Callable[[str], RGB | None]
    interpreted_type: Callable[[str], str | None]


def is_rtstruct(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == RT_STRUCTURE_SET_STORAGE or (
        ds.get("Modality") == "RTSTRUCT"
    )


def roi_names(ds: Dataset) -> list[tuple[int, str]]:
    """(ROI Number, ROI Name) of every ROI, in the dataset's order."""
    if not is_rtstruct(ds) or "StructureSetROISequence" not in ds:
        raise RTStructError("not an RT Structure Set with a StructureSetROISequence")
    return [
        (int(item.ROINumber), str(item.get("ROIName", ""))) for item in ds.StructureSetROISequence
    ]


def decide_rois(ds: Dataset, decide: Callable[[str], Decision]) -> list[RoiMapping]:
    """A decision for every ROI, with duplicate new names resolved (see module docstring)."""
    mappings = [RoiMapping(number, decide(name)) for number, name in roi_names(ds)]
    return _unique_names(mappings)


def _unique_names(mappings: list[RoiMapping]) -> list[RoiMapping]:
    taken: dict[str, int] = {}
    for mapping in mappings:
        if not mapping.decision.renamed:
            taken.setdefault(mapping.decision.new_name, mapping.roi_number)
    order = sorted(
        (m for m in mappings if m.decision.renamed), key=lambda m: -m.decision.confidence
    )
    kept: dict[int, RoiMapping] = {}
    for mapping in order:
        holder = taken.get(mapping.decision.new_name)
        if holder is None:
            taken[mapping.decision.new_name] = mapping.roi_number
            continue
        decision = mapping.decision
        reason = f"{decision.new_name} is already ROI {holder}"
        kept[mapping.roi_number] = RoiMapping(
            mapping.roi_number,
            replace(
                decision, new_name=decision.old_name, method=ABSTAIN, confidence=0.0, reason=reason
            ),
        )
    return [kept.get(m.roi_number, m) for m in mappings]


def rename_structure_set(
    ds: Dataset, mappings: list[RoiMapping], style: StyleSource, now: datetime | None = None
) -> RenamedStructureSet:
    """A renamed copy of ``ds`` (``ds`` itself is not modified)."""
    renamed = copy.deepcopy(ds)
    by_number = {m.roi_number: m.decision for m in mappings}
    for item in renamed.StructureSetROISequence:
        decision = by_number.get(int(item.ROINumber))
        if decision is not None and decision.renamed:
            item.ROIName = decision.new_name
    _restyle(renamed, by_number, style)
    _mark_new_instance(renamed, now or datetime.now())
    return RenamedStructureSet(renamed, mappings)


def _restyle(ds: Dataset, decisions: dict[int, Decision], style: StyleSource) -> None:
    for item in ds.get("ROIContourSequence", []):
        decision = decisions.get(int(item.ReferencedROINumber))
        colour = style.colour(decision.new_name) if decision and decision.renamed else None
        if colour is not None:
            item.ROIDisplayColor = list(colour)
    for item in ds.get("RTROIObservationsSequence", []):
        decision = decisions.get(int(item.ReferencedROINumber))
        itype = style.interpreted_type(decision.new_name) if decision and decision.renamed else None
        if itype is not None:
            item.RTROIInterpretedType = itype


def _mark_new_instance(ds: Dataset, now: datetime) -> None:
    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.StructureSetLabel = DRAFT_LABEL
    ds.StructureSetDescription = DRAFT_DESCRIPTION
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    if "OperatorsName" not in ds:
        ds.OperatorsName = ""  # type 2 in the RT Series module
    for keyword in ("ReviewDate", "ReviewTime", "ReviewerName"):
        if keyword in ds:
            delattr(ds, keyword)
