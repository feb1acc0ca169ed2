"""The Storage SCP: AE construction and the event handlers bound to it.

Handlers only translate pynetdicom events for :class:`~dicom_node.intake.Intake` and the
caller allow-list; their dependencies arrive as extra handler arguments.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from appliance.config import AllowedCaller, NodeSettings
from appliance.events import AssociationRejected, EventBus
from dicom_node import status
from dicom_node.intake import Intake, Received
from dicom_node.transport import make_server

logger = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
}
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_NATIVE_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
_COMPRESSED_SYNTAXES = [
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000,
]


def accepted_transfer_syntaxes() -> list[str]:
    """Native syntaxes, plus compressed ones pydicom can decode in this environment."""
    usable = [str(ts) for ts in _COMPRESSED_SYNTAXES if _decodable(str(ts))]
    return [str(ts) for ts in _NATIVE_SYNTAXES] + usable


def _decodable(uid: str) -> bool:
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


@dataclass(frozen=True)
class CallerGate:
    """The calling-AE allow-list, optionally bound to a peer address."""

    allowed: tuple[AllowedCaller, ...]
    accept_any: bool = False

    def refusal(self, calling_ae: str, peer_host: str) -> str | None:
        """None if the caller may associate, else the reason it may not."""
        if self.accept_any:
            return None
        entries = [a for a in self.allowed if a.ae_title == calling_ae.strip()]
        if not entries:
            return f"calling AE {calling_ae.strip()!r} is not on the allow-list"
        if any(a.host in (None, "", peer_host) for a in entries):
            return None
        return f"calling AE {calling_ae.strip()!r} is not allowed from {peer_host}"


def handle_requested(event: evt.Event, gate: CallerGate, bus: EventBus) -> None:
    """EVT_REQUESTED: reject callers that are not on the allow-list."""
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
    host = str(assoc.requestor.address)
    reason = gate.refusal(calling, host)
    if reason is None:
        return
    # record first, then answer: the audit row exists before the caller sees the rejection
    logger.warning("association from %s@%s rejected: %s", calling, host, reason)
    bus.publish(AssociationRejected(calling_ae=calling, peer_host=host, reason=reason))
    assoc.acse.send_reject(
        status.REJECTED_PERMANENT, status.SOURCE_SERVICE_USER, status.DIAG_CALLING_AE_NOT_RECOGNIZED
    )
    # send_reject only queues the A-ASSOCIATE-RJ; kill() waits until the DUL has sent it
    # before the socket closes (as pynetdicom's own reject path does).
    assoc.kill()


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: always success."""
    return status.SUCCESS


def handle_store(event: evt.Event, intake: Intake) -> int:
    """EVT_C_STORE: store, record, return the status."""
    req = cast(C_STORE, event.request)
    context = event.context
    rx = Received(
        path=event.dataset_path,
        sop_class_uid=str(req.AffectedSOPClassUID),
        sop_instance_uid=str(req.AffectedSOPInstanceUID),
        transfer_syntax=str(context.transfer_syntax),
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        called_ae=_called_ae(event),
        assoc_key=id(event.assoc),
    )
    return intake.store(rx)


def handle_closed(event: evt.Event, intake: Intake) -> None:
    """EVT_RELEASED / EVT_ABORTED: close the association's batch."""
    intake.association_closed(id(event.assoc))


def handle_conn_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN: disable Nagle so small C-STORE responses are not delayed."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _called_ae(event: evt.Event) -> str:
    primitive = event.assoc.requestor.primitive
    called = getattr(primitive, "called_ae_title", "") if primitive is not None else ""
    return str(called).strip()


def build_ae(node: NodeSettings) -> AE:
    """The node's AE with its storage and verification contexts."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.network_timeout = node.network_timeout_s
    ae.acse_timeout = node.network_timeout_s
    ae.dimse_timeout = node.network_timeout_s
    syntaxes = accepted_transfer_syntaxes()
    for uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context(
        VERIFICATION_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    return ae


def handlers(intake: Intake, gate: CallerGate, bus: EventBus) -> list[Any]:
    """The event-handler list bound when the server starts."""
    bound: list[tuple[Any, Callable[..., Any]] | tuple[Any, Callable[..., Any], list[Any]]] = [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_REQUESTED, handle_requested, [gate, bus]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [intake]),
        (evt.EVT_RELEASED, handle_closed, [intake]),
        (evt.EVT_ABORTED, handle_closed, [intake]),
    ]
    return bound


def start_server(
    node: NodeSettings, intake: Intake, gate: CallerGate, bus: EventBus
) -> ThreadedAssociationServer:
    """Start listening (non-blocking); returns the server to shut down later."""
    ae = build_ae(node)
    server = make_server(ae, (node.host, node.port), handlers(intake, gate, bus))
    thread = threading.Thread(target=server.serve_forever, name="dicom-server", daemon=True)
    thread.start()
    logger.info("listening as %s on %s:%d", node.ae_title, node.host, node.port)
    return server
