"""A faster receive path for pynetdicom's acceptor associations.

Each piece replaces one pynetdicom 3.0 internal with the same behaviour and less work per
instance; the server below (:func:`make_server`) installs them on every accepted
association, and ``tests/test_transport.py`` compares each with pynetdicom's own:

- :class:`FastAssociationSocket`: PDUs read with ``recv_into`` into one buffer (pynetdicom
  reads 4 KiB at a time into a growing ``bytearray``: ~130 calls per 0.5 MB CT slice);
- :class:`FastDUL`: the DUL thread waits on its socket and a wake-up pipe instead of
  sleeping and polling;
- :class:`FastAssociation`: the association reactor blocks on the DIMSE queue;
- :class:`FastDIMSE`: C-STORE fragments go straight to an unbuffered spool file with
  hand-encoded file meta (:func:`decode_fragments`), and plain C-STORE responses are
  hand-encoded (:func:`encode_c_store_rsp`);
- :func:`memoise_uid_validation`: pydicom's UID check cached.

Measured effect: ``docs/benchmarks.md`` ("Ingest").
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import queue
import re
import secrets
import select
import socket
import struct
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.uid import RE_VALID_UID, UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT, DimsePrimitiveType
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

logger = logging.getLogger(__name__)

_MAX_CHUNK = 1 << 20
# pynetdicom's DUL thread sleeps this long whenever it has nothing to do (default 1 ms);
# each C-STORE waits on it once, so a shorter delay is a direct per-instance saving.
_DUL_IDLE_DELAY_S = 0.0002
_REACTOR_POLL_S = 0.005
# The longest the event-driven DUL loop waits without a wake-up: its timers (ARTIM) and
# events other threads queue directly are noticed within this.
_DUL_MAX_WAIT_S = 0.01


class FastAssociationSocket(AssociationSocket):
    """``recv`` with ``recv_into`` and large chunks; same contract as pynetdicom's."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(buffer) as view:
            while nr_read < nr_bytes:
                got = sock.recv_into(view[nr_read:], min(nr_bytes - nr_read, _MAX_CHUNK))
                if not got:
                    break  # connection closed: return what we have
                nr_read += got
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer


class FastAssociation(Association):
    """An acceptor whose reactor blocks on the DIMSE queue instead of sleeping 1 ms.

    pynetdicom's ``Association._run_reactor`` sleeps 1 ms per loop and then polls the
    DIMSE message queue, so each C-STORE waits up to a millisecond before it is served.
    This loop waits on the queue itself (waking as soon as a message is complete) and
    otherwise performs the same checks in the same order.
    """

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_REACTOR_POLL_S)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._reactor_checks_done():
                return

    def _reactor_checks_done(self) -> bool:
        """pynetdicom's release / abort / DUL-alive / timeout checks; True when finished."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released, self.is_established = True, False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted, self.is_established = True, False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            logger.error("network timeout reached; aborting the association")
            self.abort()
            self.kill()
            return True
        return False


def encode_c_store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP in implicit VR little endian, or None.

    Only the elements a storage SCP's response carries without error details are
    handled (group length, affected SOP class, command field, message ID being
    responded to, data set type, status, affected SOP instance); anything else (an
    ErrorComment, OffendingElement...) returns None and goes through pynetdicom.
    """
    if any(getattr(rsp, name, None) for name in _RSP_EXTRAS):
        return None
    body = b"".join(
        (
            _ui(0x0002, str(rsp.AffectedSOPClassUID)),
            _us(0x0100, 0x8001),
            _us(0x0120, int(cast(int, rsp.MessageIDBeingRespondedTo))),
            _us(0x0800, 0x0101),
            _us(0x0900, int(cast(int, rsp.Status))),
            _ui(0x1000, str(rsp.AffectedSOPInstanceUID)),
        )
    )
    return struct.pack("<HHIL", 0x0000, 0x0000, 4, len(body)) + body


