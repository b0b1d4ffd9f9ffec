"""Per-source rate limits for an endpoint anything on the network can reach (the mesh
join endpoint, docs/mesh.md): pure logic, an injectable clock, bounded memory.

* :class:`FailureLimit` — after ``failures`` failed requests of one source within
  ``window`` seconds, the source is refused for ``backoff`` seconds (``retry_after``),
  before any work is done for it. Successes are never counted or slowed.
* :class:`ConnectRate` — a token bucket per source: at most ``burst`` new connections at
  once, refilled at ``rate`` per second; the next is refused (closed before the TLS
  handshake).

A source is a :func:`crossnet.serveloop.source_key` (an IPv4 address, an IPv6 /64). Each
table holds at most ``capacity`` sources: entries that no longer matter (their window and
back-off passed, their bucket full again) are dropped as they age, and past the cap the
least recently seen source is forgotten (it starts afresh; a client spraying addresses
cannot grow the table). Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class FailureLimit:
    def __init__(self, failures: int, window: float, backoff: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic):
        if failures < 1 or window <= 0 or backoff <= 0 or capacity < 1:
            raise ValueError("failures, window, backoff and capacity must be positive")
        self.failures, self.window, self.backoff, self.capacity = failures, window, backoff, capacity
        self.clock = clock
        # source -> (times of its recent failures, blocked until); least recently failed first
        self._table: OrderedDict[str, tuple[list[float], float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def retry_after(self, source: str) -> float | None:
        """Seconds until `source` may be served again, None when it may now. Adds nothing."""
        with self._lock:
            entry = self._table.get(source)
            if entry is None:
                return None
            wait = entry[1] - self.clock()
            return wait if wait > 0 else None

    def failed(self, source: str) -> float | None:
        """Count one failure of `source`; its retry_after() from now on."""
        now = self.clock()
        with self._lock:
            times, until = self._table.pop(source, ([], 0.0))
            times = [t for t in times if now - t < self.window] + [now]
            if len(times) >= self.failures:
                times, until = [], max(until, now + self.backoff)
            self._table[source] = (times, until)
            self._forget(now)
            return until - now if until > now else None

    def _forget(self, now: float) -> None:
        keep = max(self.window, self.backoff)  # an entry's last failure is at most this old to matter
        while self._table:
            times, until = next(iter(self._table.values()))
            last = times[-1] if times else until - self.backoff
            if len(self._table) <= self.capacity and now - last < keep:
                return
            self._table.popitem(last=False)


class ConnectRate:
    def __init__(self, rate: float, burst: int, capacity: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate, burst and capacity must be positive")
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self.clock = clock
        # source -> (tokens left, when counted); least recently seen first
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, source: str) -> bool:
        """Take one token of `source`'s bucket: False when it is empty."""
        now = self.clock()
        with self._lock:
            tokens, then = self._table.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            ok = tokens >= 1.0
            self._table[source] = (tokens - 1.0 if ok else tokens, now)
            while self._table:  # full buckets are as good as none; past the cap, the oldest goes
                tokens, then = next(iter(self._table.values()))
                if len(self._table) <= self.capacity and tokens + (now - then) * self.rate < self.burst:
                    break
                self._table.popitem(last=False)
            return ok


__all__ = ["ConnectRate", "FailureLimit"]
