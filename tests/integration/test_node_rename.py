"""A TPS structure set comes back renamed to TG-263, with the mapping SR (DCMTK peers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.factories import RoiSpec, make_ct_series, make_rtstruct, write_dataset
from tests.integration.conftest import STORESCU, RtNode, StoreSCP, push, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not STORESCU.exists(), reason="DCMTK storescu not installed"),
]

LOCAL_NAMES = {
    "BODY": "External",
    "Lt Parotid": "Parotid_L",
    "PAROTID_R": "Parotid_R",
    "cord PRV 5mm": "SpinalCord_PRV05",
    "PTV 70Gy": "PTV_70Gy",
    "zz helper ring": "zz helper ring",  # a helper the renamer must leave alone
}


def test_rtstruct_is_renamed_and_mapping_reported(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    node = make_node(tps.port, overrides={"engines": {"llm_model": None}})
    ct = make_ct_series(n_slices=6, rows=64, cols=64)
    rois = [RoiSpec(name, (0.0, 0.0), (20.0 + 5 * i, 15.0)) for i, name in enumerate(LOCAL_NAMES)]
    source = make_rtstruct(ct, rois)
    path = write_dataset(source, tmp_path / "rs.dcm")
    assert push(node.port, [path]).returncode == 0

    def arrived() -> list[pydicom.Dataset] | None:
        found = [pydicom.dcmread(f) for f in tps.files()]
        return found if len(found) >= 2 else None

    outputs = wait_for(arrived, 60, "the renamed RTSTRUCT and its mapping SR")
    (renamed,) = [d for d in outputs if d.Modality == "RTSTRUCT"]
    (report,) = [d for d in outputs if d.Modality == "SR"]
    names = [str(r.ROIName) for r in renamed.StructureSetROISequence]
    assert names == list(LOCAL_NAMES.values())
    assert renamed.SOPInstanceUID != source.SOPInstanceUID
    assert renamed.SeriesInstanceUID != source.SeriesInstanceUID
    assert renamed.StudyInstanceUID == source.StudyInstanceUID
    assert renamed.ROIContourSequence[1].ContourSequence[0].ContourData == (
        source.ROIContourSequence[1].ContourSequence[0].ContourData
    )
    assert report.StudyInstanceUID == source.StudyInstanceUID
    finished = [r for r in node.audit_rows("job_finished") if r["detail"]["state"] == "done"]
    notes = finished[0]["detail"]["notes"]
    assert any("Lt Parotid" in n and "Parotid_L" in n for n in notes)