_RSP_EXTRAS = ("ErrorComment", "OffendingElement", "ErrorID")


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group of a received instance.

    The same bytes as pynetdicom's ``write_file_meta_info(create_file_meta(...))`` (its
    implementation class UID and version name), without building a pydicom dataset:
    about 0.4 ms per instance less.
    """
    elements = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _padded_uid(sop_class_uid)),
            _meta_element(0x0003, b"UI", _padded_uid(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _padded_uid(transfer_syntax)),
            _meta_element(0x0012, b"UI", _padded_uid(PYNETDICOM_IMPLEMENTATION_UID)),
            _meta_element(0x0013, b"SH", _padded_text(PYNETDICOM_IMPLEMENTATION_VERSION)),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"\x00" * 128 + b"DICM" + group_length + elements


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded_uid(uid: str) -> bytes:
    value = str(uid).encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def _padded_text(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) % 2 else value


def _new_dataset_file() -> io.FileIO:
    """An unbuffered new file in ``tempfile``'s directory (the node points it at the
    spool's ``.incoming`` folder): written straight through, one ``write`` per fragment."""
    folder = tempfile.gettempdir()
    while True:
        path = os.path.join(folder, f"rx{secrets.token_hex(8)}.dcm")
        try:
            return io.FileIO(path, "xb")
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue


def _write_all(file: io.FileIO, data: memoryview) -> None:
    while data:
        written = file.write(data)
        data = data[written or 0 :]


def decode_fragments(message: DIMSEMessage, primitive: P_DATA, assoc: Association) -> bool:
    """pynetdicom's ``DIMSEMessage.decode_msg`` (3.0), with a faster chunked C-STORE path.

    Same states, attributes and results: the command set is decoded by pynetdicom, the
    message becomes its DIMSE class, and with ``STORE_RECV_CHUNKED_DATASET`` a C-STORE
    data set goes to a file that starts with the File Meta Information. Differences:
    the file meta is hand-encoded (:func:`encode_file_meta`) and the file is an
    unbuffered ``FileIO`` written from views of the fragments (no per-fragment copy,
    wrapper or flush). Returns True when the message is complete.
    """
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:  # command set fragment
            message.encoded_command_set.write(data[1:])
            if control & 2:  # the last one: decode the command set
                message.context_id = context_id
                command = decode(message.encoded_command_set, True, True)
                message.command_set = command
                message.__class__ = _MESSAGE_TYPES[cast(int, command.CommandField)][1]
                if command.CommandDataSetType == 0x0101:
                    return True  # no data set
                if pynetdicom_config.STORE_RECV_CHUNKED_DATASET and isinstance(message, C_STORE_RQ):
                    syntax = assoc._accepted_cx[context_id].transfer_syntax[0]
                    file = _new_dataset_file()
                    message._data_set_file = cast(Any, file)
                    message._data_set_path = Path(cast(str, file.name))
                    _write_all(
                        file,
                        memoryview(
                            encode_file_meta(
                                str(command.AffectedSOPClassUID),
                                str(command.AffectedSOPInstanceUID),
                                str(syntax),
                            )
                        ),
                    )
        else:  # data set fragment
            target = cast(io.FileIO | None, message._data_set_file)
            if target is not None:
                _write_all(target, memoryview(data)[1:])
            else:
                cast(BytesIO, message.data_set).write(data[1:])
            if control & 2:
                return True
    return False


class FastDIMSE(DIMSEServiceProvider):
    """Sends C-STORE responses from a hand-encoded command set (see above) and decodes
    received fragments with :func:`decode_fragments`.

    pynetdicom encodes every response through pydicom's generic writer (~1 ms of CPU
    per instance here); the bytes produced are identical.
    """

    def receive_primitive(self, primitive: P_DATA) -> None:
        """pynetdicom 3.0's ``receive_primitive``, decoding with :func:`decode_fragments`."""
        if self.message is None:
            self.message = DIMSEMessage()
        if not decode_fragments(self.message, primitive, self.assoc):
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})
        context_id = cast(int, self.message.context_id)
        try:
            d_primitive = self.message.message_to_primitive()
        except Exception as exc:
            logger.error("Received an invalid DIMSE message")
            logger.exception(exc)
            self.dul.event_queue.put("Evt19")
            return
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            # served at once, as pynetdicom does (it would block the DUL otherwise)
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        else:
            self.msg_queue.put((context_id, cast(Any, d_primitive)))
        message = self.message  # reset, as pynetdicom does (its issue #41)
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        self.message = None

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            encoded = encode_c_store_rsp(primitive)
        max_pdu = self.maximum_pdu_size
        if encoded is None or (max_pdu and len(encoded) + 6 > max_pdu):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)


class FastDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waking on events instead of polling every 0.2-1 ms.

    pynetdicom's loop sleeps ``_run_loop_delay`` whenever it has nothing to do and then
    polls the socket and its queues, so every incoming PDU and every outgoing C-STORE
    response waits for the next pass, and the idle thread wakes thousands of times a
    second (taking the GIL from the thread that stores the instance). Here the idle
    wait is a ``select`` on the peer's socket and a wake-up pipe that ``send_pdu`` and
    ``kill_dul`` write to, bounded by ``_DUL_MAX_WAIT_S`` so that timers and directly
    queued events are still seen. The loop body is pynetdicom 3.0's, unchanged.
    """

    _wake_r: int = -1
    _wake_w: int = -1
    _wake_lock: threading.Lock

    def enable_wakeups(self) -> None:
        """Create the wake-up pipe and point the thread at this class's reactor (before
        the thread starts; pynetdicom binds the thread's target in ``__init__``)."""
        self._target = make_target(self.run_reactor)
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _wake(self) -> None:
        # under the lock: a closed descriptor's number may already belong to another file
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    os.write(self._wake_w, b"\x01")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wait_for_work(self) -> None:
        """Until the socket is readable, a wake-up arrives or ``_DUL_MAX_WAIT_S`` passes."""
        sock = getattr(self.socket, "socket", None)
        if self._wake_r < 0 or sock is None or getattr(sock, "pending", lambda: 0)():
            time.sleep(self._run_loop_delay)  # no pipe, no socket, or TLS data buffered
            return
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], _DUL_MAX_WAIT_S)
        except (OSError, ValueError):  # the socket was closed meanwhile
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):  # drained
                while os.read(self._wake_r, 4096):
                    pass

    def _close_wakeups(self) -> None:
        if self._wake_r < 0:
            return
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with :meth:`_wait_for_work`
        as its idle wait."""
        try:
            self._run_reactor_loop()
        finally:
            self._close_wakeups()

    def _run_reactor_loop(self) -> None:
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("Exception in DUL.run(), aborting association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                cast(AssociationSocket, self.socket).send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False


class FastRequestHandler(RequestHandler):
    """pynetdicom's request handler, with the fast socket and TCP_NODELAY."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        client = self.request
        if isinstance(client, socket.socket):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc.dul._run_loop_delay = _DUL_IDLE_DELAY_S
        if type(assoc.dul) is DULServiceProvider:
            assoc.dul.__class__ = FastDUL
            cast(FastDUL, assoc.dul).enable_wakeups()
        if type(assoc) is Association:
            assoc.__class__ = FastAssociation
        if type(assoc.dimse) is DIMSEServiceProvider:
            assoc.dimse.__class__ = FastDIMSE
        wrapper = assoc.dul.socket
        if type(wrapper) is AssociationSocket:
            # FastAssociationSocket adds no state, only a faster recv(): re-class the
            # wrapper pynetdicom built rather than building a second one.
            wrapper.__class__ = FastAssociationSocket
        return assoc


@functools.lru_cache(maxsize=8192)
def _valid_uid(value: str) -> bool:
    """pydicom's ``UID.is_valid`` test (at most 64 characters, matching RE_VALID_UID)."""
    return len(value) <= 64 and re.match(RE_VALID_UID, value) is not None


def _memoised_is_valid(self: UID) -> bool:
    return _valid_uid(str(self))


def memoise_uid_validation() -> None:
    """Make ``pydicom.uid.UID.is_valid`` a memoised lookup.

    pynetdicom reads ``is_valid`` for every transfer syntax of every presentation context
    an association proposes (DCMTK storescu proposes over a hundred), and pydicom answers
    each time with a long regular expression: about 0.1 s per association on this
    machine. The answer depends only on the string, so it is cached (same result).
    """
    UID.is_valid = property(_memoised_is_valid)  # type: ignore[method-assign,assignment]


def make_server(
    ae: Any, address: tuple[str, int], evt_handlers: list[Any]
) -> ThreadedAssociationServer:
    """A threaded association server (not yet serving) using :class:`FastRequestHandler`."""
    memoise_uid_validation()
    server: ThreadedAssociationServer = ae.make_server(
        address,
        evt_handlers=evt_handlers,
        server_class=ThreadedAssociationServer,
        request_handler=FastRequestHandler,
    )
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
    return server
