"""The SCP in process: durable store, index, statuses, completion timers (FakeClock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from appliance.audit import AuditFilter
from appliance.clock import FakeClock
from appliance.service import Node
from dicom_node import status
from dicom_node.intake import Received
from tests.factories import make_ct_series, make_rtstruct, make_text_sr
from tests.support import make_node, wait_until_closed, write_config
from tests.support import send as _send


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(tmp_path: Path, clock: FakeClock) -> Iterator[Node]:
    n = _make(write_config(tmp_path), clock)
    n.start(background=False)
    yield n
    n.stop()


_NODES: list[Node] = []


def send(port: int, datasets: list, calling_ae: str = "TPS") -> list[int]:
    """Send, then wait until the receiving node has closed the association's batch."""
    statuses = _send(port, datasets, calling_ae)
    for n in _NODES:
        wait_until_closed(n)
    return statuses


def _make(cfg: Path, clock: FakeClock) -> Node:
    n = make_node(cfg, clock)
    _NODES.append(n)
    return n


def _events(node: Node, name: str) -> list:
    return node.audit.query(AuditFilter(event=name))


def _port(node: Node) -> int:
    return node.cfg.node.port


def test_instances_are_stored_indexed_and_audited(node: Node) -> None:
    ct = make_ct_series(n_slices=3, rows=32, cols=32)
    assert send(_port(node), ct.datasets) == [status.SUCCESS] * 3
    files = node.spool.iter_files()
    assert len(files) == 3
    assert all(f.parent.name == ct.series_uid for f in files)
    assert list(node.spool.tmp_dir.iterdir()) == []
    (batch,) = _events(node, "instances_received")
    assert '"count": 3' in batch.detail and batch.patient_id == ct.patient_id


def test_completion_after_quiet_window_then_routing(node: Node, clock: FakeClock) -> None:
    ct = make_ct_series(n_slices=2, rows=32, cols=32)
    send(_port(node), ct.datasets)
    clock.advance(1.0)
    assert node.tick_completion() == 0
    clock.advance(1.5)
    assert node.tick_completion() == 1
    assert node.store.jobs_by_state() == {"pending": 1}
    assert [r.event for r in node.audit.query(AuditFilter(study_uid=ct.study_uid))][-2:] == [
        "series_completed",
        "rule_matched",
    ]


def test_late_instance_reopens_the_series(node: Node, clock: FakeClock) -> None:
    ct = make_ct_series(n_slices=3, rows=32, cols=32)
    send(_port(node), ct.datasets[:2])
    clock.advance(3)
    node.tick_completion()
    send(_port(node), ct.datasets[2:])
    clock.advance(3)
    assert node.tick_completion() == 1
    assert node.store.jobs_by_state() == {"pending": 2}
    completed = _events(node, "series_completed")
    assert ['"generation": 1' in completed[0].detail, '"generation": 2' in completed[1].detail] == [
        True,
        True,
    ]


def test_duplicate_instance_is_idempotent_and_audited(node: Node, clock: FakeClock) -> None:
    ct = make_ct_series(n_slices=2, rows=32, cols=32)
    send(_port(node), ct.datasets)
    clock.advance(3)
    node.tick_completion()
    assert send(_port(node), ct.datasets) == [status.SUCCESS] * 2
    clock.advance(3)
    assert node.tick_completion() == 0  # duplicates do not re-open the series
    assert len(node.spool.iter_files()) == 2
    assert '"duplicates": 2' in _events(node, "instances_received")[-1].detail


def test_missing_uid_is_refused_with_a_named_status(node: Node) -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    del ds.StudyInstanceUID
    assert send(_port(node), [ds]) == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    (row,) = _events(node, "store_refused")
    assert "StudyInstanceUID" in row.detail
    assert node.spool.iter_files() == []


def test_unreadable_dataset_is_refused(node: Node, tmp_path: Path) -> None:
    garbage = node.spool.tmp_dir / "garbage.dcm"
    garbage.write_bytes(b"this is not a DICOM file\n" * 20)
    rx = Received(
        garbage,
        "1.2.840.10008.5.1.4.1.1.2",
        generate_uid(),
        "1.2.840.10008.1.2.1",
        "TPS",
        "RTNODE",
        1,
    )
    assert node.intake.store(rx) == status.CANNOT_UNDERSTAND
    assert not garbage.exists()
    assert len(_events(node, "store_refused")) == 1


def test_other_storage_classes_are_accepted(node: Node) -> None:
    ct = make_ct_series(n_slices=2, rows=32, cols=32)
    others = [make_rtstruct(ct), make_text_sr("cT2 N1 M0 left breast", ct.patient_id, ct.study_uid)]
    assert send(_port(node), others) == [status.SUCCESS, status.SUCCESS]


