"""Results reach destinations by C-STORE: backoff, dead letter, resend (real loopback SCP)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pynetdicom import AE, evt

from appliance.audit import AuditFilter
from appliance.clock import FakeClock
from appliance.service import Node
from appliance.store import backoff_delay
from tests.factories import make_ct_series, write_dataset
from tests.support import make_node, write_config


class FakeTPS:
    """A pynetdicom storage SCP that remembers what it received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[str] = []
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def start(self) -> None:
        ae = AE("TPS")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2")
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    cfg = write_config(
        tmp_path, delivery={"max_attempts": 3, "backoff_initial_s": 2, "backoff_max_s": 3}
    )
    n = make_node(cfg, FakeClock())
    n.start(listen=False, background=False)
    yield n
    n.stop()


@pytest.fixture
def tps(node: Node) -> Iterator[FakeTPS]:
    t = FakeTPS(node.cfg.destinations["tps"].port)
    yield t
    t.stop()


def _done_job(node: Node, tmp_path: Path) -> tuple[int, str]:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    out = write_dataset(ds, tmp_path / "result.dcm")
    attrs = {"SeriesInstanceUID": "1.2.3.4", "StudyInstanceUID": "1.2.3", "PatientID": "P9"}
    job_id = node.store.create_job(attrs, "r", ["copy_inputs"], ["tps"], 2, node.clock.now())
    node.store.claim_job(node.clock.now())
    node.store.finish_job(job_id, [str(out)], [], node.clock.now(), node.clock.now())
    return job_id, str(ds.SOPInstanceUID)


def test_delivered_when_destination_is_up(node: Node, tps: FakeTPS, tmp_path: Path) -> None:
    tps.start()
    _, uid = _done_job(node, tmp_path)
    assert node.delivery.tick() == 1
    assert tps.received == [uid]
    assert node.store.delivery_summary() == {"tps": {"sent": 1}}


def test_destination_down_then_up_needs_no_manual_action(
    node: Node, tps: FakeTPS, tmp_path: Path
) -> None:
    clock: FakeClock = node.clock  # type: ignore[assignment]
    _, uid = _done_job(node, tmp_path)
    assert node.delivery.tick() == 1  # refused: TPS down
    assert node.delivery.tick() == 0  # backing off
    clock.advance(2)
    tps.start()
    assert node.delivery.tick() == 1
    assert tps.received == [uid]
    sends = node.audit.query(AuditFilter(event="send_attempted"))
    assert ['"ok": false' in sends[0].detail, '"ok": true' in sends[1].detail] == [True, True]


def test_dead_letter_then_resend(node: Node, tps: FakeTPS, tmp_path: Path) -> None:
    clock: FakeClock = node.clock  # type: ignore[assignment]
    job_id, uid = _done_job(node, tmp_path)
    for _ in range(3):
        node.delivery.tick()
        clock.advance(5)
    assert node.store.delivery_summary() == {"tps": {"dead": 1}}
    assert len(node.audit.query(AuditFilter(event="delivery_dead_lettered"))) == 1
    assert node.delivery.tick() == 0  # dead letters are not retried on their own
    tps.start()
    assert node.store.requeue(job_id, clock.now()) == (1, False)
    assert node.delivery.tick() == 1
    assert tps.received == [uid]


def test_backoff_is_exponential_and_capped() -> None:
    delays = [backoff_delay(n, 2, 30) for n in range(1, 7)]
    assert delays == [timedelta(seconds=s) for s in (2, 4, 8, 16, 30, 30)]
