"""Orthanc as the TPS: a real PACS-grade peer receives the node's RTSTRUCT and pushes CT to it.

Orthanc, ``rtnode serve`` and the DCMTK tools all run inside one loopback-only network
namespace created for the test (see ``tests/integration/orthanc.py`` for why). Orthanc
accepts stores only from the modalities it knows (rtnode and the scanner), from 127.0.0.1;
what it received is read back through its REST API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.factories import CTSeries, make_ct_series, write_series
from tests.integration.conftest import (
    CALLER_AE,
    HOST,
    NODE_AE,
    RtNode,
    push,
    requires_dcmtk,
    wait_for,
)
from tests.integration.orthanc import (
    NODE_PORT_IN_NS,
    ORTHANC_AE,
    ORTHANC_DICOM_PORT,
    ORTHANC_HTTP_PORT,
    NamespaceUnavailable,
    NetNamespace,
    Orthanc,
    orthanc_config,
    orthanc_unavailable,
)
from tests.integration.test_node_end_to_end import assert_ai_draft_rtstruct

pytestmark = [pytest.mark.integration, requires_dcmtk]

SCANNER_AE = "SCANNER"
JOB_TIMEOUT_S = 90.0
EXPECTED_ROIS = {"External", "Lung_L", "Lung_R"}

CtOnDisk = tuple[CTSeries, Path]


@pytest.fixture(scope="module")
def ct20(tmp_path_factory: pytest.TempPathFactory) -> CtOnDisk:
    """A 512x512x20 CT (each test changes nothing in it; the UIDs are shared)."""
    series = make_ct_series(n_slices=20, rows=512, cols=512, seed=7)
    directory = tmp_path_factory.mktemp("ct20")
    write_series(series, directory)
    return series, directory


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A fresh loopback-only network namespace (skips when it cannot be created)."""
    reason = orthanc_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        namespace = NetNamespace.create()
    except NamespaceUnavailable as exc:
        pytest.skip(f"Orthanc TPS tests need a network namespace: {exc}")
    yield namespace
    namespace.delete()


@pytest.fixture
def orthanc(netns: NetNamespace, tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc in ``netns``; it knows rtnode (on NODE_PORT_IN_NS) and the scanner."""
    modalities = {
        "rtnode": (NODE_AE, HOST, NODE_PORT_IN_NS),
        "scanner": (SCANNER_AE, HOST, 104),
    }
    server = Orthanc(
        netns, tmp_path / "orthanc", orthanc_config(tmp_path / "orthanc-db", modalities)
    )
    yield server.start()
    server.stop()


@pytest.fixture
def ns_node(make_node: Callable[..., RtNode], netns: NetNamespace, orthanc: Orthanc) -> RtNode:
    """``rtnode serve`` in the namespace; destination ``tps`` is Orthanc."""
    return make_node(
        ORTHANC_DICOM_PORT,
        port=NODE_PORT_IN_NS,
        tps_ae=ORTHANC_AE,
        allow_callers=(CALLER_AE, ORTHANC_AE),
        prefix=netns.prefix,
    )


# --------------------------------------------------------------------------- helpers


def referenced_series(tags: dict[str, Any]) -> set[str]:
    """Series UIDs an RTSTRUCT (Orthanc's simplified tags) references."""
    return {
        series["SeriesInstanceUID"]
        for frame in tags.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    }


def wait_orthanc_rtstruct(orthanc: Orthanc, series: CTSeries) -> dict[str, Any]:
    """The simplified tags of the first RTSTRUCT in Orthanc that references ``series``."""

    def arrived() -> dict[str, Any] | None:
        for tags in orthanc.instances_of("RTSTRUCT"):
            if series.series_uid in referenced_series(tags):
                return tags
        return None

    return wait_for(arrived, JOB_TIMEOUT_S, "an RTSTRUCT in Orthanc", interval_s=0.5)


def assert_rtstruct_in_orthanc(orthanc: Orthanc, series: CTSeries) -> None:
    tags = wait_orthanc_rtstruct(orthanc, series)
    rois = {roi["ROIName"] for roi in tags["StructureSetROISequence"]}
    assert rois >= EXPECTED_ROIS, rois
    assert tags["StudyInstanceUID"] == series.study_uid
    # The stored file itself, as Orthanc keeps it: same checks as with storescp.
    raw = orthanc.get_bytes(f"/instances/{tags['_id']}/file")
    assert_ai_draft_rtstruct(pydicom.dcmread(DicomBytesIO(raw)), series)


# --------------------------------------------------------------------------- tests


def test_orthanc_namespace_is_loopback_only(netns: NetNamespace, orthanc: Orthanc) -> None:
    assert netns.interfaces() == ["lo"]
    assert {a.split("/")[0] for a in netns.addresses()} <= {"127.0.0.1", "::1"}
    system = orthanc.get("/system")
    assert (system["DicomAet"], system["DicomPort"]) == (ORTHANC_AE, ORTHANC_DICOM_PORT)
    # Orthanc listens on 0.0.0.0, but only in the namespace: the host has no such socket.
    assert orthanc.proc is not None
    inside = netns.listening_pids(inside=True)
    assert inside.get(orthanc.proc.pid) == {ORTHANC_DICOM_PORT, ORTHANC_HTTP_PORT}
    assert orthanc.proc.pid not in netns.listening_pids(inside=False)


def test_storescu_ct_to_node_rtstruct_arrives_in_orthanc(
    ns_node: RtNode, orthanc: Orthanc, netns: NetNamespace, ct20: CtOnDisk
) -> None:
    series, ct_dir = ct20
    done = push(ns_node.port, ct_dir, prefix=netns.prefix)
    assert done.returncode == 0, done.stderr[-3000:]

    assert_rtstruct_in_orthanc(orthanc, series)
    # Orthanc holds only the RTSTRUCT: the CT went to the node, not to the TPS.
    assert [s["MainDicomTags"]["Modality"] for s in orthanc.get("/series?expand")] == ["RTSTRUCT"]
    sends = wait_for(
        lambda: ns_node.audit_rows("send_attempted"), 30, "the send_attempted audit row"
    )
    assert sends[-1]["detail"]["ok"], sends


def test_orthanc_pushes_ct_series_to_node_and_gets_rtstruct_back(
    ns_node: RtNode, orthanc: Orthanc, netns: NetNamespace, ct20: CtOnDisk
) -> None:
    series, ct_dir = ct20
    to_tps = push(
        orthanc.dicom_port, ct_dir, calling_ae=SCANNER_AE, called_ae=ORTHANC_AE, prefix=netns.prefix
    )
    assert to_tps.returncode == 0, to_tps.stderr[-3000:]
    (ct_series_id,) = orthanc.get("/series")

    result = orthanc.post(
        "/modalities/rtnode/store", {"Resources": [ct_series_id], "Synchronous": True}
    )
    assert result["InstancesCount"] == len(series.datasets), result
    assert result["FailedInstancesCount"] == 0, result

    assert_rtstruct_in_orthanc(orthanc, series)
    received = ns_node.audit_rows("instances_received")
    assert [(r["detail"]["calling_ae"], r["detail"]["count"]) for r in received] == [
        (ORTHANC_AE, len(series.datasets))
    ]
    study = orthanc.get(f"/studies/{orthanc.get(f'/series/{ct_series_id}')['ParentStudy']}")
    assert len(study["Series"]) == 2  # the CT and the AI draft, in one study
