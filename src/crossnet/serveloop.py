"""Serving loops that sleep until there is work: no timeout, no periodic wakeup.

`socketserver.BaseServer.serve_forever(poll_interval=0.5)` wakes twice a second to look
at its shutdown flag, and a listener thread blocked in ``recvfrom`` with a 0.5 s timeout
does the same; in a long-running idle process (the agent, `crossnet launch`) every such
thread is a steady trickle of CPU. Here a thread blocks in a selector on its listening
socket(s) *and* the read end of a :class:`Waker` (a socketpair); stopping writes one byte
to the waker, which makes every thread waiting on it return at once.

* :class:`Waker` — the self-pipe: ``wake()`` (idempotent, safe from any thread),
  ``readable(sock)`` yields each time ``sock`` is readable and ends once woken.
* :class:`ConnectionSlots` — a thread-safe count of open connections, capped in all and
  per source: ``try_acquire(source)`` takes a slot (or answers False), ``release(source)``
  gives it back.
* :class:`LimitedConnections` — a mixin for a threading ``socketserver`` server that
  anything beyond local root can reach: at most ``limits()`` connections at once, per
  source and in all (the next is closed at once), each cut at its deadline.
* :class:`WakeOnShutdown` — a mixin for a ``socketserver`` server (put it first in the
  bases): ``serve_forever()`` waits on the listening socket and the waker only,
  ``shutdown()`` wakes it and waits until it returned, as the standard one does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


class Waker:
    """A socketpair whose read end becomes readable, and stays so, once ``wake()`` ran
    (until ``reset()``): any number of threads selecting on it return."""

    selector_class: Any = selectors.DefaultSelector  # tests count its select() calls

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()
        self.woken = False

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        with self._lock:
            if self.woken or self._w.fileno() < 0:
                return
            self.woken = True
            with contextlib.suppress(OSError):  # full buffer: it is readable already
                self._w.send(b"\0")

    def reset(self) -> None:
        """Readable no more (the pending byte drained): for a server that serves again."""
        with self._lock:
            self.woken = False
            with contextlib.suppress(OSError):
                while self._r.recv(64):
                    pass

    def readable(self, sock: Any) -> Iterator[None]:
        """Yield each time ``sock`` is readable; return once woken. One selector for the
        whole loop, no timeout: ``for _ in waker.readable(sock): <read what is there>``."""
        with self.selector_class() as sel:
            sel.register(sock, selectors.EVENT_READ)
            sel.register(self._r, selectors.EVENT_READ)
            while not self.woken:
                ready = sel.select()
                if self.woken:
                    return
                if any(key.fileobj is self._r for key, _ in ready):
                    self.reset()  # a byte left from before a reset(): drained, never a busy loop
                if any(key.fileobj is sock for key, _ in ready):
                    yield

    def close(self) -> None:
        with self._lock:
            self._r.close()
            self._w.close()


def source_key(address: str) -> str:
    """Whose share a connection counts against: the IPv4 address, an IPv6 /64 (one host
    holds a whole /64), an IPv4-mapped IPv6 address as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


class ConnectionSlots:
    """At most ``total`` slots held at once, at most ``per_source`` of them by one source
    (``None`` for both: no per-source share, e.g. a unix socket). Thread-safe; a holder
    gives back exactly what it took."""

    def __init__(self, total: int, per_source: int | None = None):
        self.total, self.per_source = total, per_source
        self._held: dict[str | None, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def try_acquire(self, source: str | None = None) -> bool:
        """A slot for ``source``, unless all are taken or ``source`` holds its share."""
        with self._lock:
            held = self._held.get(source, 0)
            if self._count >= self.total or (self.per_source is not None and held >= self.per_source):
                return False
            self._held[source] = held + 1
            self._count += 1
            return True

    def release(self, source: str | None = None) -> None:
        """Give back a slot ``try_acquire(source)`` took; one never taken is an error."""
        with self._lock:
            held = self._held.get(source, 0)
            if held <= 0:
                raise ValueError(f"release: no slot held for source {source!r}")
            if held == 1:
                del self._held[source]
            else:
                self._held[source] = held - 1
            self._count -= 1

    def held(self, source: str | None = None) -> int:
        with self._lock:
            return self._held.get(source, 0)

    def __len__(self) -> int:
        with self._lock:
            return self._count


class LimitedConnections:
    """Mixin for a ``socketserver.ThreadingMixIn`` TCP server (before it in the bases):
    ``limits()`` = (connections at once, at once per :func:`source_key`, seconds a
    connection may last). A connection beyond either limit is closed at once; one past its
    deadline is shut down, whatever it still sends (a client that trickles one byte within
    each read timeout, never a whole request), which ends every read of its thread. The
    per-source share keeps one client from holding every slot."""

    def limits(self) -> tuple[int, int, float]:
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any):
        # the raw socket -> (a duplicate of it, start, source): shutting the duplicate down
        # ends every read of the socket (also through a TLS wrapper)
        self._conns: dict[socket.socket, tuple[socket.socket, float, str]] = {}
        self._conns_lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        super().__init__(*args, **kwargs)

    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def process_request(self, request: Any, client_address: Any) -> None:
        most, per_source, deadline = self.limits()
        now = time.monotonic()
        source = source_key(str(client_address[0]))
        with self._conns_lock:
            live = [src for _, start, src in self._conns.values() if now - start <= deadline]
            if len(live) >= most or live.count(source) >= per_source:
                request.close()
                return
            try:
                self._conns[request] = (request.dup(), now, source)
            except OSError:
                request.close()
                return
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="crossnet-conn-reaper", daemon=True)
                self._reaper.start()
        super().process_request(request, client_address)  # type: ignore[misc]

    def _reap(self) -> None:
        """Runs while connections are open, asleep until the oldest one's deadline: shuts
        down those past it (their threads then end and unregister them)."""
        while True:
            deadline = self.limits()[2]
            with self._conns_lock:
                if not self._conns:
                    self._reaper = None
                    return
                now = time.monotonic()
                for watch, start, _ in self._conns.values():
                    if now - start > deadline:
                        with contextlib.suppress(OSError):
                            watch.shutdown(socket.SHUT_RDWR)
                due = [start + deadline for _, start, _ in self._conns.values() if start + deadline >= now]
            time.sleep(max(0.05, min(due) - now + 0.01) if due else 0.05)  # later ones are due later

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            entry = self._conns.pop(request, None)
        if entry is not None:
            entry[0].close()
        super().shutdown_request(request)  # type: ignore[misc]


class WakeOnShutdown:
    """Mixin for a ``socketserver`` server (first in the bases): serve_forever() without a
    poll interval, woken by shutdown(). ``serve_forever`` and ``shutdown`` keep the
    standard contract: shutdown() asks the loop running in another thread to stop and
    waits until it has (called before serve_forever ran, it makes that one return at once)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._waker = Waker()
        self._loop_done = threading.Event()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._waker.close()
            raise

    def serve_forever(self, poll_interval: float | None = None) -> None:  # never polls: the argument is ignored
        self._loop_done.clear()
        try:
            # the waker is woken by shutdown() only: readable() ends exactly when it is asked
            for _ in self._waker.readable(self):  # no timeout: only a connection or shutdown() wakes it
                self._handle_request_noblock()  # type: ignore[attr-defined]
                self.service_actions()  # type: ignore[attr-defined]
        finally:
            self._waker.reset()
            self._loop_done.set()

    def shutdown(self) -> None:
        self._waker.wake()
        self._loop_done.wait()

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self._waker.close()


__all__ = ["ConnectionSlots", "LimitedConnections", "WakeOnShutdown", "Waker", "source_key"]
