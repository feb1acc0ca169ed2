"""Spool retention in a real ``rtnode serve``: its scheduler purges a delivered series.

The policy itself is unit-tested with a fake clock (``tests/test_retention.py``); here the
retention period is a few seconds so that the node's own scheduler, SQLite and spool do
it end to end after a storescu push and a storescp delivery.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.factories import make_ct_series, write_series
from tests.integration.conftest import RtNode, StoreSCP, push, requires_dcmtk, wait_for
from tests.integration.test_node_end_to_end import wait_rtstruct

pytestmark = [pytest.mark.integration, requires_dcmtk]

N_SLICES = 12
RETENTION_S = 8.0


def test_serve_purges_a_delivered_series_after_the_retention_period(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    series = make_ct_series(n_slices=N_SLICES, rows=512, cols=512, seed=3)
    write_series(series, tmp_path / "ct")
    spool = {"retention_days": RETENTION_S / 86400, "purge_interval_minutes": 0.01}
    node = make_node(tps.port, overrides={"spool": spool})

    assert push(node.port, tmp_path / "ct").returncode == 0
    wait_rtstruct(tps, series)
    assert len(node.spool_sop_uids()) == N_SLICES  # delivered, but not yet old enough

    (purged,) = wait_for(
        lambda: node.audit_rows("spool_purged"), RETENTION_S + 30, "the spool_purged audit row"
    )
    assert purged["series_uid"] == series.series_uid
    assert purged["detail"]["instances"] == N_SLICES
    assert purged["detail"]["bytes"] > N_SLICES * 512 * 512 * 2
    assert node.spool_sop_uids() == set()
    status = node.cli("status")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"purged {N_SLICES} instances in 1 series", status.stdout), status.stdout
    verify = node.cli("audit", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
