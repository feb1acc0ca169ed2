"""Service lifecycle under systemd: readiness and watchdog notifications, stop signals.

No third-party dependency. The notify protocol (sd_notify(3)) is one datagram of
newline-separated ``KEY=value`` fields sent to the AF_UNIX socket named by
``NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract namespace.
Outside systemd (a developer shell, the tests) every notification is a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]
"""Returns True while the service is healthy enough to keep the watchdog fed."""


class SystemdNotifier:
    """Sends sd_notify messages to the socket named by ``NOTIFY_SOCKET``.

    Every method is a no-op when ``NOTIFY_SOCKET`` is absent. A failed send is
    logged as a warning and never raised: notification must not stop the service.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._display = environ.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(self._display)
        if self._address is None:
            logger.debug("NOTIFY_SOCKET not set; systemd notifications disabled")

    @property
    def enabled(self) -> bool:
        """True when notifications are actually sent."""
        return self._address is not None

    def ready(self, status: str = "") -> None:
        """Tell systemd that start-up is complete, with an optional status line."""
        self._send("READY=1", *_status_field(status))

    def status(self, text: str) -> None:
        """Set the free-form status shown by ``systemctl status rtnode``."""
        self._send(*_status_field(text))

    def watchdog(self) -> None:
        """Feed the systemd watchdog (``WatchdogSec=``)."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd that an orderly shutdown has begun."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd that a configuration reload has begun.

        Send :meth:`ready` again once the reload is complete.
        """
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def _send(self, *fields: str) -> None:
        if self._address is None or not fields:
            return
        payload = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            logger.warning("sd_notify %s to %s failed: %s", fields[0], self._display, exc)


def _socket_address(value: str) -> str | None:
    """Map a NOTIFY_SOCKET value to a socket address, or None when unusable."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        logger.warning("unsupported NOTIFY_SOCKET %r; systemd notifications disabled", value)
    return None


def _status_field(text: str) -> tuple[str, ...]:
    """One ``STATUS=`` field (newlines would end the field early), or none."""
    return (f"STATUS={' '.join(text.splitlines())}",) if text else ()


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``WATCHDOG_USEC``.

    Returns None when no watchdog is configured, when ``WATCHDOG_USEC`` is not a
    positive integer, or when ``WATCHDOG_PID`` is set and names another process.
    """
    environ = os.environ if env is None else env
    usec = _watchdog_usec(environ.get("WATCHDOG_USEC"))
    if usec is None or not _watchdog_is_ours(environ.get("WATCHDOG_PID")):
        return None
    return usec / 2_000_000


def _watchdog_usec(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    logger.warning("ignoring invalid WATCHDOG_USEC=%r", value)
    return None


def _watchdog_is_ours(pid: str | None) -> bool:
    if pid is None or pid == str(os.getpid()):
        return True
    logger.debug("WATCHDOG_PID=%s is not this process (%d); no watchdog", pid, os.getpid())
    return False


class Watchdog:
    """Daemon thread that feeds the systemd watchdog while the service is healthy.

    Every ``interval_s`` seconds it calls ``is_healthy``; only a True result sends
    ``WATCHDOG=1``. A health check that returns False or raises withholds the ping,
    so systemd kills and restarts a hung service after ``WatchdogSec=``.
    """

    def __init__(
        self, notifier: SystemdNotifier, interval_s: float, is_healthy: HealthCheck
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval_s} s")
        self._notifier = notifier
        self._interval_s = interval_s
        self._is_healthy = is_healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = True

    @classmethod
    def from_env(
        cls,
        notifier: SystemdNotifier,
        is_healthy: HealthCheck,
        env: Mapping[str, str] | None = None,
    ) -> Watchdog | None:
        """A watchdog at the interval systemd asks for, or None when it asks for none."""
        interval_s = watchdog_interval_s(env)
        return None if interval_s is None else cls(notifier, interval_s, is_healthy)

    @property
    def interval_s(self) -> float:
        """Seconds between health checks (and pings)."""
        return self._interval_s

    @property
    def running(self) -> bool:
        """True while the pinging thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the pinging thread; the first check runs one interval from now."""
        if self._thread is not None:
            raise RuntimeError("watchdog already started")
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
        self._thread.start()
        logger.info("systemd watchdog: health check every %.1f s", self._interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread without waiting for the current interval to run out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def tick(self) -> bool:
        """Run one health check and ping when healthy; returns the check's result."""
        healthy = self._check()
        if healthy:
            self._notifier.watchdog()
        self._log_transition(healthy)
        return healthy

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.tick()

    def _check(self) -> bool:
        try:
            return bool(self._is_healthy())
        except Exception:
            logger.exception("watchdog health check raised; treating the service as unhealthy")
            return False

    def _log_transition(self, healthy: bool) -> None:
        if healthy == self._was_healthy:
            return
        self._was_healthy = healthy
        if healthy:
            logger.info("health check passes again; watchdog pings resumed")
        else:
            logger.warning("health check failed; withholding watchdog pings so systemd restarts")


def install_signal_handlers(
    on_stop: Callable[[], None],
    on_reload: Callable[[], None] | None = None,
) -> None:
    """Route SIGTERM and SIGINT to ``on_stop`` and SIGHUP to ``on_reload``.

    Must be called from the main thread. The callbacks run in the main thread
    between bytecodes, so they should only set state (an Event, a flag) and may be
    called more than once. Without ``on_reload`` a SIGHUP is logged and ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_signal_handlers must be called from the main thread")
    stop_handler = _handler(on_stop)
    signal.signal(signal.SIGTERM, stop_handler)
    signal.signal(signal.SIGINT, stop_handler)
    signal.signal(signal.SIGHUP, _handler(on_reload or _ignore_reload))


def _handler(callback: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        callback()

    return handle


def _ignore_reload() -> None:
    logger.info("configuration reload is not supported; restart the service instead")
