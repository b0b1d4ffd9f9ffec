"""Raw rtnetlink for the container attach fast path.

pyroute2 spends ~0.3-1 ms of Python per request (building, then fully parsing every
reply). Creating a container's veth pair and configuring it takes a handful of
requests whose messages are small fixed structs (rtnetlink(7)), so attach packs
them here: an interface lookup is one request whose reply is read for its index
only, and the container side (lo up, address, default route) goes out as one burst
whose ACKs are read together; with ``datapath: ebpf`` the new host veth's clsact and
program filter too (:func:`clsact_add`, :func:`bpf_filter_add`). Errors come back as
:class:`RtnlError` (an OSError carrying the kernel's errno) naming the object.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Any, Iterator

from crossnet.netlink.batch import _HDR, Batch, _attr, _mac
from crossnet.netlink.const import (
    AF_INET,
    ETH_P_ALL,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_EXT_MASK,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_GATEWAY,
    RTA_OIF,
    RTEXT_FILTER_SKIP_STATS,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
    RTM_NEWTFILTER,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_STATIC,
    TC_H_CLSACT,
    TC_H_CLSACT_HANDLE,
    TCA_BPF_FD,
    TCA_BPF_FLAG_ACT_DIRECT,
    TCA_BPF_FLAGS,
    TCA_BPF_NAME,
    TCA_KIND,
    TCA_OPTIONS,
    VETH_INFO_PEER,
)

ENODEV = errno.ENODEV
LOOPBACK_IFINDEX = 1

_IFINFO = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")
_TCMSG = struct.Struct("=BxHiIII")  # family, pad, pad, ifindex, handle, parent, info


class RtnlError(OSError):
    """A request the kernel refused: errno + what it was about."""


def _ifname(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


class Rtnl:
    """One raw NETLINK_ROUTE socket, in this network namespace or (``netns`` = a
    namespace path) created inside another one without leaving this one."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        else:
            from crossnet.netlink.iproute import _netlink_socket_in

            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0, fileno=_netlink_socket_in(netns))
        self.sock.bind((0, 0))
        self.seq = int.from_bytes(os.urandom(3), "little") << 4

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    # ---- requests
    def _send(self, messages: list[tuple[int, int, bytes]]) -> list[int]:
        out = bytearray()
        seqs = []
        for mtype, flags, body in messages:
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            seqs.append(self.seq)
            out += _HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST, self.seq, 0) + body
        self.sock.sendall(out)
        return seqs

    def _received(self) -> Iterator[tuple[int, int, bytes, int, int]]:
        """(seq, type, datagram, offset, length) of each message read from the socket, in
        order, reading on for as long as the caller takes them."""
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                yield seq, mtype, data, offset, length
                offset += (length + 3) & ~3

    def _replies(self, seqs: list[int]) -> dict[int, tuple[int, bytes]]:
        """seq -> (type, message) of the first answer to each request."""
        pending, got = set(seqs), {}
        if not pending:
            return got
        for seq, mtype, data, offset, length in self._received():
            if seq in pending:
                pending.discard(seq)
                got[seq] = (mtype, data[offset:offset + length])
                if not pending:
                    break
        return got

    def call(self, messages: list[tuple[int, int, bytes, str]]) -> None:
        """Send (type, flags, body, what) requests in one burst with ACKs; raise
        RtnlError for the first one the kernel refused."""
        seqs = self._send([(t, f | NLM_F_ACK, b) for t, f, b, _ in messages])
        replies = self._replies(seqs)
        for seq, (_, _, _, what) in zip(seqs, messages):
            mtype, msg = replies[seq]
            if mtype == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", msg, _HDR.size)
                if error:
                    raise RtnlError(-error, f"{what}: {os.strerror(-error)}")

    def link_kinds(self) -> dict[int, str | None]:
        """index -> kind (``veth``, ``bridge``, …; None: none given) of every interface
        here: one dump, read for those two fields only (no statistics asked for)."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        (seq,) = self._send([(RTM_GETLINK, NLM_F_DUMP, body)])
        out: dict[int, str | None] = {}
        for got, mtype, data, offset, length in self._received():
            if got != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, offset + _HDR.size)
                raise RtnlError(-error, f"listing interfaces: {os.strerror(-error)}")
            if mtype == RTM_NEWLINK:
                index = _IFINFO.unpack_from(data, offset + _HDR.size)[2]
                info = find_attr(data, offset + _HDR.size + _IFINFO.size, offset + length, IFLA_LINKINFO)
                kind = find_attr(data, info[0], info[1], IFLA_INFO_KIND) if info else None
                out[index] = data[kind[0]:kind[1]].rstrip(b"\0").decode() if kind else None
        return out  # not reached: _received reads on

    def ifindex(self, name: str) -> int | None:
        """Index of interface ``name`` (None if there is none)."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _ifname(name) + _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        (seq,) = self._send([(RTM_GETLINK, 0, body)])
        mtype, msg = self._replies([seq])[seq]
        if mtype == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", msg, _HDR.size)
            if -error == ENODEV:
                return None
            raise RtnlError(-error, f"looking up interface {name!r}: {os.strerror(-error)}")
        return _IFINFO.unpack_from(msg, _HDR.size)[2]


