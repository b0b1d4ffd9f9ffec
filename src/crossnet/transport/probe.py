"""Path-MTU probes: ICMP echo with don't-fragment, and a binary search over them.

`echo()` sends one echo request of exactly `size` bytes (IP header included) on a raw
ICMP socket whose IP_MTU_DISCOVER is IP_PMTUDISC_PROBE: the kernel sets DF, never
fragments it and ignores (does not consult) the path MTU it has cached, so every probe
measures the path as it is now. A size above the outgoing device's MTU fails at once
(EMSGSIZE); a router whose next link is narrower answers "fragmentation needed" (ICMP
3/4 with the next-hop MTU), which `probe()` reports as `TOO_BIG` with that hint; a path
that drops it silently is a lost probe.

`search()` is the pure binary search (no I/O: it calls the `probe` function it is
given), `discover()` is the search over real probes. Both are bounded: at most
`max_probes(low, high, retries)` probes, and `discover` stops at its deadline with
the largest size known to cross.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from crossnet.errors import CrossnetError
from crossnet.netlink.ns import socket_in_netns

# <linux/in.h>
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_PMTUDISC_PROBE = 3  # DF set, cached path MTU ignored (and never used to fragment)
ICMP_ECHOREPLY, ICMP_DEST_UNREACH, ICMP_ECHO = 0, 3, 8
ICMP_FRAG_NEEDED = 4
IP_HEADER, ICMP_HEADER = 20, 8
MIN_SIZE = IP_HEADER + ICMP_HEADER  # an echo request without payload
MAX_SIZE = 65_535
# once a reply has come back, a probe is given up after max(ADAPT_FLOOR, ADAPT_FACTOR ×
# the slowest round trip seen) (never more than the timeout asked for): a path that drops
# oversized packets silently then costs fractions of a second per size, not the timeout
ADAPT_FLOOR, ADAPT_FACTOR = 0.2, 10

OK, TOO_BIG, LOST = "ok", "too-big", "lost"


class PathUnreachable(CrossnetError):
    """Not even the smallest size asked for crossed the path."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # OK | TOO_BIG | LOST
    rtt: float | None = None  # seconds (OK)
    mtu: int | None = None  # TOO_BIG: the MTU the kernel or a router named (None: not given)


# ---------------------------------------------------------------- pure search


MAX_HINT_JUMPS = 3


def max_probes(low: int, high: int, retries: int) -> int:
    """Upper bound of the probes `search` sends: the first try at `high`, one at `low`
    when that one vanished (is the path up at all?), one per
    halving of [low - 1, high], up to MAX_HINT_JUMPS tries at a size a router named,
    each sent up to `retries` times (only a lost probe is sent again)."""
    return (2 + math.ceil(math.log2(high - low + 2)) + MAX_HINT_JUMPS) * max(retries, 1)


def search(probe: Callable[[int], Outcome], low: int, high: int, *, retries: int = 3,
           deadline: Callable[[], bool] = lambda: False) -> int:
    """The largest size in [low, high] for which `probe(size)` is OK, assuming the path
    carries every size up to its MTU and none above.

    A LOST probe is sent again (up to `retries` times in all), then counts as too big
    (a path that drops oversized packets silently). TOO_BIG with an MTU below the size
    (a router's "fragmentation needed") makes that MTU the next size tried. Raises
    PathUnreachable when `low` itself does not cross. When `deadline()` turns true the
    search stops with the largest size known to cross (PathUnreachable if none)."""
    if not MIN_SIZE <= low <= high <= MAX_SIZE:
        raise ValueError(f"probe sizes: need {MIN_SIZE} <= low <= high <= {MAX_SIZE}, got {low}..{high}")
    good = low - 1  # the largest size known to cross (low - 1: none yet, low unconfirmed)
    hi = high  # nothing above it crosses
    size = high
    jumps = 0
    while True:
        hint = None
        crossed = False
        for _ in range(max(retries, 1)):
            out = probe(size)
            if out.kind == OK:
                crossed = True
                break
            if out.kind == TOO_BIG:
                hint = out.mtu
                break
            if deadline():
                break
        if crossed:
            good = size
        else:
            hi = size - 1
            if hint is not None and good < hint < size:
                hi = hint
        if good >= hi:
            if good < low:
                raise PathUnreachable(f"no echo of {low} bytes crossed the path")
            return good
        if deadline():
            if good < low:
                raise PathUnreachable(f"no echo of {low}..{high} bytes crossed the path before the deadline")
            return good
        if not crossed and out.kind == LOST and size == high and good < low:
            size = low  # silence at full size: is the path up at all? (a dead peer costs 2 sizes)
        elif hint is not None and hi == hint and jumps < MAX_HINT_JUMPS:
            jumps += 1
            size = hi  # a router named its next-hop MTU: most likely the answer
        else:
            size = (good + hi + 1) // 2  # in (good, hi]