def test_unknown_caller_is_rejected_and_audited(node: Node) -> None:
    ct = make_ct_series(n_slices=1, rows=16, cols=16)
    with pytest.raises(ConnectionRefusedError):
        send(_port(node), ct.datasets, calling_ae="INTRUDER")
    (row,) = _events(node, "association_rejected")
    assert "INTRUDER" in row.detail
    assert node.spool.iter_files() == []


def test_disk_watermark_refuses_with_out_of_resources(tmp_path: Path, clock: FakeClock) -> None:
    n = _make(write_config(tmp_path, storage={"min_free_disk_mb": 10**9}), clock)
    n.start(background=False)
    try:
        ct = make_ct_series(n_slices=2, rows=16, cols=16)
        assert send(n.cfg.node.port, ct.datasets) == [status.OUT_OF_RESOURCES] * 2
        assert n.spool.iter_files() == [] and list(n.spool.tmp_dir.iterdir()) == []
    finally:
        n.stop()


def test_timers_and_open_series_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    cfg = write_config(tmp_path)
    first = _make(cfg, clock)
    first.start(background=False)
    ct = make_ct_series(n_slices=2, rows=32, cols=32)
    send(first.cfg.node.port, ct.datasets)  # released: timer armed in the database
    first.stop()

    second = _make(cfg, clock)
    second.start(listen=False, background=False)
    try:
        clock.advance(3)
        assert second.tick_completion() == 1
        assert second.store.jobs_by_state() == {"pending": 1}
    finally:
        second.stop()


def test_series_interrupted_mid_association_is_rearmed(tmp_path: Path, clock: FakeClock) -> None:
    from appliance.store import InstanceRecord

    cfg = write_config(tmp_path)
    first = _make(cfg, clock)
    first.store.add_instance(
        InstanceRecord(
            "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3.4", "P", "", "/x", 1, "TPS"
        ),
        clock.now(),
    )  # as if the node died before the association ended: no timer
    first.stop()
    second = _make(cfg, clock)
    second.start(listen=False, background=False)
    try:
        assert second.tick_completion() == 0
        clock.advance(3)
        assert second.tick_completion() == 1
        assert '"recovered_series": 1' in _events(second, "node_started")[-1].detail
    finally:
        second.stop()


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"]
)
def test_transfer_syntaxes_are_stored_as_received(node: Node, syntax: str) -> None:
    from pynetdicom import AE

    from engines.volume import CTVolume

    ct = make_ct_series(n_slices=2, rows=32, cols=32)
    ae = AE("TPS")
    ae.add_requested_context(ct.datasets[0].SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", _port(node), ae_title="RTNODE")
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in ct.datasets]
    assoc.release()
    assert statuses == [status.SUCCESS] * 2
    files = node.spool.iter_files()
    import pydicom

    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} == {syntax}
    volume = CTVolume.from_files(files)
    assert volume.shape == (2, 32, 32)


@pytest.fixture(autouse=True)
def _forget_nodes() -> Iterator[None]:
    yield
    _NODES.clear()


def test_unexpected_error_answers_a_failure_and_is_audited(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(node.store, "add_instance", broken)
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    assert send(_port(node), [ds]) == [status.PROCESSING_FAILURE]
    (row,) = _events(node, "store_refused")
    assert "RuntimeError" in row.detail
    assert node.spool.iter_files() == []  # not acknowledged, so not kept
    assert send(_port(node), [make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]]) == [
        status.PROCESSING_FAILURE
    ]  # the node keeps answering


def test_index_insert_reports_duplicates_and_recovers_from_a_broken_connection(
    tmp_path: Path, clock: FakeClock
) -> None:
    from appliance.db import create_engine, migrate
    from appliance.store import DuplicateInstance, InstanceRecord, Store, StoreError

    engine = create_engine(tmp_path / "db.sqlite3")
    migrate(engine)
    store = Store(engine)

    def record(uid: str) -> InstanceRecord:
        return InstanceRecord(
            uid, "1.2.840.10008.5.1.4.1.1.2", "1.2", "1.2.3", "P", "", "/x", 1, "TPS"
        )

    try:
        store.add_instance(record("1.2.3.1"), clock.now())
        with pytest.raises(DuplicateInstance):
            store.add_instance(record("1.2.3.1"), clock.now())
        store._intake_connection().close()  # e.g. the database went away underneath
        with pytest.raises(StoreError):
            store.add_instance(record("1.2.3.2"), clock.now())
        store.add_instance(record("1.2.3.2"), clock.now())  # a fresh connection
        assert store.has_instance("1.2.3.1") and store.has_instance("1.2.3.2")
    finally:
        store.close()
        engine.dispose()
