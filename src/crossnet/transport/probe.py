"""The probe primitive: one ICMP echo of a given size, don't-fragment by default, over
a raw socket (no subprocess, no iputils).

`size` is the whole IP datagram (20-byte header + 8-byte ICMP header + payload), so
``echo(dst, mtu)`` proves that a packet of exactly the MTU crosses the path. With `df`
the socket uses IP_PMTUDISC_PROBE: DF is set and the kernel's cached path MTU is
ignored (a packet larger than the path is dropped or answered with "fragmentation
needed", never fragmented), so the result speaks of the path now.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from crossnet.check import _checksum, socket_in_netns

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
HEADERS = 20 + 8  # IPv4 + ICMP echo
MIN_SIZE = HEADERS + 8  # room for the sequence stamp

_seq_lock = threading.Lock()
_seq = 0


def _next_ident() -> tuple[int, int]:
    global _seq
    with _seq_lock:
        _seq = (_seq + 1) & 0xFFFF
        return (os.getpid() ^ threading.get_ident()) & 0xFFFF, _seq


def echo(dst: str, size: int, *, timeout: float, df: bool = True, netns: str | None = None,
         src: str | None = None) -> float | None:
    """Send one ICMP echo request of `size` bytes (IP datagram) to `dst` and wait up to
    `timeout` seconds for its reply: the round-trip time in seconds, or None (no reply,
    or the packet could not leave: EMSGSIZE when it exceeds the route's MTU)."""
    if size < MIN_SIZE or size > 65535:
        raise ValueError(f"probe size {size} out of range {MIN_SIZE}..65535")
    try:
        sock = socket_in_netns(netns or "", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError:
        return None
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE if df else IP_PMTUDISC_DONT)
        if src:
            try:
                sock.bind((src, 0))
            except OSError:
                return None
        ident, seq = _next_ident()
        payload = struct.pack("!Q", time.monotonic_ns()) + bytes(size - HEADERS - 8)
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq) + payload
        sent = time.monotonic()
        try:
            sock.sendto(pkt, (dst, 0))
        except OSError:
            return None
        deadline = sent + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return None
            data, peer = sock.recvfrom(65535)
            off = (data[0] & 0x0F) * 4
            if len(data) < off + 8 or peer[0] != dst:
                continue
            typ, _code, _c, rid, rseq = struct.unpack("!BBHHH", data[off:off + 8])
            if typ == 0 and rid == ident and rseq == seq:
                return time.monotonic() - sent


__all__ = ["echo"]
