"""Lifecycle glue against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lifecycle import (
    SystemdNotifier,
    Watchdog,
    install_signal_handlers,
    watchdog_interval_s,
)

RECV_TIMEOUT_S = 5.0


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it."""
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        value = address
    else:
        value = f"@rtnode-test-{uuid.uuid4().hex}"
        address = "\0" + value[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(RECV_TIMEOUT_S)
        yield sock, value


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(_received(sock))
        except BlockingIOError:
            return messages


def test_notifier_sends_each_message(notify_socket: tuple[socket.socket, str]) -> None:
    sock, value = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": value})

    notifier.ready("listening on 11112")
    notifier.status("2 jobs queued")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()

    assert notifier.enabled
    assert _received(sock) == "READY=1\nSTATUS=listening on 11112"
    assert _received(sock) == "STATUS=2 jobs queued"
    assert _received(sock) == "WATCHDOG=1"
    reloading, monotonic = _received(sock).split("\n")
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=") and int(monotonic.split("=")[1]) > 0
    assert _received(sock) == "STOPPING=1"


def test_status_text_stays_on_one_line(notify_socket: tuple[socket.socket, str]) -> None:
    sock, value = notify_socket
    SystemdNotifier({"NOTIFY_SOCKET": value}).status("line one\nline two")
    assert _received(sock) == "STATUS=line one line two"


def test_ready_without_status_sends_only_ready(notify_socket: tuple[socket.socket, str]) -> None:
    sock, value = notify_socket
    SystemdNotifier({"NOTIFY_SOCKET": value}).ready()
    assert _received(sock) == "READY=1"


def test_without_notify_socket_everything_is_a_noop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.lifecycle")
    notifier = SystemdNotifier({})

    notifier.ready("up")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()

    assert not notifier.enabled
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    notifier.ready("up")
    assert "sd_notify READY=1" in caplog.text


def test_unsupported_notify_socket_disables_notifications(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    notifier.watchdog()
    assert not notifier.enabled
    assert "unsupported NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected_s"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval_s(env: dict[str, str], expected_s: float | None) -> None:
    assert watchdog_interval_s(env) == expected_s


def test_watchdog_from_env_is_none_without_watchdog() -> None:
    assert Watchdog.from_env(SystemdNotifier({}), lambda: True, env={}) is None
    watchdog = Watchdog.from_env(SystemdNotifier({}), lambda: True, env={"WATCHDOG_USEC": "2"})
    assert watchdog is not None and watchdog.interval_s == 1e-6


def test_tick_pings_only_while_healthy(notify_socket: tuple[socket.socket, str]) -> None:
    sock, value = notify_socket
    results = iter([True, False, True])
    watchdog = Watchdog(SystemdNotifier({"NOTIFY_SOCKET": value}), 15.0, lambda: next(results))

    assert [watchdog.tick(), watchdog.tick(), watchdog.tick()] == [True, False, True]
    assert _drain(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_health_check_that_raises_withholds_the_ping(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, value = notify_socket

    def broken() -> bool:
        raise RuntimeError("scheduler gone")

    assert Watchdog(SystemdNotifier({"NOTIFY_SOCKET": value}), 15.0, broken).tick() is False
    assert _drain(sock) == []
    assert "scheduler gone" in caplog.text


def test_watchdog_thread_stops_pinging_when_unhealthy(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, value = notify_socket
    answers = [True, True, True, False, False, False]
    checked = threading.Event()

    def is_healthy() -> bool:
        answer = answers.pop(0) if answers else False
        if not answers:
            checked.set()
        return answer

    watchdog = Watchdog(SystemdNotifier({"NOTIFY_SOCKET": value}), 0.001, is_healthy)
    watchdog.start()
    assert checked.wait(RECV_TIMEOUT_S)
    watchdog.stop()

    assert _drain(sock) == ["WATCHDOG=1"] * 3


def test_watchdog_stop_is_immediate() -> None:
    watchdog = Watchdog(SystemdNotifier({}), 3600.0, lambda: True)
    watchdog.start()
    assert watchdog.running
    watchdog.stop(timeout_s=RECV_TIMEOUT_S)
    assert not watchdog.running


def test_watchdog_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        Watchdog(SystemdNotifier({}), 0.0, lambda: True)


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signal_handlers")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_call_on_stop(signum: signal.Signals) -> None:
    stopped = threading.Event()
    reloaded = threading.Event()
    install_signal_handlers(stopped.set, reloaded.set)

    os.kill(os.getpid(), signum)

    assert stopped.wait(RECV_TIMEOUT_S)
    assert not reloaded.is_set()


@pytest.mark.usefixtures("restore_signal_handlers")
def test_sighup_calls_on_reload() -> None:
    stopped = threading.Event()
    reloaded = threading.Event()
    install_signal_handlers(stopped.set, reloaded.set)

    os.kill(os.getpid(), signal.SIGHUP)

    assert reloaded.wait(RECV_TIMEOUT_S)
    assert not stopped.is_set()


@pytest.mark.usefixtures("restore_signal_handlers")
def test_sighup_without_reload_callback_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.lifecycle")
    stopped = threading.Event()
    install_signal_handlers(stopped.set)

    os.kill(os.getpid(), signal.SIGHUP)

    assert not stopped.wait(0.1)
    assert "reload is not supported" in caplog.text


def test_signal_handlers_refuse_a_worker_thread() -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            install_signal_handlers(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    worker.join()
    assert len(errors) == 1
