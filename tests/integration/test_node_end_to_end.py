"""The node end to end against real DCMTK peers on loopback.

A DCMTK ``storescu`` plays the TPS pushing a synthetic 512x512 CT; ``rtnode serve`` runs
as a subprocess with its own config and data directory; a DCMTK ``storescp`` plays the
TPS receiving the AI-draft RTSTRUCT. Failures are provoked the way they happen in a
clinic: an unknown AE, a TPS that is down, a worker killed by the OOM killer, a node
killed mid-series, a dataset the node cannot use.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config

from tests.factories import CTSeries, make_ct_series, write_series
from tests.integration.conftest import (
    CALLER_AE,
    HOST,
    NODE_AE,
    STORESCU,
    RtNode,
    StoreSCP,
    acknowledged_files,
    dcmtk_env,
    echo,
    echoscu,
    push,
    requires_dcmtk,
    wait_for,
)

pytestmark = [pytest.mark.integration, requires_dcmtk]

N_SLICES = 40  # 512x512x40: small enough to be quick, big enough to be a real volume
JOB_TIMEOUT_S = 90.0  # completion + segmentation + RTSTRUCT + send, on a slow 2-core box
REJECT_TRIES = 20
EXPECTED_ROIS = {"External", "Lung_L", "Lung_R"}
ROUTE_EVENTS = (
    "instances_received",
    "series_completed",
    "rule_matched",
    "job_started",
    "job_finished",
    "send_attempted",
)

CtOnDisk = tuple[CTSeries, Path]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ct40(tmp_path_factory: pytest.TempPathFactory) -> CtOnDisk:
    """One 512x512x40 CT written once per module; every test uses its own node."""
    series = make_ct_series(n_slices=N_SLICES, rows=512, cols=512, seed=1)
    directory = tmp_path_factory.mktemp("ct40")
    write_series(series, directory)
    return series, directory


# --------------------------------------------------------------------------- helpers


def referenced_ct(rs: Dataset) -> tuple[set[str], set[str]]:
    """(series UIDs, SOP Instance UIDs) an RTSTRUCT references for its contours."""
    series_uids: set[str] = set()
    sop_uids: set[str] = set()
    for frame in rs.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                series_uids.add(str(series.SeriesInstanceUID))
                images = series.get("ContourImageSequence", [])
                sop_uids |= {str(i.ReferencedSOPInstanceUID) for i in images}
    return series_uids, sop_uids


def wait_rtstruct(
    tps: StoreSCP, series: CTSeries, *, all_slices: bool = False, timeout_s: float = JOB_TIMEOUT_S
) -> Dataset:
    """The first RTSTRUCT at the TPS that references ``series`` (every slice if asked)."""
    wanted = {str(ds.SOPInstanceUID) for ds in series.datasets}

    def arrived() -> Dataset | None:
        for rs in tps.rtstructs():
            uids, sops = referenced_ct(rs)
            if series.series_uid in uids and (not all_slices or wanted <= sops):
                return rs
        return None

    return wait_for(arrived, timeout_s, f"an RTSTRUCT for series {series.series_uid}")


def assert_ai_draft_rtstruct(rs: Dataset, series: CTSeries) -> None:
    ct_sops = {str(ds.SOPInstanceUID) for ds in series.datasets}
    assert rs.Modality == "RTSTRUCT"
    assert rs.StudyInstanceUID == series.study_uid
    assert rs.SeriesInstanceUID != series.series_uid
    assert rs.SOPInstanceUID not in ct_sops
    assert rs.PatientID == series.patient_id
    rois = {str(roi.ROIName) for roi in rs.StructureSetROISequence}
    assert rois >= EXPECTED_ROIS, rois
    series_uids, sop_uids = referenced_ct(rs)
    assert series_uids == {series.series_uid}
    assert sop_uids == ct_sops, f"{len(ct_sops - sop_uids)} CT slices not referenced"
    marking = f"{rs.get('StructureSetLabel', '')} | {rs.get('SeriesDescription', '')}"
    assert re.search(r"(?i)\bAI\b", marking) and re.search(r"(?i)draft", marking), marking


def ok_sends(node: RtNode) -> list[dict[str, Any]]:
    return [r for r in node.audit_rows("send_attempted") if r["detail"]["ok"]]


def failed_sends(node: RtNode) -> list[dict[str, Any]]:
    return [r for r in node.audit_rows("send_attempted") if not r["detail"]["ok"]]


def pushed_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"storescu failed ({done.returncode}):\n{done.stderr[-3000:]}"


# --------------------------------------------------------------------------- tests


def test_pushed_ct_comes_back_as_ai_draft_rtstruct(
    node: RtNode, tps: StoreSCP, ct40: CtOnDisk
) -> None:
    series, ct_dir = ct40
    pushed_ok(push(node.port, ct_dir))

    rs = wait_rtstruct(tps, series)
    assert_ai_draft_rtstruct(rs, series)

    wait_for(lambda: ok_sends(node), 30, "the successful send_attempted audit row")
    verify = node.cli("audit", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    rows = node.audit_cli("--study", series.study_uid)
    events = [r["event"] for r in rows]
    for event in ROUTE_EVENTS:
        assert event in events, f"no {event} audit row for the study: {events}"
    assert [r["detail"]["count"] for r in rows if r["event"] == "instances_received"] == [N_SLICES]
    status = node.cli("status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"(?m)^jobs:.*\bdone 1\b", status.stdout), status.stdout


def test_unknown_calling_ae_is_rejected_and_audited(node: RtNode, ct40: CtOnDisk) -> None:
    _, ct_dir = ct40
    done = push(node.port, ct_dir, calling_ae="INTRUDER")

    assert done.returncode != 0
    assert "Association Rejected" in done.stderr, done.stderr
    assert node.spool_sop_uids() == set()
    # The peer must get an A-ASSOCIATE-RJ (calling AE not recognised), every time, not a
    # dropped connection: repeat, since a reject racing the socket close is intermittent.
    outcomes = [echoscu(node.port, NODE_AE, calling_ae="INTRUDER") for _ in range(REJECT_TRIES)]
    assert all(o.returncode != 0 for o in outcomes)
    not_rejected = [o.stderr for o in outcomes if "Calling AE Title Not Recognized" not in o.stderr]
    assert not not_rejected, (
        f"{len(not_rejected)}/{REJECT_TRIES} refused callers saw no A-ASSOCIATE-RJ:\n"
        + not_rejected[0]
    )

    def all_audited() -> list[dict[str, Any]] | None:
        rows = node.audit_rows("association_rejected")
        return rows if len(rows) == REJECT_TRIES + 1 else None

    rejected = wait_for(all_audited, 10, "an association_rejected row per attempt")
    assert {r["detail"]["calling_ae"] for r in rejected} == {"INTRUDER"}
    assert node.running() and echo(node.port, NODE_AE)


def test_tps_down_then_up_delivers_without_manual_action(
    make_node: Callable[..., RtNode], make_tps: Callable[..., StoreSCP], ct40: CtOnDisk
) -> None:
    series, ct_dir = ct40
    tps = make_tps(start=False)
    node = make_node(tps.port)
    pushed_ok(push(node.port, ct_dir))

    failed = wait_for(lambda: failed_sends(node), JOB_TIMEOUT_S, "a failed send_attempted row")
    assert failed[0]["detail"]["error"]
    tps.start()

    rs = wait_rtstruct(tps, series)
    assert_ai_draft_rtstruct(rs, series)
    sent = wait_for(lambda: ok_sends(node), 30, "a successful send_attempted row")
    assert sent[0]["detail"]["attempt"] >= 2


def test_worker_killed_mid_job_is_retried_and_node_survives(
    node: RtNode, tps: StoreSCP, ct40: CtOnDisk
) -> None:
    series, ct_dir = ct40
    pushed_ok(push(node.port, ct_dir))
    first = wait_for(
        lambda: node.audit_rows("job_started"), JOB_TIMEOUT_S, "job_started", interval_s=0.02
    )[0]
    assert not node.audit_rows("job_finished"), "job finished before the worker could be killed"
    os.kill(first["detail"]["worker_pid"], signal.SIGKILL)  # a child of the node we started

    rs = wait_rtstruct(tps, series)
    assert_ai_draft_rtstruct(rs, series)
    finished = node.audit_rows("job_finished")
    assert finished[0]["detail"]["attempt"] == 1
    assert "died" in finished[0]["detail"]["error"], finished[0]["detail"]
    starts = node.audit_rows("job_started")
    assert [s["detail"]["attempt"] for s in starts] == [1, 2]
    assert starts[1]["detail"]["worker_pid"] != first["detail"]["worker_pid"]
    assert node.running() and echo(node.port, NODE_AE)


def test_dead_lettered_delivery_is_resent_on_request(
    make_node: Callable[..., RtNode], make_tps: Callable[..., StoreSCP], ct40: CtOnDisk
) -> None:
    series, ct_dir = ct40
    tps = make_tps(start=False)
    node = make_node(tps.port, overrides={"delivery": {"max_attempts": 2}})
    pushed_ok(push(node.port, ct_dir))

    dead = wait_for(
        lambda: node.audit_rows("delivery_dead_lettered"), JOB_TIMEOUT_S, "a dead letter"
    )[0]
    job_id = dead["job_id"]
    assert len(failed_sends(node)) == 2
    status = node.cli("status")
    assert status.returncode == 0, status.stderr
    last_errors = status.stdout.split("last errors:", 1)[1]
    assert re.search(rf"delivery_dead_lettered job={job_id}\b", last_errors), status.stdout

    tps.start()
    resend = node.cli("resend", str(job_id))
    assert resend.returncode == 0, resend.stdout + resend.stderr
    rs = wait_rtstruct(tps, series)
    assert_ai_draft_rtstruct(rs, series)
    assert node.audit_rows("resend_requested")
    wait_for(lambda: ok_sends(node), 30, "a successful send_attempted row")
    verify = node.cli("audit", "--verify")  # the CLI and the node both appended rows
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_node_killed_mid_series_keeps_acknowledged_instances(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    series = make_ct_series(n_slices=N_SLICES, rows=512, cols=512, seed=2)
    files = write_series(series, tmp_path / "ct")
    first_half, second_half = files[: N_SLICES // 2], files[N_SLICES // 2 :]
    # A long quiet window: the half series must not complete while the node restarts.
    node = make_node(tps.port, overrides={"completion": {"quiet_seconds": 5}})

    scu = subprocess.Popen(
        [str(STORESCU), "-v", "-aet", CALLER_AE, "-aec", NODE_AE, HOST, str(node.port)]
        + [str(f) for f in first_half],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(node.spool_sop_uids()) >= 5, 30, "5 instances", interval_s=0.005)
    node.kill()  # SIGKILL while the first half is still being sent
    _, log = scu.communicate(timeout=60)
    assert scu.returncode != 0, "the node was killed only after the first half was sent"
    acked = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for f in acknowledged_files(log)
    }
    assert acked, log
    assert acked <= node.spool_sop_uids(), "an acknowledged instance is not in the spool"

    node.start()
    assert acked <= node.spool_sop_uids(), "restart recovery removed an acknowledged instance"
    acked_paths = set(acknowledged_files(log))
    rest = [f for f in first_half if f not in acked_paths] + second_half
    pushed_ok(push(node.port, rest))

    rs = wait_rtstruct(tps, series, all_slices=True)
    assert_ai_draft_rtstruct(rs, series)


def _dataset_without_study_uid(source: Path, target: Path) -> str:
    ds = pydicom.dcmread(source)
    del ds.StudyInstanceUID
    uid = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(target, enforce_file_format=True)
    return str(uid)


def _file_with_garbage_dataset(source: Path, target: Path) -> str:
    """A valid file meta header followed by bytes that are no DICOM data set."""
    meta = pydicom.dcmread(source, stop_before_pixels=True).file_meta
    uid = pydicom.uid.generate_uid()
    meta.MediaStorageSOPInstanceUID = uid
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(target, enforce_file_format=True)
    with target.open("ab") as f:
        f.write(b"\xfe\xff\x00\xe0garbage, not a data set" * 64)
    return str(uid)


def _send_file_raw(port: int, path: Path, sop_class: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE ``path`` byte for byte (pynetdicom streams the file's data set unparsed)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title=CALLER_AE)
    ae.add_requested_context(sop_class)
    assoc = ae.associate(HOST, port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(getattr(rsp, "Status", -1))


def test_malformed_datasets_are_refused_and_node_stays_up(
    node: RtNode, ct40: CtOnDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series, ct_dir = ct40
    no_study = tmp_path / "no_study.dcm"
    no_study_uid = _dataset_without_study_uid(ct_dir / "CT_0000.dcm", no_study)
    garbage = tmp_path / "garbage.dcm"
    garbage_uid = _file_with_garbage_dataset(ct_dir / "CT_0001.dcm", garbage)

    done = push(node.port, [no_study])
    assert done.returncode != 0, done.stderr
    assert re.search(r"Received Store Response \(Error", done.stderr), done.stderr
    code = _send_file_raw(node.port, garbage, series.datasets[0].SOPClassUID, monkeypatch)
    assert code not in (-1, 0x0000) and not 0xB000 <= code <= 0xBFFF, hex(code)

    def two_refusals() -> list[dict[str, Any]] | None:
        rows = node.audit_rows("store_refused")
        return rows if len(rows) >= 2 else None

    refused = wait_for(two_refusals, 10, "two store_refused rows")
    assert {r["detail"]["sop_instance_uid"] for r in refused} == {no_study_uid, garbage_uid}
    assert all(r["detail"]["status"] != 0 and r["detail"]["reason"] for r in refused)
    assert node.spool_sop_uids() == set()
    time.sleep(0.5)  # give a crash the chance to show
    assert node.running() and echo(node.port, NODE_AE)
    status = node.cli("status")
    assert status.returncode == 0 and "store_refused" in status.stdout, status.stdout