# ---------------------------------------------------------------- I/O


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data` (ICMP; crossnet.check uses it too)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, size: int) -> bytes:
    """An ICMP echo request that makes an IP packet of `size` bytes."""
    payload = bytes(range(256)) * ((size - MIN_SIZE) // 256 + 1)
    body = payload[: size - MIN_SIZE]
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(head + body), ident, seq) + body


def classify(packet: bytes, dst: str, ident: int, seq: int) -> Outcome | None:
    """What a packet read from the raw ICMP socket (IP header included) says about
    probe (`ident`, `seq`) to `dst`: OK for its echo reply from `dst`, TOO_BIG (with the
    next-hop MTU) for a "fragmentation needed" quoting it, None for anything else."""
    if len(packet) < IP_HEADER + ICMP_HEADER or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < ICMP_HEADER:
        return None
    kind, code = icmp[0], icmp[1]
    if kind == ICMP_ECHOREPLY:
        src = socket.inet_ntoa(packet[12:16])
        rid, rseq = struct.unpack("!HH", icmp[4:8])
        return Outcome(OK) if (src, rid, rseq) == (dst, ident, seq) else None
    if kind == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        inner = icmp[ICMP_HEADER:]
        if len(inner) < IP_HEADER or inner[0] >> 4 != 4:
            return None
        iihl = (inner[0] & 0x0F) * 4
        quoted = inner[iihl:iihl + ICMP_HEADER]
        if socket.inet_ntoa(inner[16:20]) != dst or len(quoted) < ICMP_HEADER or quoted[0] != ICMP_ECHO:
            return None
        if struct.unpack("!HH", quoted[4:8]) != (ident, seq):
            return None
        mtu = struct.unpack("!H", icmp[6:8])[0]
        return Outcome(TOO_BIG, mtu=mtu or None)
    return None


class Prober:
    """One raw ICMP socket (DF on, cached path MTU ignored) for many probes to one
    destination. `probe(size)` -> Outcome; close() when done (or use `with`)."""

    def __init__(self, dst: str, *, timeout: float, df: bool = True, netns: str | None = None,
                 src: str | None = None):
        self.dst = socket.inet_ntoa(socket.inet_aton(dst))  # IPv4 dotted quad or ValueError/OSError
        self.timeout = timeout
        self.slowest: float | None = None  # the longest round trip seen by this prober
        self.sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE if df else 0)
            if src:
                self.sock.bind((src, 0))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = int.from_bytes(os.urandom(2), "big")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def probe(self, size: int) -> Outcome:
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"probe size {size}: must be {MIN_SIZE}..{MAX_SIZE}")
        self.seq = (self.seq + 1) & 0xFFFF
        started = time.monotonic()
        try:
            self.sock.sendto(echo_request(self.ident, self.seq, size), (self.dst, 0))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # above the outgoing device's MTU (or a cached one)
                return Outcome(TOO_BIG, mtu=self._local_mtu())
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENOBUFS):
                time.sleep(min(self.timeout, 0.05))
                return Outcome(LOST)
            raise
        wait = self.timeout if self.slowest is None else min(self.timeout, max(ADAPT_FLOOR, ADAPT_FACTOR * self.slowest))
        end = started + wait
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return Outcome(LOST)
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return Outcome(LOST)
            try:
                packet = self.sock.recv(MAX_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # an ICMP error queued for this socket: read it from the packet instead
                continue
            out = classify(packet, self.dst, self.ident, self.seq)
            if out is not None and out.kind == OK:
                rtt = time.monotonic() - started
                self.slowest = max(self.slowest or 0.0, rtt)
                return Outcome(OK, rtt=rtt)
            if out is not None:
                return out

    def _local_mtu(self) -> int | None:
        try:
            self.sock.connect((self.dst, 0))
            return self.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MTU)
        except OSError:
            return None


def echo(dst: str, size: int, *, timeout: float, df: bool = True, netns: str | None = None,
         src: str | None = None) -> float | None:
    """One ICMP echo of `size` bytes (IP packet, header included) to `dst`, don't-fragment
    unless `df` is False, from namespace `netns` (name or path; None: this one) and
    source address `src`: the round-trip time in seconds, or None (no reply within
    `timeout`, too big for the path or the local device)."""
    try:
        prober = Prober(dst, timeout=timeout, df=df, netns=netns, src=src)
    except OSError:  # no such namespace, or `src` is not (yet) an address here: no answer
        return None
    with prober:
        out = prober.probe(size)
    return out.rtt if out.kind == OK else None


def discover(dst: str, *, low: int, high: int, timeout: float = 0.5, retries: int = 3,
             budget: float = 10.0, netns: str | None = None, src: str | None = None) -> int:
    """The path MTU to `dst` within [low, high]: the largest IP packet (header included)
    that crosses with don't-fragment, found by `search` over real probes. At most
    `max_probes(low, high, retries)` probes, each waiting up to `timeout`; stops after
    `budget` seconds with the largest size known to cross. PathUnreachable when even
    `low` does not cross."""
    stop = time.monotonic() + budget
    with Prober(dst, timeout=timeout, netns=netns, src=src) as p:
        return search(p.probe, low, high, retries=retries, deadline=lambda: time.monotonic() >= stop)
