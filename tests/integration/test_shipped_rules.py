"""The shipped rules (config/rules.yaml) end to end, with real DCMTK peers on loopback.

A breast phantom CT and its clinical note (a Text SR) are pushed by ``storescu`` to
``rtnode serve`` running the shipped config; the TPS (``storescp``) gets:

* from ``ct-organs``: one RTSTRUCT with the classical External and the thorax model's
  organs, at once;
* from ``ct-clinical-context``: the strategy SR and a second RTSTRUCT with the organs and
  the context-aware CTV of the side, surgery and nodal status the note gives.

A CT without text gets the organs, and the context rule is skipped after its wait (the
wait is shortened here; everything else is the shipped file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from engines.segmentation.training.breast import BreastCase, Scenario, scan_case
from engines.segmentation.training.dicom import ct_datasets, write_ct
from tests.factories import breast_ct_acquisition, make_text_sr, write_dataset
from tests.integration.conftest import (
    REPO,
    SHIPPED,
    RtNode,
    StoreSCP,
    push,
    requires_dcmtk,
    wait_for,
)

pytestmark = [pytest.mark.integration, requires_dcmtk]

SEED = 3_100_007
TIMEOUT_S = 300.0
ORGANS = {"External", "Lung_L", "Lung_R", "Heart", "SpinalCord", "Esophagus"}
NOTE = (
    "Radiation oncology consult. 58-year-old woman with a LEFT breast invasive ductal "
    "carcinoma, upper outer quadrant, cT2 cN1 M0, ER+ PR+ HER2-. She underwent a wide local "
    "excision with axillary sampling: pT2 pN1a (2/12 nodes), margins clear. No neoadjuvant "
    "therapy. Referred for adjuvant whole-breast and regional nodal radiotherapy."
)
OVERRIDES = {"workers": {"job_timeout_s": 300}, "engines": {"segmentation_threads": 1}}


def _breast_ct(directory: Path, patient_id: str) -> list[Path]:
    """A 256 x 256 (1.8 mm) breast phantom CT, 5 mm slices from below the breasts to the
    neck, for a patient with a left breast cancer after breast-conserving surgery."""
    case = replace(BreastCase.sample(SEED), scenario=Scenario("left", "BCS", "N1"))
    acq = breast_ct_acquisition(case.anatomy, SEED)
    hu, _, _ = scan_case(case, acq, with_ctv=False)
    return write_ct(ct_datasets(hu, acq, patient_id=patient_id), directory)


def _arrived(tps: StoreSCP) -> list[Dataset]:
    found = []
    for path in tps.files():
        try:
            found.append(pydicom.dcmread(path))
        except Exception:  # storescp may still be writing it
            continue
    return found


def _rtstructs(tps: StoreSCP) -> list[Dataset]:
    return [ds for ds in _arrived(tps) if ds.Modality == "RTSTRUCT"]


def _rois(ds: Dataset) -> set[str]:
    return {str(r.ROIName) for r in ds.StructureSetROISequence}


def _shipped_rules_with_wait(tmp_path: Path, wait_seconds: float) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load((REPO / "config" / "rules.yaml").read_text())[
        "rules"
    ]
    for rule in rules:
        if "clinical_text" in rule:
            rule["clinical_text"]["wait_seconds"] = wait_seconds
    return rules


def test_ct_with_its_note_gets_organs_strategy_and_the_context_ctv(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    node = make_node(tps.port, rules=SHIPPED, overrides=OVERRIDES)
    files = _breast_ct(tmp_path / "ct", "SHIPPED-1")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    sr = make_text_sr(NOTE, patient_id="SHIPPED-1", study_uid=str(first.StudyInstanceUID))
    write_dataset(sr, tmp_path / "note" / "note.dcm")

    assert push(node.port, tmp_path / "note").returncode == 0
    assert push(node.port, tmp_path / "ct").returncode == 0

    def both() -> list[Dataset] | None:
        found = _rtstructs(tps)
        return found if len(found) >= 2 else None

    structure_sets = wait_for(both, TIMEOUT_S, "two RTSTRUCTs at the TPS", interval_s=0.5)
    by_ctv = {any(n.startswith("CTV") for n in _rois(ds)): ds for ds in structure_sets}
    organs, context = by_ctv[False], by_ctv[True]
    assert _rois(organs) >= ORGANS
    assert [n for n in _rois(organs) if n == "External"] == ["External"]
    context_rois = _rois(context)
    assert context_rois >= ORGANS
    # left, breast-conserving surgery, pN1a: whole breast and the regional nodes, left only
    assert {"CTVp_Breast_L", "CTVn_Breast_L"} <= context_rois, context_rois
    assert not any(n.startswith("CTV") and n.endswith("_R") for n in context_rois)
    for ds in (organs, context):
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        marking = f"{ds.get('StructureSetLabel', '')} | {ds.get('SeriesDescription', '')}"
        assert re.search(r"(?i)\bAI\b", marking) and re.search(r"(?i)draft", marking), marking

    reports = wait_for(
        lambda: [ds for ds in _arrived(tps) if ds.Modality == "SR"] or None,
        60,
        "the strategy SR at the TPS",
    )
    assert len(reports) == 1 and reports[0].StudyInstanceUID == first.StudyInstanceUID
    assert reports[0].Manufacturer == "rtnode"
    assert node.audit_rows("clinical_text_joined"), "no clinical_text_joined audit row"
    finished = node.audit_rows("job_finished")
    notes = " ".join(str(n) for row in finished for n in row["detail"].get("notes", []))
    assert "regional" in notes.lower() or "CTVn" in notes, notes


def test_ct_without_text_gets_organs_and_the_context_rule_is_skipped(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    rules = _shipped_rules_with_wait(tmp_path, 3)
    node = make_node(tps.port, rules=rules, overrides=OVERRIDES)
    _breast_ct(tmp_path / "ct", "SHIPPED-2")
    assert push(node.port, tmp_path / "ct").returncode == 0

    (organs,) = wait_for(lambda: _rtstructs(tps) or None, TIMEOUT_S, "the organ RTSTRUCT")
    assert _rois(organs) >= ORGANS and not any(n.startswith("CTV") for n in _rois(organs))
    wait_for(
        lambda: node.audit_rows("clinical_text_missing_skipped"),
        60,
        "the clinical_text_missing_skipped audit row",
    )
    assert len(_rtstructs(tps)) == 1
    assert not [ds for ds in _arrived(tps) if ds.Modality == "SR"]
