"""The `View`s of namespaces: `KernelView` (real, read through pyroute2), `FakeView`
(plain data, for unit tests and as documentation of what is read), and the WireGuard
device state a walk or a verification reads (`wireguard_peer`)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from crossnet.netlink.const import (
    RTN_LOCAL,
)
from crossnet.trace.model import FdbEntry, HostSide, Link, Neigh, Route, lpm


# ---- a simple in-memory view (unit tests, and documentation of what is read) ----------------
class FakeView:
    def __init__(self, key: str, links: list[Link], routes: list[Route] | None = None,
                 neighs: list[tuple[int, Neigh]] | None = None, fdb: list[FdbEntry] | None = None,
                 stats: dict[str, tuple[int, int]] | None = None):
        self.key = key
        self._links = links
        self._routes = routes or []
        self._neighs = neighs or []
        self._fdb = fdb or []
        self._stats = stats or {}

    def links(self) -> list[Link]:
        return self._links

    def route_get(self, dst: str, iif: int | None = None, src: str | None = None) -> Route | None:
        for link in self._links:
            if any(a.split("/")[0] == dst for a in link.addresses):
                return Route(dst=f"{dst}/32", type=RTN_LOCAL, oif=link.index)
        r = lpm(self._routes, dst)
        return None if r is None else Route(dst=f"{dst}/32", gateway=r.gateway, oif=r.oif, type=r.type)

    def routes(self) -> list[Route]:
        return self._routes

    def neigh(self, ip: str, ifindex: int) -> Neigh | None:
        return next((n for idx, n in self._neighs if idx == ifindex and n.ip == ip), None)

    def fdb(self) -> list[FdbEntry]:
        return self._fdb

    def stats(self) -> dict[str, tuple[int, int]]:
        return dict(self._stats)

    def refresh(self) -> None:
        pass  # nothing cached


# ---- the real view ---------------------------------------------------------------------------
class KernelView:
    """A namespace read through pyroute2 (netns None = the current namespace)."""

    def __init__(self, key: str, netns: str | None = None):
        from crossnet.netlink import iproute as nl

        self.key = key
        self.netns = netns
        self._ipr = nl.open_ipr(netns)
        self._links: list[Link] | None = None

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> "KernelView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        self._links = None

    def links(self) -> list[Link]:
        from crossnet.netlink import iproute as nl

        if self._links is None:
            out = []
            for msg in self._ipr.get_links():
                idx = msg["index"]
                linkinfo = msg.get_attr("IFLA_LINKINFO")
                kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
                data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo else None
                info: dict = {}
                if data is not None:
                    try:
                        info = dict(data["attrs"])
                    except (TypeError, KeyError, ValueError):
                        info = {}
                out.append(Link(
                    index=idx, name=msg.get_attr("IFLA_IFNAME"), kind=kind, mac=msg.get_attr("IFLA_ADDRESS"),
                    master=msg.get_attr("IFLA_MASTER"), up=bool(msg["flags"] & 1), mtu=msg.get_attr("IFLA_MTU") or 0,
                    info=info, addresses=tuple(nl.addresses(self._ipr, idx)),
                ))
            self._links = out
        return self._links

    def route_get(self, dst: str, iif: int | None = None, src: str | None = None) -> Route | None:
        from pyroute2.netlink.exceptions import NetlinkError

        kw: dict[str, Any] = {"dst": dst}
        if iif is not None:
            kw["iif"] = iif
            if src:
                kw["src"] = src
        try:
            msg = self._ipr.route("get", **kw)[0]
        except NetlinkError:
            return None
        return Route(dst=f"{dst}/32", gateway=msg.get_attr("RTA_GATEWAY"), oif=msg.get_attr("RTA_OIF"),
                     flags=msg["flags"], type=msg["type"], scope=msg["scope"], proto=msg["proto"],
                     prefsrc=msg.get_attr("RTA_PREFSRC"))

    def routes(self) -> list[Route]:
        out = []
        for msg in self._ipr.get_routes(family=socket.AF_INET, table=254):
            dst = msg.get_attr("RTA_DST") or "0.0.0.0"
            out.append(Route(dst=f"{dst}/{msg['dst_len']}", gateway=msg.get_attr("RTA_GATEWAY"),
                             oif=msg.get_attr("RTA_OIF"), flags=msg["flags"], type=msg["type"],
                             scope=msg["scope"], proto=msg["proto"], prefsrc=msg.get_attr("RTA_PREFSRC")))
        return out

    def neigh(self, ip: str, ifindex: int) -> Neigh | None:
        for msg in self._ipr.get_neighbours(family=socket.AF_INET, ifindex=ifindex):
            if msg.get_attr("NDA_DST") == ip:
                return Neigh(ip, msg.get_attr("NDA_LLADDR"), msg["state"])
        return None

    def fdb(self) -> list[FdbEntry]:
        out = []
        for msg in self._ipr.fdb("dump"):
            mac = msg.get_attr("NDA_LLADDR")
            if not mac:
                continue
            out.append(FdbEntry(mac=mac.lower(), ifindex=msg["ifindex"], master=msg.get_attr("NDA_MASTER"),
                                dst=msg.get_attr("NDA_DST"), state=msg["state"]))
        return out

    def stats(self) -> dict[str, tuple[int, int]]:
        out = {}
        for msg in self._ipr.get_links():
            st = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
            if st:
                out[msg.get_attr("IFLA_IFNAME")] = (int(st["tx_packets"]), int(st["rx_packets"]))
        return out



def wireguard_device(host: HostSide) -> str | None:
    """The WireGuard device crossnet made on `host`: backend wireguard's, and backend
    auto's (its WireGuard transport); None for the other backends."""
    if host.ctx.backend not in ("wireguard", "auto"):
        return None
    from crossnet.backends import wireguard as wgb

    return wgb.settings(host.ctx)["device"]


def wireguard_peer(host: HostSide, dev: Link, ip: str) -> tuple[Any, Any]:
    """(peer state whose allowed IPs hold `ip` or None, device state or None) of the
    WireGuard device `dev` on `host`: wireguard-go through its UAPI socket (reachable from
    any namespace), the kernel module through pyroute2 (only in the current namespace)."""
    from crossnet.wg import control, keys

    run_dir = str(keys.key_dir(host.state_dir or host.ctx.state_dir or "/var/lib/crossnet"))
    if dev.kind == "wireguard" and host.netns:
        return None, None  # genetlink of another namespace: not read (the kernel path is unit-tested only)
    ctl = control.for_device(dev.kind, dev.name, run_dir)
    if ctl is None:
        return None, None
    try:
        st = ctl.get()
    except Exception:  # noqa: BLE001 - a diagnosis tool reports what it cannot read
        return None, None
    addr = ipaddress.ip_address(ip)
    best = None
    for p in st.peers.values():
        for cidr in p.allowed_ips:
            net = ipaddress.ip_network(cidr, strict=False)
            if addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, p)
    return (best[1] if best else None), st
