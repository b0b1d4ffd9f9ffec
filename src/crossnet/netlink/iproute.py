"""Thin helpers over pyroute2. Every kernel change crossnet makes goes through
pyroute2 (netlink) — no `ip`/`bridge` subprocesses."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

if TYPE_CHECKING:  # pyroute2.iproute costs ~90 ms to import: only when a socket is opened
    from pyroute2 import IPRoute

from crossnet.errors import CrossnetError
from crossnet.netlink.const import (  # noqa: F401 - nl.X (this module) is used by plan, containers, ovs
    AF_INET,
    IFF_UP,
    NTF_SELF,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    RTPROT_CROSSNET,
    RTPROT_KERNEL,
    RTPROT_STATIC,
)
from crossnet.netlink.ns import netns_path  # nl.netns_path: containers


def open_ipr(netns: str | None = None) -> IPRoute:
    """IPRoute for the current namespace, or bound to another one. For another
    namespace the netlink socket is created with setns() on this thread only (and
    switched straight back): ~1 ms, where pyroute2's own netns= forks a helper
    process (~20 ms, most of an attach). Falls back to pyroute2's way on any error."""
    from pyroute2 import IPRoute

    if netns is None:
        return IPRoute()
    path = netns_path(netns)
    try:
        return IPRoute(fileno=_netlink_socket_in(path))
    except OSError:
        return IPRoute(netns=path)


def _netlink_socket_in(path: str) -> int:
    """fd of a NETLINK_ROUTE socket created inside the netns at `path`. setns()
    with CLONE_NEWNET changes only the calling thread's namespace; a socket stays
    in the namespace it was created in."""
    import socket

    from crossnet.netlink.ns import setns

    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
        finally:
            try:
                setns(own)
            except OSError as exc:  # not an OSError: open_ipr must not fall back from the wrong namespace
                raise RuntimeError(f"cannot return to this thread's network namespace: {exc}") from None
        return sock.detach()
    finally:
        os.close(target)
        os.close(own)


def attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def ifindex(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def require_index(ipr: IPRoute, name: str) -> int:
    idx = ifindex(ipr, name)
    if idx is None:
        raise CrossnetError(f"interface {name!r} does not exist")
    return idx


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str | None
    up: bool
    master: int | None
    info_data: dict


def link_info(ipr: IPRoute, name: str | None = None, index: int | None = None) -> LinkInfo | None:
    if index is None:
        index = ifindex(ipr, name) if name else None
        if index is None:
            return None
    try:
        msg = ipr.link("get", index=index)[0]
    except NetlinkError:
        return None
    return parse_link(msg)


def parse_link(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo else None
    info_data: dict = {}
    if data is not None:
        try:
            info_data = dict(data["attrs"])
        except (TypeError, KeyError, ValueError):
            info_data = {}
    return LinkInfo(
        index=msg["index"],
        name=attr(msg, "IFLA_IFNAME"),
        kind=kind,
        mtu=attr(msg, "IFLA_MTU", 0),
        mac=attr(msg, "IFLA_ADDRESS"),
        up=bool(msg["flags"] & IFF_UP),
        master=attr(msg, "IFLA_MASTER"),
        info_data=info_data,
    )


def all_links(ipr: IPRoute) -> list[LinkInfo]:
    return [parse_link(m) for m in ipr.get_links()]


def all_addresses(ipr: IPRoute) -> dict[int, list[str]]:
    """IPv4 addresses of every link: index -> ['a.b.c.d/len', ...] (one dump)."""
    out: dict[int, list[str]] = {}
    for msg in ipr.get_addr(family=AF_INET):
        out.setdefault(msg["index"], []).append(f"{attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}")
    return out


def all_neighbours(ipr: IPRoute) -> dict[tuple[int, str], tuple[str | None, int]]:
    """(ifindex, ip) -> (mac, nud state) for every IPv4 neighbour (one dump)."""
    return {
        (m["ifindex"], attr(m, "NDA_DST")): (attr(m, "NDA_LLADDR"), m["state"])
        for m in ipr.get_neighbours(family=AF_INET)
    }


def all_fdb(ipr: IPRoute) -> set[tuple[int, str, str | None]]:
    """(ifindex, mac, remote dst) of every bridge/vxlan FDB entry (one dump)."""
    return {(m["ifindex"], attr(m, "NDA_LLADDR"), attr(m, "NDA_DST")) for m in ipr.fdb("dump")}


def addresses(ipr: IPRoute, index: int) -> list[str]:
    """IPv4 addresses on a link as 'a.b.c.d/len'."""
    out = []
    for msg in ipr.get_addr(family=AF_INET, index=index):
        out.append(f"{attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}")
    return out


@dataclass(frozen=True)
class RouteInfo:
    dst: str  # CIDR, "0.0.0.0/0" for default
    gateway: str | None
    oif: int | None
    proto: int
    scope: int
    prefsrc: str | None
    flags: int
    metric: int | None


def routes(ipr: IPRoute, table: int = RT_TABLE_MAIN) -> list[RouteInfo]:
    out = []
    for msg in ipr.get_routes(family=AF_INET, table=table):
        dst = attr(msg, "RTA_DST", "0.0.0.0")
        out.append(
            RouteInfo(
                dst=f"{dst}/{msg['dst_len']}",
                gateway=attr(msg, "RTA_GATEWAY"),
                oif=attr(msg, "RTA_OIF"),
                proto=msg["proto"],
                scope=msg["scope"],
                prefsrc=attr(msg, "RTA_PREFSRC"),
                flags=msg["flags"],
                metric=attr(msg, "RTA_PRIORITY"),
            )
        )
    return out


def route_get(ipr: IPRoute, dst: str) -> RouteInfo | None:
    try:
        msg = ipr.route("get", dst=dst)[0]
    except NetlinkError:
        return None
    return RouteInfo(
        dst=f"{dst}/32",
        gateway=attr(msg, "RTA_GATEWAY"),
        oif=attr(msg, "RTA_OIF"),
        proto=msg["proto"],
        scope=msg["scope"],
        prefsrc=attr(msg, "RTA_PREFSRC"),
        flags=msg["flags"],
        metric=None,
    )


def link_stats(ipr: IPRoute, name: str) -> dict[str, int]:
    idx = require_index(ipr, name)
    msg = ipr.link("get", index=idx)[0]
    stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
    keys = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")
    return {k: int(stats[k]) for k in keys} if stats else {k: 0 for k in keys}


def same_network(a: str, b: str) -> bool:
    return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
