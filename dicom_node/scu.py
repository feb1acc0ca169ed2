"""The Storage SCU: send result files to a destination by C-STORE."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from appliance.config import Destination
from dicom_node import status

logger = logging.getLogger(__name__)


class SendError(Exception):
    """A destination could not be reached or refused an instance."""


@dataclass(frozen=True)
class SendResult:
    sent: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def send_files(
    calling_ae: str, dest: Destination, files: list[Path], *, timeout_s: float = 30.0
) -> SendResult:
    """C-STORE every file on one association. Raises :class:`SendError` if it cannot associate."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise SendError(f"could not associate with {dest.ae_title}@{dest.host}:{dest.port}")
    try:
        failures = [f for f in (_store_one(assoc, ds) for ds in datasets) if f]
    finally:
        if assoc.is_established:
            assoc.release()
    return SendResult(sent=len(datasets) - len(failures), failures=failures)


def _store_one(assoc: object, ds: pydicom.Dataset) -> str:
    rsp = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    code = getattr(rsp, "Status", None)
    if code is None:
        return f"{ds.SOPInstanceUID}: no response (timeout or abort)"
    if code != status.SUCCESS and not 0xB000 <= int(code) <= 0xBFFF:
        return f"{ds.SOPInstanceUID}: status 0x{int(code):04X}"
    return ""
