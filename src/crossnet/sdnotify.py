"""systemd's sd_notify protocol, without python-systemd: one datagram of ``KEY=VALUE``
lines to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Outside systemd (no NOTIFY_SOCKET) every call does nothing.

The agent (``Type=notify`` in crossnet-agent.service) sends ``READY=1`` after its first
full sync, ``WATCHDOG=1`` every half ``WatchdogSec`` (``$WATCHDOG_USEC``) from a thread
while its main loop is alive, and ``STOPPING=1`` when it stops.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return None  # unset, or a vsock address we do not speak
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=synced"``); False when not under systemd
    or the socket is gone (never raises: a notification must not stop the agent)."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), None when the
    service manager did not ask for them (or asked another process: ``$WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Watchdog:
    """A thread sending WATCHDOG=1 every ``interval`` seconds while ``alive()`` holds
    (the agent's main loop has turned within the last interval): a hung main loop stops
    the pings and systemd restarts the service."""

    def __init__(self, interval: float, alive: Callable[[], bool], stop: threading.Event):
        self.interval = interval
        self.alive = alive
        self.stop = stop
        self.sent = 0
        self.thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            if self.alive() and notify("WATCHDOG=1"):
                self.sent += 1


class Heartbeat:
    """The main loop calls ``beat()`` each turn; ``alive()`` says whether it did within ``window`` s."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()

    def alive(self) -> bool:
        return self.clock() - self.last <= self.window


def ready(status: str, stop: threading.Event) -> Heartbeat:
    """``READY=1`` (with ``STATUS=``), and the watchdog thread when systemd asked for one.
    The caller's loop calls ``beat()`` on what is returned every turn."""
    notify(f"READY=1\nSTATUS={status}")
    interval = watchdog_interval()
    heart = Heartbeat(2 * interval if interval else 0.0)
    if interval:
        Watchdog(interval, heart.alive, stop).start()
    return heart
