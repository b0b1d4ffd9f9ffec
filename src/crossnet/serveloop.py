"""Serving loops that sleep until there is work: no timeout, no periodic wakeup.

`socketserver.BaseServer.serve_forever(poll_interval=0.5)` wakes twice a second to look
at its shutdown flag, and a listener thread blocked in ``recvfrom`` with a 0.5 s timeout
does the same; in a long-running idle process (the agent, `crossnet launch`) every such
thread is a steady trickle of CPU. Here a thread blocks in a selector on its listening
socket(s) *and* the read end of a :class:`Waker` (a socketpair); stopping writes one byte
to the waker, which makes every thread waiting on it return at once.

* :class:`Waker` — the self-pipe: ``wake()`` (idempotent, safe from any thread),
  ``readable(sock)`` yields each time ``sock`` is readable and ends once woken.
* :class:`WakeOnShutdown` — a mixin for a ``socketserver`` server (put it first in the
  bases): ``serve_forever()`` waits on the listening socket and the waker only,
  ``shutdown()`` wakes it and waits until it returned, as the standard one does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
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


__all__ = ["WakeOnShutdown", "Waker"]
