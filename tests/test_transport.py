"""The fast receive path must behave exactly like pynetdicom's own."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

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


def _store_fragments(dataset_bytes: bytes, max_pdu: int) -> list[Any]:
    """The P-DATA primitives pynetdicom's SCU would send for one C-STORE-RQ."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ

    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345"
    req.Priority = 0
    req.DataSet = BytesIO(dataset_bytes)
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return list(message.encode_msg(1, max_pdu))


class _Context:
    transfer_syntax = ["1.2.840.10008.1.2.1"]


class _Assoc:
    _accepted_cx = {1: _Context()}


@pytest.mark.parametrize("max_pdu", [0, 16384, 1000])
def test_decode_fragments_writes_the_same_file_as_pynetdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pdu: int
) -> None:
    import tempfile

    from pynetdicom import _config
    from pynetdicom.dimse_messages import DIMSEMessage

    from dicom_node.transport import decode_fragments

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dataset = bytes(range(256)) * 300 + b"end"
    results = []
    for decoder in (DIMSEMessage.decode_msg, decode_fragments):
        message = DIMSEMessage()
        done = [decoder(message, p, _Assoc()) for p in _store_fragments(dataset, max_pdu)]
        assert done[-1] and not any(done[:-1])
        primitive = message.message_to_primitive()
        message._data_set_file.close()  # type: ignore[union-attr]
        results.append((type(message).__name__, primitive, Path(primitive._dataset_path)))
    (name_a, a, path_a), (name_b, b, path_b) = results
    assert name_a == name_b == "C_STORE_RQ"
    assert path_a != path_b and path_b.parent == tmp_path
    assert path_b.read_bytes() == path_a.read_bytes()
    assert path_b.read_bytes().endswith(dataset)
    for keyword in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority"):
        assert getattr(a, keyword) == getattr(b, keyword)


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.45", "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_meta_bytes_equal_pynetdicom(sop_class: str, sop_instance: str, syntax: str) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from dicom_node.transport import encode_file_meta

    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(syntax),
    )
    write_file_meta_info(fp, meta)
    assert encode_file_meta(sop_class, sop_instance, syntax) == fp.getvalue()


def test_acceptor_dul_is_event_driven_and_closes_its_wakeup_pipe() -> None:
    from pynetdicom import AE, evt

    from dicom_node.transport import FastDUL, make_server

    seen: list[Any] = []

    def on_echo(event: Any) -> int:
        seen.append(event.assoc.dul)
        return 0x0000

    scp = AE(ae_title="NODE")
    scp.add_supported_context("1.2.840.10008.1.1")
    server = make_server(scp, ("127.0.0.1", 0), [(evt.EVT_C_ECHO, on_echo)])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context("1.2.840.10008.1.1")
        for _ in range(3):
            assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="NODE")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            assert assoc.is_released
        for dul in seen:
            dul.join(5)
            assert isinstance(dul, FastDUL)
            assert not dul.is_alive()
            assert dul._wake_r == dul._wake_w == -1  # pipe closed when the loop ended
            dul._wake()  # a late wake-up after the end is harmless
    finally:
        server.shutdown()
        server.server_close()
