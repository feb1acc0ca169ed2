"""The fast receive path must behave exactly like pynetdicom's own."""

from __future__ import annotations

import socket
import threading

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_node.transport import FastAssociationSocket, encode_c_store_rsp


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "9" * 38])
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC000, 0xB000])
def test_c_store_rsp_bytes_equal_pynetdicom(uid: str, status: int) -> None:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rsp.AffectedSOPInstanceUID = uid
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_c_store_rsp(rsp) == encode(message.command_set, True, True)


def test_responses_with_error_details_use_pynetdicom() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.3"
    rsp.AffectedSOPInstanceUID = "1.2.3.4"
    rsp.Status = 0xC000
    rsp.ErrorComment = "unreadable"
    assert encode_c_store_rsp(rsp) is None


def test_fast_socket_reads_exact_lengths_and_stops_at_close() -> None:
    a, b = socket.socketpair()
    wrapper = FastAssociationSocket.__new__(FastAssociationSocket)
    wrapper.socket = a
    payload = bytes(range(256)) * 5000

    def peer() -> None:
        b.sendall(payload[:700_000])  # more than the socket buffer: arrives in pieces
        b.sendall(b"tail")
        b.close()

    sender = threading.Thread(target=peer)
    sender.start()
    assert wrapper.recv(6) == bytearray(payload[:6])
    assert wrapper.recv(699_994) == bytearray(payload[6:700_000])
    assert wrapper.recv(100) == bytearray(b"tail")
    sender.join(5)
    a.close()


@pytest.mark.parametrize(
    "value",
    [
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.826.0.1.3680043.8.498." + "1" * 38,  # 64 characters
        "1.2.826.0.1.3680043.8.498." + "1" * 39,  # 65: too long
        "1.2.03.4",  # leading zero
        "1..2",
        "1.2.a",
        "",
        "0",
    ],
)
@pytest.mark.filterwarnings("ignore:.*VR UI")  # pydicom warns when an invalid UID is made
def test_memoised_uid_validation_answers_as_pydicom(value: str) -> None:
    from pydicom.uid import UID

    from dicom_node.transport import memoise_uid_validation

    original = UID.is_valid
    expected = original.fget(UID(value))  # type: ignore[attr-defined]
    memoise_uid_validation()
    try:
        assert UID(value).is_valid is expected
        assert UID(value).is_valid is expected  # cached
    finally:
        UID.is_valid = original  # type: ignore[method-assign]