def find_attr(data: bytes, start: int, end: int, kind: int) -> tuple[int, int] | None:
    """(start, end) of the payload of the first attribute ``kind`` in data[start:end]."""
    while start + 4 <= end:
        length, akind = struct.unpack_from("=HH", data, start)
        if length < 4:
            return None
        if akind & NLA_TYPE_MASK == kind:
            return start + 4, min(start + length, end)
        start += (length + 3) & ~3
    return None


# ---- message builders: (type, flags, body, what)
def veth_create(name: str, mtu: int, mac: str | None, master: int | None, peer: str, peer_mac: str,
                peer_netns_fd: int | None) -> tuple[int, int, bytes, str]:
    """A veth pair: ``name`` here (up, MTU, MAC — the kernel's when None —, enslaved to
    ``master``; None: no master, a routed veth) and ``peer`` created directly in the
    namespace ``peer_netns_fd`` (here when None; same MTU, ``peer_mac``; down)."""
    # the peer cannot be created up: veth_open() refuses (ENOTCONN) while this end is
    # not registered yet; the caller sets it up inside its namespace
    peer_msg = (_IFINFO.pack(0, 0, 0, 0, 0) + _ifname(peer) + _attr(IFLA_MTU, struct.pack("=I", mtu))
                + _attr(IFLA_ADDRESS, _mac(peer_mac)))
    if peer_netns_fd is not None:
        peer_msg += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    linkinfo = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
    body = (_IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + _ifname(name) + _attr(IFLA_MTU, struct.pack("=I", mtu))
            + (_attr(IFLA_ADDRESS, _mac(mac)) if mac else b"")
            + (_attr(IFLA_MASTER, struct.pack("=I", master)) if master is not None else b"")
            + _attr(IFLA_LINKINFO, linkinfo))
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"creating veth {name} (peer {peer})"


def link_del(name: str) -> tuple[int, int, bytes, str]:
    """Delete interface ``name`` (ENODEV when there is none)."""
    return RTM_DELLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _ifname(name), f"deleting {name}"


def link_del_index(index: int, what: str) -> tuple[int, int, bytes, str]:
    """Delete interface number ``index`` (ENODEV when there is none)."""
    return RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0), f"deleting {what}"


def link_alias(index: int, alias: str, what: str) -> tuple[int, int, bytes, str]:
    """Set the alias (``ip link show``'s ``alias``; no NUL, as iproute2) of interface number ``index``."""
    return RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + _attr(IFLA_IFALIAS, alias.encode()), \
        f"marking {what}"


def link_up(index: int, what: str) -> tuple[int, int, bytes, str]:
    return RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP), f"setting {what} up"


def addr_add(index: int, cidr: str, what: str) -> tuple[int, int, bytes, str]:
    iface = ipaddress.IPv4Interface(cidr)
    ip = iface.ip.packed
    body = _IFADDR.pack(AF_INET, iface.network.prefixlen, 0, 0, index) + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip)
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body, f"adding {cidr} to {what}"


def default_route(gateway: str, oif: int, onlink: bool = False) -> tuple[int, int, bytes, str]:
    body = _RTMSG.pack(AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST,
                       RTNH_F_ONLINK if onlink else 0)
    body += _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
    body += _attr(RTA_OIF, struct.pack("=i", oif))
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"default route via {gateway}"


def host_route(cidr: str, oif: int) -> tuple[int, int, bytes, str]:
    """``ip route replace CIDR dev OIF`` (scope link): a routed container's host route."""
    batch = Batch()
    batch.route_replace(cidr, None, oif, False, f"route {cidr} via interface {oif}")
    return batch.messages[0]


def neigh_permanent(index: int, ip: str, mac: str) -> tuple[int, int, bytes, str]:
    """``ip neigh replace IP lladdr MAC dev INDEX nud permanent``."""
    batch = Batch()
    batch.neigh_replace(index, ip, mac, f"neighbour {ip} lladdr {mac}")
    return batch.messages[0]


def clsact_add(index: int, what: str) -> tuple[int, int, bytes, str]:
    """``tc qdisc add dev INDEX clsact`` (EEXIST when it has one)."""
    body = _TCMSG.pack(0, 0, index, TC_H_CLSACT_HANDLE, TC_H_CLSACT, 0) + _attr(TCA_KIND, b"clsact\0")
    return RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body, f"adding clsact to {what}"


def bpf_filter_add(index: int, parent: int, pref: int, handle: int, prog_fd: int, name: str,
                   what: str) -> tuple[int, int, bytes, str]:
    """``tc filter add dev INDEX parent PARENT protocol all pref PREF handle HANDLE bpf da
    fd PROG_FD name NAME`` (EEXIST when that slot is taken)."""
    options = (_attr(TCA_BPF_FD, struct.pack("=I", prog_fd)) + _attr(TCA_BPF_NAME, name.encode() + b"\0")
               + _attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
    body = (_TCMSG.pack(0, 0, index, handle, parent, pref << 16 | socket.htons(ETH_P_ALL))
            + _attr(TCA_KIND, b"bpf\0") + _attr(TCA_OPTIONS, options))
    return RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, body, f"adding filter {name} to {what}"
