"""Batched rtnetlink writes for the per-peer hot path (routes, neighbours, FDB).

pyroute2 sends one request and waits for its answer, with a few hundred
microseconds of Python around each: fine for a handful of objects, too slow for
a cluster of 1,000 peers (3,000 objects). This module packs the same messages
by hand (they are small fixed structs, see rtnetlink(7)), sends them in bursts on
one NETLINK_ROUTE socket of the CURRENT network namespace, and reads every ACK,
so each failing message is reported against the object that caused it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from crossnet.netlink.const import (
    AF_BRIDGE,
    AF_INET,
    NDA_DST,
    NDA_LLADDR,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_STATIC,
)

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family pad ifindex state flags type
BURST = 256


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _ip(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def _mac(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


@dataclass
class Batch:
    """Messages to send; each carries a tag (the object it programs)."""

    messages: list[tuple[int, int, bytes, Any]] = field(default_factory=list)  # (type, flags, body, tag)

    def __len__(self) -> int:
        return len(self.messages)

    def route_replace(self, dst: str, gateway: str | None, oif: int | None, onlink: bool, tag: Any,
                      proto: int = RTPROT_STATIC) -> None:
        net = ipaddress.IPv4Network(dst)
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(AF_INET, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope, RTN_UNICAST,
                           RTNH_F_ONLINK if onlink else 0)
        body += _attr(RTA_DST, net.network_address.packed)
        if gateway:
            body += _attr(RTA_GATEWAY, _ip(gateway))
        if oif:
            body += _attr(RTA_OIF, struct.pack("=i", oif))
        self.messages.append((RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, tag))

    def neigh_replace(self, ifindex: int, ip: str, mac: str, tag: Any) -> None:
        body = _NDMSG.pack(AF_INET, ifindex, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, _ip(ip)) + _attr(NDA_LLADDR, _mac(mac))
        self.messages.append((RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, tag))

    def fdb_append(self, ifindex: int, mac: str, dst: str, tag: Any) -> None:
        body = _NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, _ip(dst))
        self.messages.append((RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND, body, tag))

    def commit(self, ignore: tuple[int, ...] = (17,)) -> list[tuple[Any, int]]:
        """Send everything; return [(tag, errno)] for the messages the kernel
        refused (errnos in `ignore`, EEXIST by default, count as success)."""
        if not self.messages:
            return []
        failures: list[tuple[Any, int]] = []
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.bind((0, 0))
            base = int.from_bytes(os.urandom(3), "little") << 4
            for start in range(0, len(self.messages), BURST):
                chunk = self.messages[start : start + BURST]
                tags: dict[int, Any] = {}
                out = bytearray()
                for i, (mtype, flags, body, tag) in enumerate(chunk):
                    seq = (base + start + i) & 0xFFFFFFFF
                    tags[seq] = tag
                    out += _HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
                sock.sendall(out)
                failures += _read_acks(sock, tags, ignore)
        finally:
            sock.close()
            self.messages.clear()
        return failures


def _read_acks(sock: socket.socket, tags: dict[int, Any], ignore: tuple[int, ...]) -> list[tuple[Any, int]]:
    failures = []
    pending = set(tags)
    while pending:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                break
            if mtype == NLMSG_ERROR and seq in pending:
                pending.discard(seq)
                (error,) = struct.unpack_from("=i", data, offset + _HDR.size)
                if error != 0 and -error not in ignore:
                    failures.append((tags[seq], -error))
            offset += (length + 3) & ~3
    return failures
