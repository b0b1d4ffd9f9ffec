"""`crossnet trace SRC DST`: the path a packet from container SRC to DST takes, hop by
hop, from kernel state — and with `verify`, evidence that it really went that way.

How the path is found (every decision is the kernel's own answer, read with pyroute2):

    container netns   route get DST                  -> out dev, next hop, neighbour MAC
    veth              container side -> host side     (the container's record: host_if)
    bridge            FDB lookup of the next-hop MAC  -> own address (routed) | a port | flood
    host routing      route get DST iif <bridge>      -> vxlan device | OVS port | NIC
    vxlan             neighbour + FDB on the device   -> VTEP, vni, port; underlay route
    OVS               ofproto/trace (crossnet.trace_ovs, pluggable)
    NIC               underlay route + neighbour
    peer host         NIC rx -> decap -> route -> bridge FDB -> destination veth

The walk is generic (it follows device kinds, not backend names), so it covers bridge,
host-gw, vxlan and anything built from the same parts. Every namespace is read through
a `View`; `KernelView` is the real one, unit tests use `FakeView` with plain data.

Verification (`verify=True`): counters of every link in every namespace involved are
read before and after a bounded ping (COUNT echo requests from SRC's namespace), and
AF_PACKET taps on the underlay NICs count the probe packets by encapsulation (vxlan,
gre, plain). A hop with an expected direction ("tx" / "rx") "moved" when its counter in
that direction grew by at least the number of requests sent; a hop that did not move
is flagged.
"""

from __future__ import annotations

import ipaddress
import math
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol

from crossnet.check import netns_prefix as _netns_prefix
from crossnet.errors import ConfigError, CrossnetError
from crossnet.netlink.const import (
    NUD_FAILED,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RTN_LOCAL,
    RTNH_F_ONLINK,
)

MAX_COUNT = 1000
DEFAULT_COUNT = 20
PROBE_INTERVAL = 0.05  # seconds between echo requests (root may go below 0.2)
MAX_HOPS = 40

NUD_STATES = {
    0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY",
    0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT",
}
RTN_NAMES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
ZERO_MAC = "00:00:00:00:00:00"

# device kinds Open vSwitch uses for its ports in the kernel: internal ports of the
# userspace datapath are tap devices ("tun"), of the kernel datapath "openvswitch".
OVS_KINDS = ("openvswitch", "tun")


# ---- what a namespace looks like ---------------------------------------------------------
@dataclass
class Link:
    index: int
    name: str
    kind: str | None = None  # veth, bridge, vxlan, tun, openvswitch, None (physical/unknown)
    mac: str | None = None
    master: int | None = None
    up: bool = True
    mtu: int = 1500
    info: dict = field(default_factory=dict)  # IFLA_INFO_DATA (vxlan: IFLA_VXLAN_ID ...)
    addresses: tuple[str, ...] = ()  # "a.b.c.d/len"


@dataclass
class Route:
    dst: str  # the matching route's prefix, "0.0.0.0/0" for default
    gateway: str | None = None
    oif: int | None = None
    flags: int = 0
    type: int = 1
    scope: int = 0
    proto: int = 0
    prefsrc: str | None = None


@dataclass
class Neigh:
    ip: str
    mac: str | None
    state: int


@dataclass
class FdbEntry:
    mac: str
    ifindex: int  # the port (bridge FDB) or the vxlan device
    master: int | None = None  # the bridge (bridge FDB entries)
    dst: str | None = None  # remote VTEP (vxlan FDB entries)
    state: int = 0


class View(Protocol):
    """Read-only access to one network namespace."""

    key: str  # unique among the views of one trace (host name or container id)

    def links(self) -> list[Link]: ...
    def route_get(self, dst: str, iif: int | None = None, src: str | None = None) -> Route | None: ...
    def routes(self) -> list[Route]: ...
    def neigh(self, ip: str, ifindex: int) -> Neigh | None: ...
    def fdb(self) -> list[FdbEntry]: ...
    def stats(self) -> dict[str, tuple[int, int]]: ...  # ifname -> (tx_packets, rx_packets)
    def refresh(self) -> None: ...  # forget cached links (after --verify's probe)


def link_by(view: View, name: str | None = None, index: int | None = None) -> Link | None:
    for link in view.links():
        if (name is not None and link.name == name) or (index is not None and link.index == index):
            return link
    return None


def lpm(routes: Iterable[Route], dst: str) -> Route | None:
    """Longest-prefix match (main table, unicast/local), as the kernel would pick."""
    ip = ipaddress.ip_address(dst)
    best = None
    for r in routes:
        net = ipaddress.ip_network(r.dst, strict=False)
        if ip in net and (best is None or net.prefixlen > ipaddress.ip_network(best.dst).prefixlen):
            best = r
    return best


def matching_route(routes: list[Route], dst: str, got: Route) -> Route:
    """The table entry behind a `route get` answer (route get reports dst/32 only)."""
    ip = ipaddress.ip_address(dst)
    cands = [r for r in routes if ip in ipaddress.ip_network(r.dst, strict=False)
             and r.oif == got.oif and (r.gateway or None) == (got.gateway or None)]
    best = lpm(cands, dst)
    if best is None:
        return Route(dst=f"{dst}/32", gateway=got.gateway, oif=got.oif, flags=got.flags, type=got.type,
                     scope=got.scope, proto=got.proto, prefsrc=got.prefsrc)
    return best


def fmt_route(r: Route, devname: Callable[[int | None], str]) -> str:
    """iproute2-like text of a route entry."""
    dst = "default" if r.dst == "0.0.0.0/0" else r.dst
    if r.type != 1:
        parts = [RTN_NAMES.get(r.type, str(r.type)), dst]
    else:
        parts = [dst]
    if r.gateway:
        parts += ["via", r.gateway]
    if r.oif:
        parts += ["dev", devname(r.oif)]
    if r.flags & RTNH_F_ONLINK:
        parts.append("onlink")
    if not r.gateway and r.scope == RT_SCOPE_LINK:
        parts += ["scope", "link"]
    return " ".join(parts)


def nud_name(state: int) -> str:
    names = [n for bit, n in NUD_STATES.items() if state & bit]
    return "|".join(names) or "NONE"


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


# ---- the trace model -------------------------------------------------------------------------
@dataclass
class Endpoint:
    """A container (id, netns, host side veth) or a plain address."""

    id: str
    address: str
    host: str | None = None  # the crossnet host it is attached to (None: unknown / external)
    netns: str | None = None
    host_if: str | None = None
    ifname: str = "eth0"
    mac: str | None = None

    @property
    def is_container(self) -> bool:
        return self.netns is not None


@dataclass
class HostSide:
    """One crossnet host: its context (applied.json), backend and kernel view."""

    name: str
    ctx: Any  # crossnet.backends.base.HostContext
    backend: Any  # crossnet.backends.base.Backend
    view: View
    containers: list[Endpoint] = field(default_factory=list)
    netns: str | None = None  # the host's namespace name when known (lab), for display
    state_dir: str | None = None
    ovs: Any = None  # OVS access for this host (crossnet.trace_ovs), None without OVS
    # where this host's Open vSwitch lives: given (--peer-ovs-rundir, the lab) or recorded
    # in its applied.json by apply; never guessed (see crossnet.trace_ovs.find_rundir)
    ovs_rundir: str | None = None


@dataclass
class Hop:
    host: str
    device: str | None
    kind: str  # veth | bridge | vxlan | ovs | ovs-tunnel | route | nic
    detail: str
    netns: str | None = None  # container id for hops inside a container namespace
    expect: str | None = None  # "tx" / "rx": the direction a probe must move; None: no counter
    tx_delta: int | None = None
    rx_delta: int | None = None
    moved: bool | None = None
    capture: dict | None = None  # probe packets seen on an underlay NIC by encapsulation
    note: str | None = None  # why a hop is flagged, or a caveat
    extra: dict | None = None  # step-specific facts (OVS: matched rules, datapath actions)
    counter: tuple[str, str] | None = None  # (counter source key, name): kernel view key or "ovs:<host>"

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("counter")
        return d


@dataclass
class Packet:
    """What the walk carries along: addresses, the current L2 destination, encapsulation."""

    src: str
    dst: str
    mac: str | None = None  # destination MAC of the frame at this point
    smac: str | None = None  # source MAC of the frame at this point
    nexthop: str | None = None  # the IP whose MAC `mac` is
    encap: dict | None = None  # {"type": "vxlan", "vni":.., "port":.., "remote":.., "local":..}
    outer_dst: str | None = None  # underlay address the packet is sent to


@dataclass
class TraceResult:
    src: Endpoint
    dst: Endpoint
    backend: str
    hops: list[Hop]
    tunnel: str | None = None
    complete: bool = False  # the walk reached the destination
    handoff: str | None = None  # the walk stopped where the packet leaves the visible hosts
    verified: bool = False
    probe: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def transport(self) -> str | None:
        """How the packet crossed the underlay: wireguard / vxlan / gre / plain (None: it did not)."""
        kinds = [h.kind for h in self.hops]
        if "wireguard" in kinds:
            return "wireguard"
        if "vxlan" in kinds:
            return "vxlan"
        if "ovs-tunnel" in kinds:
            return "ovs-tunnel"
        return "plain" if "nic" in kinds else None

    @property
    def flagged(self) -> list[int]:
        return [i for i, h in enumerate(self.hops, 1) if h.moved is False]

    def to_json(self) -> dict:
        return {
            "src": self.src.id,
            "dst": self.dst.id,
            "src_address": self.src.address,
            "dst_address": self.dst.address,
            "src_host": self.src.host,
            "dst_host": self.dst.host,
            "backend": self.backend,
            "transport": self.transport,
            "tunnel": self.tunnel,
            "complete": self.complete,
            "handoff": self.handoff,
            "verified": self.verified,
            "probe": self.probe,
            "flagged": self.flagged,
            "warnings": self.warnings,
            "hops": [h.to_json() for h in self.hops],
        }


class Walker:
    """Builds the hop list by following the kernel's decisions, device by device."""

    def __init__(self, src: Endpoint, dst: Endpoint, hosts: dict[str, HostSide],
                 container_views: dict[str, View], ovs_tracer: Any = None):
        self.src = src
        self.dst = dst
        self.hosts = hosts
        self.cviews = container_views
        self.hops: list[Hop] = []
        self.complete = False
        self.tunnel: str | None = None
        self.warnings: list[str] = []
        self.ovs = ovs_tracer
        self.handoff: str | None = None  # where the walk left the hosts visible here
        self._steps = 0

    # -- helpers ----------------------------------------------------------------------------
    def add(self, hop: Hop) -> Hop:
        self.hops.append(hop)
        return hop

    def _budget(self) -> bool:
        self._steps += 1
        if self._steps > MAX_HOPS:
            self.warnings.append(f"stopped after {MAX_HOPS} steps (forwarding loop?)")
            return False
        return True

    @staticmethod
    def _devname(view: View) -> Callable[[int | None], str]:
        def name(idx: int | None) -> str:
            link = link_by(view, index=idx) if idx else None
            return link.name if link else f"if{idx}"

        return name

    def host_of_address(self, ip: str) -> HostSide | None:
        """The host whose underlay address (or any address) is `ip`."""
        for h in self.hosts.values():
            if str(h.ctx.address) == ip:
                return h
        for h in self.hosts.values():
            for link in h.view.links():
                if any(a.split("/")[0] == ip for a in link.addresses):
                    return h
        return None

    @staticmethod
    def _peer_of_gateway(host: HostSide, ip: str | None) -> Any:
        if not ip:
            return None
        for p in host.ctx.peers:
            try:
                if p.subnet.num_addresses > 2 and str(next(p.subnet.hosts())) == ip:
                    return p
            except (AttributeError, StopIteration):
                continue
        return None

    def _is_peer_gateway(self, host: HostSide, ip: str) -> bool:
        return self._peer_of_gateway(host, ip) is not None

    def _peer_gateway_mac(self, host: HostSide, ip: str | None) -> str | None:
        """The MAC of a peer's container gateway when the backend derives it (`gw_mac`)."""
        peer = self._peer_of_gateway(host, ip)
        if peer is None or host.backend is None:
            return None
        mac = host.backend.gw_mac(host.ctx, peer)
        return mac.lower() if mac else None

    def container_on_port(self, host: HostSide, port: str) -> Endpoint | None:
        return next((c for c in host.containers if c.host_if == port), None)

    def _nic(self, host: HostSide) -> str:
        return host.ctx.iface

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> list[Hop]:
        src_host = self.hosts.get(self.src.host or "")
        cview = self.cviews.get(self.src.id)
        if src_host is None or cview is None:
            raise CrossnetError(f"trace: cannot read the namespaces of {self.src.id}")
        pkt = Packet(src=self.src.address, dst=self.dst.address)
        r = cview.route_get(pkt.dst)
        if r is None or r.type not in (1, RTN_LOCAL):
            what = "no route" if r is None else RTN_NAMES.get(r.type, str(r.type))
            self.add(Hop(src_host.name, None, "route", f"{what} to {pkt.dst} in {self.src.id}", netns=self.src.id,
                         note="the container cannot send to this address"))
            return self.hops
        if r.type == RTN_LOCAL:
            self.add(Hop(src_host.name, "lo", "route", f"{pkt.dst} is the container's own address", netns=self.src.id))
            self.complete = True
            return self.hops
        entry = matching_route(cview.routes(), pkt.dst, r)
        out = link_by(cview, index=r.oif)
        nh = r.gateway or pkt.dst
        n = cview.neigh(nh, r.oif) if r.oif else None
        pkt.nexthop, pkt.mac = nh, (n.mac.lower() if n and n.mac else None)
        pkt.smac = (out.mac.lower() if out and out.mac else None) or (self.src.mac.lower() if self.src.mac else None)
        self.add(Hop(src_host.name, out.name if out else None, "route",
                     f"route {fmt_route(entry, self._devname(cview))}; " + self._neigh_text(nh, n),
                     netns=self.src.id))
        host_if = self.src.host_if
        self.add(Hop(src_host.name, out.name if out else self.src.ifname, "veth",
                     f"container side of the veth, peer {host_if or '?'} on {src_host.name}",
                     netns=self.src.id, expect="tx", counter=(cview.key, out.name if out else self.src.ifname)))
        hl = link_by(src_host.view, name=host_if) if host_if else None
        if hl is None:
            self.add(Hop(src_host.name, host_if, "veth", "host side of the veth not found on the host",
                         note="container not attached (run crossnet attach)"))
            return self.hops
        master = link_by(src_host.view, index=hl.master) if hl.master else None
        ovs_br = self.ovs.bridge_of(src_host, hl.name) if self.ovs is not None and master is None else None
        where = (f"port of {master.kind or 'device'} {master.name}" if master
                 else f"port of OVS bridge {ovs_br}" if ovs_br else "no master")
        self.add(Hop(src_host.name, hl.name, "veth", f"host side of {self.src.id}'s veth ({where})",
                     expect="rx", counter=(src_host.view.key, hl.name)))
        self.ingress(src_host, hl, pkt)
        return self.hops

    @staticmethod
    def _neigh_text(ip: str, n: Neigh | None) -> str:
        if n is None or not n.mac or n.state & NUD_FAILED:
            state = nud_name(n.state) if n else "no entry"
            return f"neighbour {ip}: not resolved ({state}; the first packet sends ARP)"
        return f"neighbour {ip} lladdr {n.mac.lower()} {nud_name(n.state)}"

    def ingress(self, host: HostSide, link: Link, pkt: Packet) -> None:
        """A frame arrived on `link` in `host`: bridge port, OVS port, or routed."""
        if not self._budget():
            return
        if link.master:
            master = link_by(host.view, index=link.master)
            if master is not None and master.kind == "bridge":
                self.bridge(host, master, pkt, from_port=link)
                return
            if master is not None and master.kind == "openvswitch":  # kernel datapath (ovs-system)
                self.ovs_step(host, link.name, pkt)
                return
        if self.ovs is not None and self.ovs.owns_port(host, link.name):
            self.ovs_step(host, link.name, pkt)
            return
        self.route(host, link, pkt)

    def bridge(self, host: HostSide, br: Link, pkt: Packet, from_port: Link | None) -> None:
        """A Linux bridge forwards by destination MAC: own address -> up to routing."""
        v = host.view
        local_ips = {a.split("/")[0] for a in br.addresses}
        predicted = None
        if pkt.mac is None:
            # neighbour not resolved yet: a container crossnet attached here has a known MAC
            known = next((c for c in host.containers if c.address == (pkt.nexthop or pkt.dst) and c.mac), None)
            if known is not None:
                pkt.mac = predicted = known.mac.lower()
            else:  # a peer's gateway whose MAC the backend derives (ovs: gw_mac)
                predicted = self._peer_gateway_mac(host, pkt.nexthop or pkt.dst)
                pkt.mac = predicted
        mac = pkt.mac
        entry = None
        if mac:
            entry = next((e for e in v.fdb() if e.master == br.index and e.mac == mac), None)
        is_local = (mac is not None and br.mac is not None and mac == br.mac.lower()) or (
            entry is not None and entry.state & NUD_PERMANENT and from_port is not None) or (
            mac is None and pkt.nexthop in local_ips)
        if from_port is not None and is_local:
            why = f"fdb {mac} is {br.name}'s own address" if mac else f"next hop {pkt.nexthop} is {br.name}'s address"
            self.add(Hop(host.name, br.name, "bridge", f"{why} → delivered to the host, routed",
                         expect="rx", counter=(v.key, br.name)))
            self.route(host, br, pkt)
            return
        if from_port is not None:
            prefix = ""
        elif predicted:
            prefix = (f"neighbour {pkt.nexthop or pkt.dst}: not resolved yet (ARP on the first packet); "
                      f"its MAC per crossnet is {predicted}; ")
        else:
            prefix = self._neigh_text(pkt.nexthop or pkt.dst, Neigh(pkt.nexthop or pkt.dst, mac, 0x02) if mac
                                      else None) + "; "
        expect = None if from_port is not None else "tx"  # forwarded frames do not count on the bridge device
        counter = (v.key, br.name) if expect else None
        if entry is None:
            ports = [link for link in v.links() if link.master == br.index and link is not from_port]
            text = f"{prefix}no fdb entry for {mac or 'the next hop'}: flooded to {len(ports)} port(s)"
            # where the destination is, when crossnet knows: a local container's port, else the NIC
            target = next((c for c in host.containers if (mac and c.mac and c.mac.lower() == mac)
                           or c.address == (pkt.nexthop or pkt.dst)), None)
            port = next((p for p in ports if target is not None and p.name == target.host_if), None)
            if port is None and pkt.nexthop and self._is_peer_gateway(host, pkt.nexthop):
                # towards a peer: the port into the tunnel (an OVS port or a vxlan device)
                port = next((p for p in ports if p.kind in OVS_KINDS or p.kind == "vxlan"), None)
            if port is None:
                port = next((p for p in ports if p.name == self._nic(host)), None)
            if port is not None:
                text += f", among them {port.name}"
            self.add(Hop(host.name, br.name, "bridge", text, expect=expect, counter=counter,
                         note="destination MAC not learned yet (learned from the first reply)"))
            if port is not None:
                self.egress_port(host, port, pkt)
            return
        port = link_by(v, index=entry.ifindex)
        self.add(Hop(host.name, br.name, "bridge", f"{prefix}fdb {mac} → port {port.name if port else entry.ifindex}",
                     expect=expect, counter=counter))
        if port is not None:
            self.egress_port(host, port, pkt)

    def egress_port(self, host: HostSide, port: Link, pkt: Packet) -> None:
        if not self._budget():
            return
        if port.kind == "vxlan":
            self.vxlan(host, port, pkt)
            return
        if port.kind in OVS_KINDS or (self.ovs is not None and self.ovs.owns_port(host, port.name)):
            self.ovs_step(host, port.name, pkt)
            return
        if port.name == self._nic(host):
            self.nic_out(host, port, pkt, plain=True)
            return
        c = self.container_on_port(host, port.name)
        if port.kind == "veth" and c is not None:
            self.deliver(host, port, c)
            return
        # a veth of something crossnet does not know, or another port
        self.add(Hop(host.name, port.name, "veth" if port.kind == "veth" else "nic", f"out of {port.name}",
                     expect="tx", counter=(host.view.key, port.name), note="not a port crossnet knows"))

    def deliver(self, host: HostSide, port: Link, c: Endpoint) -> None:
        self.add(Hop(host.name, port.name, "veth", f"host side of {c.id}'s veth", expect="tx",
                     counter=(host.view.key, port.name)))
        cview = self.cviews.get(c.id)
        if cview is not None:
            self.add(Hop(host.name, c.ifname, "veth", f"{c.id} receives ({c.address})", netns=c.id, expect="rx",
                         counter=(cview.key, c.ifname)))
        if c.address == self.dst.address:
            self.complete = True

    def route(self, host: HostSide, iif: Link, pkt: Packet) -> None:
        """IP forwarding in a host namespace (input route lookup on `iif`)."""
        if not self._budget():
            return
        v = host.view
        r = v.route_get(pkt.dst, iif=iif.index, src=pkt.src)
        note = None
        if r is None:
            r = v.route_get(pkt.dst)
            note = f"input route lookup from {iif.name} failed (rp_filter?); output lookup shown"
        if r is None or r.type not in (1, RTN_LOCAL):
            what = "no route" if r is None else RTN_NAMES.get(r.type, str(r.type))
            self.add(Hop(host.name, iif.name, "route", f"{what} to {pkt.dst} on {host.name}", note=note or "dropped"))
            return
        if r.type == RTN_LOCAL:
            owner = next((link for link in v.links() if any(a.split("/")[0] == pkt.dst for a in link.addresses)),
                         None) or (link_by(v, index=r.oif) if r.oif else None)
            self.add(Hop(host.name, owner.name if owner else None, "route",
                         f"local: {pkt.dst} is an address of {host.name} (delivered to the host)", note=note))
            if pkt.dst == self.dst.address:
                self.complete = True
            return
        entry = matching_route(v.routes(), pkt.dst, r)
        out = link_by(v, index=r.oif)
        nh = r.gateway or pkt.dst
        self.add(Hop(host.name, out.name if out else None, "route", f"route {fmt_route(entry, self._devname(v))}",
                     note=note))
        if out is None:
            return
        pkt.nexthop = nh
        pkt.smac = out.mac.lower() if out.mac else pkt.smac
        if out.kind == "bridge":
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.bridge(host, out, pkt, from_port=None)
        elif out.kind == "vxlan":
            self.vxlan(host, out, pkt)
        elif self._is_wireguard(host, out):
            self.wireguard(host, out, pkt)
        elif out.kind in OVS_KINDS or (self.ovs is not None and self.ovs.owns_port(host, out.name)):
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.ovs_step(host, out.name, pkt)
        else:
            n = v.neigh(nh, out.index)
            pkt.mac = n.mac.lower() if n and n.mac else None
            self.nic_out(host, out, pkt, plain=True, neigh=(nh, n))

    def vxlan(self, host: HostSide, dev: Link, pkt: Packet) -> None:
        v = host.view
        parts = []
        if pkt.mac is None or dev.master is None:
            n = v.neigh(pkt.nexthop or pkt.dst, dev.index)
            if dev.master is None:  # routed into the device: the neighbour entry gives the VTEP MAC
                pkt.mac = n.mac.lower() if n and n.mac else None
                parts.append(self._neigh_text(pkt.nexthop or pkt.dst, n))
        entries = [e for e in v.fdb() if e.ifindex == dev.index and e.master is None and e.dst]
        hit = [e for e in entries if e.mac == pkt.mac] or [e for e in entries if e.mac == ZERO_MAC]
        vni = dev.info.get("IFLA_VXLAN_ID")
        port = dev.info.get("IFLA_VXLAN_PORT") or 4789
        local = dev.info.get("IFLA_VXLAN_LOCAL")
        self.tunnel = self.tunnel or dev.name
        if not hit:
            parts.append(f"no fdb entry for {pkt.mac or 'the destination'}: nowhere to send it")
            self.add(Hop(host.name, dev.name, "vxlan", "; ".join(parts), expect="tx", counter=(v.key, dev.name),
                         note="dropped: missing FDB entry"))
            return
        remote = hit[0].dst
        default = hit[0].mac == ZERO_MAC
        parts.append(f"fdb {'00:00:00:00:00:00 (default)' if default else hit[0].mac} dst {remote}"
                     + (f" (+{len(hit) - 1} more)" if len(hit) > 1 else ""))
        parts.append(f"encap vxlan vni {vni} → {remote}:{port}")
        self.add(Hop(host.name, dev.name, "vxlan", "; ".join(parts), expect="tx", counter=(v.key, dev.name)))
        pkt.encap = {"type": "vxlan", "vni": vni, "port": port, "remote": remote, "local": local, "device": dev.name}
        self.underlay(host, remote, pkt, lower=dev.info.get("IFLA_VXLAN_LINK"))

    @staticmethod
    def _is_wireguard(host: HostSide, link: Link) -> bool:
        return link.kind == "wireguard" or (
            host.ctx.backend == "wireguard" and link.name == host.backend.tunnel_device(host.ctx))

    def wireguard(self, host: HostSide, dev: Link, pkt: Packet) -> None:
        """Routed into a WireGuard device: the peer whose allowed IPs hold the destination
        (read from the device: UAPI `get=1` or the kernel), its endpoint, counters."""
        peer, st = wireguard_peer(host, dev, pkt.dst)
        self.tunnel = self.tunnel or dev.name
        if peer is None:
            why = "device not readable" if st is None else f"no peer's allowed-ips hold {pkt.dst}"
            self.add(Hop(host.name, dev.name, "wireguard", f"{why}: WireGuard drops it", expect="tx",
                         counter=(host.view.key, dev.name), note="dropped: no WireGuard peer"))
            return
        name = next((p.name for p in host.ctx.peers if p.data.get("wireguard_key") == peer.public_key), "?")
        age = f"{time.time() - peer.last_handshake:.0f}s ago" if peer.last_handshake else "never"
        remote, _, port = (peer.endpoint or "?:0").rpartition(":")
        self.add(Hop(host.name, dev.name, "wireguard",
                     f"peer {name} ({peer.public_key[:8]}…) allowed-ips {','.join(peer.allowed_ips)}; "
                     f"encrypt → {peer.endpoint}; last handshake {age}; rx {peer.rx_bytes} B tx {peer.tx_bytes} B",
                     expect="tx", counter=(host.view.key, dev.name),
                     extra={"transport": "wireguard", "peer": name, "public_key": peer.public_key,
                            "endpoint": peer.endpoint, "rx_bytes": peer.rx_bytes, "tx_bytes": peer.tx_bytes,
                            "last_handshake": peer.last_handshake}))
        pkt.encap = {"type": "wireguard", "port": int(port or 0), "remote": remote,
                     "local": str(host.ctx.address), "device": dev.name}
        self.underlay(host, remote, pkt)

    def underlay(self, host: HostSide, remote: str, pkt: Packet, lower: int | None = None) -> None:
        """Encapsulated packet to `remote`: underlay route and NIC."""
        v = host.view
        r = v.route_get(remote)
        if r is None or r.oif is None:
            self.add(Hop(host.name, None, "route", f"no underlay route to {remote}", note="dropped"))
            return
        entry = matching_route(v.routes(), remote, r)
        out = link_by(v, index=r.oif)
        nh = r.gateway or remote
        n = v.neigh(nh, r.oif)
        pkt.outer_dst = remote
        detail = f"underlay route {fmt_route(entry, self._devname(v))}; {self._neigh_text(nh, n)}"
        if out is not None and out.kind == "bridge" and out.name != self._nic(host):
            # the underlay address lives on a bridge (bridge backend: br0 holds the NIC)
            self.add(Hop(host.name, out.name, "bridge", detail, expect="tx", counter=(v.key, out.name)))
            nic = link_by(v, name=self._nic(host))
            if nic is not None:
                self.nic_out(host, nic, pkt, plain=False)
            return
        self.add(Hop(host.name, out.name if out else None, "route", detail))
        if out is not None:
            self.nic_out(host, out, pkt, plain=False)

    def nic_out(self, host: HostSide, nic: Link, pkt: Packet, plain: bool,
                neigh: tuple[str, Neigh | None] | None = None) -> None:
        if plain:
            pkt.outer_dst = pkt.nexthop
            what = f"plain IP, no tunnel: {pkt.src} → {pkt.dst}"
            if neigh is not None:
                what += f"; {self._neigh_text(*neigh)}"
        else:
            e = pkt.encap or {}
            what = f"{e.get('type', 'encapsulated')} to {pkt.outer_dst}" + (
                f" udp/{e['port']}" if e.get("type") in ("vxlan", "wireguard") else "")
        self.add(Hop(host.name, nic.name, "nic", f"underlay NIC: {what}", expect="tx", counter=(host.view.key, nic.name)))
        self.remote(host, pkt)

    def remote(self, host: HostSide, pkt: Packet) -> None:
        """Continue on the host that receives the packet from the underlay."""
        target = None
        if pkt.encap and pkt.encap.get("remote"):
            target = self.host_of_address(pkt.encap["remote"])
        elif pkt.outer_dst:
            target = self.host_of_address(pkt.outer_dst)
        if target is None and self.dst.host and self.dst.host in self.hosts and self.dst.host != host.name:
            target = self.hosts[self.dst.host]
        if target is None or target is host:
            where = pkt.encap.get("remote") if pkt.encap else (pkt.outer_dst or pkt.dst)
            self.handoff = self.dst.host or where
            if self.dst.host and self.dst.host != host.name:
                self.add(Hop(self.dst.host, None, "nic",
                             f"continues on {self.dst.host} ({where}); its kernel state is not visible here",
                             note="follow it with --peer-state-dir/--peer-netns, or `crossnet lab trace`"))
            else:
                self.add(Hop(host.name, None, "nic", f"leaves {host.name} towards {where} (outside the hosts known here)"))
            return
        nic = link_by(target.view, name=self._nic(target))
        if nic is None:
            self.add(Hop(target.name, target.ctx.iface, "nic", "underlay NIC not found", note="missing"))
            return
        e = pkt.encap or {}
        how = f"{e['type']} from {e.get('local') or self.hosts[self.src.host].ctx.address}" if e else "plain IP"
        self.add(Hop(target.name, nic.name, "nic", f"underlay NIC receives: {how}", expect="rx",
                     counter=(target.view.key, nic.name)))
        dev = None
        if e.get("type") == "vxlan":
            dev = next((link for link in target.view.links() if link.kind == "vxlan"
                        and link.info.get("IFLA_VXLAN_ID") == e.get("vni")
                        and (link.info.get("IFLA_VXLAN_PORT") or 4789) == (e.get("port") or 4789)), None)
        if e and dev is None and self.ovs is not None and (self.ovs.owns_port(target, nic.name)
                                                            or not e.get("device")):
            self.ovs.ingress(self, target, nic, pkt)
            return
        if e.get("type") == "wireguard":
            wdev = target.backend.tunnel_device(target.ctx) if target.ctx.backend == "wireguard" else None
            wl = link_by(target.view, name=wdev) if wdev else None
            if wl is None:
                self.add(Hop(target.name, None, "wireguard", "no WireGuard device here",
                             note="dropped: nothing decrypts it"))
                return
            peer, _st = wireguard_peer(target, wl, pkt.src)
            who = f"peer {peer.endpoint} ({peer.public_key[:8]}…)" if peer else "an unknown peer"
            self.add(Hop(target.name, wl.name, "wireguard",
                         f"decrypt from {who}, source {pkt.src} checked against its allowed-ips",
                         expect="rx", counter=(target.view.key, wl.name),
                         extra={"transport": "wireguard", "rx_bytes": peer.rx_bytes if peer else None,
                                "tx_bytes": peer.tx_bytes if peer else None,
                                "last_handshake": peer.last_handshake if peer else None}))
            pkt.encap = None
            pkt.mac = None
            self.ingress(target, wl, pkt)
            return
        if e.get("type") == "vxlan":
            if dev is None:
                self.add(Hop(target.name, None, "vxlan", f"no vxlan device for vni {e.get('vni')} port {e.get('port')}",
                             note="dropped: nothing decapsulates it"))
                return
            self.add(Hop(target.name, dev.name, "vxlan", f"decap vxlan vni {e.get('vni')} (from {e.get('local')})",
                         expect="rx", counter=(target.view.key, dev.name)))
            pkt.encap = None
            pkt.mac = dev.mac.lower() if dev.mac and dev.master is None else pkt.mac
            self.ingress(target, dev, pkt)
            return
        if e:
            self.add(Hop(target.name, None, "nic", f"nothing here decapsulates {e.get('type')}",
                         note="dropped (no matching tunnel)"))
            return
        self.ingress(target, nic, pkt)

    def ovs_step(self, host: HostSide, port: str, pkt: Packet) -> None:
        if self.ovs is None:
            self.add(Hop(host.name, port, "ovs", f"{port} belongs to Open vSwitch; no OVS tracer available here",
                         note="cannot follow OVS (ovs-appctl missing or OVS not reachable)"))
            return
        self.ovs.egress(self, host, port, pkt)


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


def wireguard_counters(host: HostSide) -> dict[str, tuple[int, int]]:
    """{peer public key: (tx_bytes, rx_bytes)} of the host's WireGuard device."""
    dev = link_by(host.view, name=host.backend.tunnel_device(host.ctx))
    if dev is None:
        return {}
    _peer, st = wireguard_peer(host, dev, "0.0.0.0")
    return {k: (p.tx_bytes, p.rx_bytes) for k, p in st.peers.items()} if st else {}


def wireguard_deltas(hops: list[Hop], before: dict, after: dict) -> None:
    """The probe's share of each WireGuard peer's byte counters (from `get=1`)."""
    for h in hops:
        key = (h.extra or {}).get("public_key") if h.kind == "wireguard" else None
        b = before.get(f"wg:{h.host}", {}).get(key) if key else None
        a = after.get(f"wg:{h.host}", {}).get(key) if key else None
        if a is not None and b is not None:
            h.extra["tx_bytes_delta"], h.extra["rx_bytes_delta"] = a[0] - b[0], a[1] - b[1]


# ---- probe packets on the underlay (AF_PACKET) ------------------------------------------------
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_TEB = 0x6558
PACKET_OUTGOING = 4


def _ipv4(frame: bytes, off: int) -> tuple[int, str, str, int] | None:
    """(proto, src, dst, payload offset) of the IPv4 header at `off`."""
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0x0F) * 4
    return frame[off + 9], socket.inet_ntoa(frame[off + 12:off + 16]), socket.inet_ntoa(frame[off + 16:off + 20]), off + ihl


def _eth(frame: bytes, off: int) -> int | None:
    """Offset of the L3 header of the Ethernet frame at `off` when it carries IPv4."""
    if len(frame) < off + 14:
        return None
    etype = struct.unpack("!H", frame[off + 12:off + 14])[0]
    off += 14
    if etype == ETH_P_8021Q and len(frame) >= off + 4:
        etype = struct.unpack("!H", frame[off + 2:off + 4])[0]
        off += 4
    return off if etype == ETH_P_IP else None


def _is_probe(frame: bytes, off: int, src: str, dst: str) -> bool:
    ip = _ipv4(frame, off)
    if ip is None:
        return False
    proto, s, d, pl = ip
    return proto == 1 and s == src and d == dst and len(frame) > pl and frame[pl] == 8  # ICMP echo request


def classify_frame(frame: bytes, src: str, dst: str, vxlan_ports: Iterable[int] = (4789, 8472),
                   wireguard_ports: Iterable[int] = ()) -> str | None:
    """What an underlay frame is with respect to a probe src → dst (ICMP echo request):
    "vxlan" / "gre" (the probe encapsulated), "plain" (the probe itself), "wireguard" (a
    WireGuard transport-data datagram to one of `wireguard_ports`: encrypted, so it may
    be the probe or other traffic of the same tunnel), None (unrelated)."""
    off = _eth(frame, 0)
    if off is None:
        return None
    if _is_probe(frame, off, src, dst):
        return "plain"
    ip = _ipv4(frame, off)
    if ip is None:
        return None
    proto, _s, _d, pl = ip
    if proto == 17 and len(frame) >= pl + 16:
        dport = struct.unpack("!H", frame[pl + 2:pl + 4])[0]
        if dport in set(wireguard_ports) and frame[pl + 8] == 4:  # message type 4: transport data
            return "wireguard"
        if dport in set(vxlan_ports):
            inner = _eth(frame, pl + 16)
            if inner is not None and _is_probe(frame, inner, src, dst):
                return "vxlan"
        return None
    if proto == 47 and len(frame) >= pl + 4:
        flags, gproto = struct.unpack("!HH", frame[pl:pl + 4])
        hlen = 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
        if gproto == ETH_P_TEB:
            inner = _eth(frame, pl + hlen)
        elif gproto == ETH_P_IP:
            inner = pl + hlen
        else:
            return None
        if inner is not None and _is_probe(frame, inner, src, dst):
            return "gre"
    return None


class NicTap:
    """Counts probe packets by encapsulation on one interface of one namespace while
    the probe runs (a thread reading an AF_PACKET socket; stopped by `stop()`)."""

    def __init__(self, netns: str | None, ifname: str, direction: str, src: str, dst: str,
                 vxlan_ports: Iterable[int] = (4789, 8472), wireguard_ports: Iterable[int] = ()):
        self.netns, self.ifname, self.direction = netns, ifname, direction
        self.src, self.dst = src, dst
        self.ports = tuple(vxlan_ports)
        self.wg_ports = tuple(wireguard_ports)
        self.counts = {"vxlan": 0, "gre": 0, "plain": 0}
        if self.wg_ports:
            self.counts["wireguard"] = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from crossnet.check import socket_in_netns

        try:
            self._sock = socket_in_netns(self.netns or "", socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self._sock.bind((self.ifname, ETH_P_ALL))
            self._sock.setblocking(False)
        except OSError as exc:
            self.error = f"cannot capture on {self.ifname}: {exc.strerror or exc}"
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            return
        self._thread = threading.Thread(target=self._run, name=f"crossnet-tap-{self.ifname}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while True:
            r, _, _ = select.select([self._sock], [], [], 0.05)
            if not r:
                if self._stop.is_set():
                    return
                continue
            while True:
                try:
                    data, addr = self._sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:
                    return
                outgoing = addr[2] == PACKET_OUTGOING
                if outgoing != (self.direction == "tx"):
                    continue
                kind = classify_frame(data, self.src, self.dst, self.ports, self.wg_ports)
                if kind:
                    self.counts[kind] += 1

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        return dict(self.counts)


# ---- the probe -------------------------------------------------------------------------------
def send_probe(netns: str | None, dst: str, count: int, interval: float = PROBE_INTERVAL,
               timeout: float = 1.0) -> dict:
    """COUNT echo requests from `netns` to `dst`, bounded in number and time."""
    count = max(1, min(int(count), MAX_COUNT))
    deadline = math.ceil(count * interval + timeout + 1)
    if shutil.which("ping"):
        # no -w: with -w, -c counts replies and ping keeps sending until the deadline
        argv = [*_netns_prefix(netns), "ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}",
                "-W", f"{timeout:g}", dst]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=deadline + 5, check=False)
        except subprocess.TimeoutExpired:
            return {"sent": count, "received": 0, "error": "ping timed out"}
        import re

        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", proc.stdout)
        if m:
            return {"sent": int(m.group(1)), "received": int(m.group(2)), "method": "ping"}
        return {"sent": 0, "received": 0, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or None}
    from crossnet.check import Endpoint as CEndpoint
    from crossnet.check import probe

    received = 0
    for _ in range(count):
        ok, _rtt, _err = probe(CEndpoint("src", netns or "", dst), dst, count=1, timeout=timeout, method="icmp")
        received += int(ok)
    return {"sent": count, "received": received, "method": "icmp"}


# ---- verification ----------------------------------------------------------------------------
CounterSource = Callable[[], dict[str, tuple[int, int]]]


def apply_deltas(hops: list[Hop], before: dict[str, dict[str, tuple[int, int]]],
                 after: dict[str, dict[str, tuple[int, int]]], sent: int) -> None:
    """Fill tx/rx deltas and `moved` of every hop with a counter (pure)."""
    for h in hops:
        if h.counter is None:
            continue
        src, name = h.counter
        b = before.get(src, {}).get(name)
        a = after.get(src, {}).get(name)
        if a is None or b is None:
            h.note = h.note or f"no counters for {name}"
            continue
        h.tx_delta, h.rx_delta = a[0] - b[0], a[1] - b[1]
        if h.expect is None:
            continue
        got = h.tx_delta if h.expect == "tx" else h.rx_delta
        h.moved = sent > 0 and got >= sent
        if not h.moved:
            h.note = (f"{h.expect} moved by {got} only, {sent} requests sent" if got > 0
                      else f"{h.expect} counter did not move: the probe did not pass here")


OVS_STATS_LAG = 1.0  # s: OVS userspace tunnel port counters trail the packets by up to ~1 s
SETTLE_MAX = 3.0


def settle(sources: dict[str, CounterSource], first_wait: float = OVS_STATS_LAG, step: float = 0.5,
           limit: float = SETTLE_MAX) -> dict[str, dict[str, tuple[int, int]]]:
    """Read counters that are updated lazily (OVS port stats) until two reads `step`
    apart agree, starting `first_wait` after the probe, for at most `limit` seconds."""
    deadline = time.monotonic() + limit
    time.sleep(first_wait)
    prev = {k: fn() for k, fn in sources.items()}
    while time.monotonic() + step <= deadline:
        time.sleep(step)
        cur = {k: fn() for k, fn in sources.items()}
        if cur == prev:
            break
        prev = cur
    return prev


def attach_captures(hops: list[Hop], taps: dict[tuple[str, str], dict]) -> None:
    for h in hops:
        if h.kind == "nic" and h.counter is not None and h.counter in taps:
            h.capture = taps[h.counter]


# ---- orchestration ---------------------------------------------------------------------------
def trace(src: Endpoint, dst: Endpoint, hosts: dict[str, HostSide], container_views: dict[str, View],
          counter_sources: dict[str, CounterSource] | None = None, verify: bool = False,
          count: int = DEFAULT_COUNT, host_netns: dict[str, str | None] | None = None,
          ovs_tracer: Any = None) -> TraceResult:
    """Trace SRC -> DST over the given views; with `verify`, probe and measure.

    counter_sources: key -> function returning {name: (tx, rx)}; defaults to every
    view's link stats (plus whatever the OVS tracer adds). host_netns: host name ->
    namespace (for the NIC taps; None = current namespace)."""
    if verify and not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"--count: must be between 1 and {MAX_COUNT}, got {count}")
    sources: dict[str, CounterSource] = {}
    for h in hosts.values():
        sources[h.view.key] = h.view.stats
    for cv in container_views.values():
        sources[cv.key] = cv.stats
    if ovs_tracer is not None:
        sources.update(ovs_tracer.counter_sources())
    for h in hosts.values():
        if h.ctx.backend == "wireguard":
            sources[f"wg:{h.name}"] = lambda h=h: wireguard_counters(h)
    sources.update(counter_sources or {})

    probe = None
    taps: dict[tuple[str, str], dict] = {}
    before = after = None
    if verify:
        host_netns = host_netns or {}
        tap_objs: list[tuple[tuple[str, str], NicTap]] = []
        ports = {4789, 8472} | {int(h.ctx.port or 4789) for h in hosts.values()}
        wg_ports = {int((h.ctx.wireguard or {}).get("port") or 51820) for h in hosts.values()
                    if h.ctx.backend == "wireguard"}
        src_host = hosts.get(src.host or "")
        if src_host is not None:
            tap_objs.append(((src_host.view.key, src_host.ctx.iface),
                             NicTap(host_netns.get(src_host.name), src_host.ctx.iface, "tx", src.address, dst.address,
                                    ports, wg_ports)))
        for h in hosts.values():
            if h is not src_host:
                tap_objs.append(((h.view.key, h.ctx.iface),
                                 NicTap(host_netns.get(h.name), h.ctx.iface, "rx", src.address, dst.address, ports,
                                        wg_ports)))
        before = {k: fn() for k, fn in sources.items()}
        for _, t in tap_objs:
            t.start()
        try:
            probe = send_probe(src.netns, dst.address, count)
            time.sleep(0.1)  # let the last replies and taps settle
        finally:
            for key, t in tap_objs:
                counts = t.stop()
                taps[key] = {"error": t.error} if t.error else counts
        after = {k: fn() for k, fn in sources.items()}
        lagging = [k for k in sources if k.startswith("ovs:")]
        if lagging:
            after.update(settle({k: sources[k] for k in lagging}))
        for v in list(hosts.values()):
            v.view.refresh()

    walker = Walker(src, dst, hosts, container_views, ovs_tracer)
    hops = walker.run()
    backend = hosts[src.host].ctx.backend if src.host in hosts else "?"
    result = TraceResult(src=src, dst=dst, backend=backend, hops=hops, tunnel=walker.tunnel,
                         complete=walker.complete, handoff=walker.handoff, warnings=walker.warnings)
    if verify and before is not None and after is not None and probe is not None:
        sent = int(probe.get("sent") or 0)
        apply_deltas(hops, before, after, sent)
        attach_captures(hops, taps)
        wireguard_deltas(hops, before, after)
        result.probe = {**probe, "count": count}
        counted = [h for h in hops if h.expect is not None and h.moved is not None]
        result.verified = ((walker.complete or walker.handoff is not None) and bool(counted)
                           and all(h.moved for h in counted) and probe.get("received", 0) > 0)
        if sent and not probe.get("received"):
            result.warnings.append(f"no reply to {sent} echo requests from {dst.address}")
    if not result.complete and result.handoff is None:
        result.warnings.append("the path could not be followed to the destination")
    return result


# ---- resolving SRC / DST on a host -----------------------------------------------------------
def container_records(state: Any) -> list[Endpoint]:
    """Containers attached on the host of state dir `state` (crossnet.state.StateDir)."""
    from crossnet.containers import list_containers
    from crossnet.host import load_context

    ctx, _ = load_context(state)
    out = []
    for c in list_containers(state):
        out.append(Endpoint(id=c["id"], address=c["address"], host=ctx.host, netns=c.get("netns"),
                            host_if=c.get("host_if"), ifname=c.get("ifname") or "eth0", mac=c.get("mac")))
    return out


def find_container(containers: list[Endpoint], spec: str) -> Endpoint | None:
    """By id, netns name or netns path (as `crossnet status` shows them)."""
    for c in containers:
        names = {c.id, c.netns or ""}
        if c.netns and c.netns.startswith("/run/netns/"):
            names.add(c.netns[len("/run/netns/"):])
        if spec in names:
            return c
    return None


def owner_of(ip: str, hosts: Iterable[Any]) -> str | None:
    """The host (HostContext list) whose container subnet holds `ip`."""
    addr = ipaddress.ip_address(ip)
    for ctx in hosts:
        if addr in ctx.subnet:
            return ctx.host
        for p in ctx.peers:
            if addr in p.subnet:
                return p.name
    return None


def resolve_dst(spec: str, pools: list[list[Endpoint]], ctxs: list[Any]) -> Endpoint:
    for cs in pools:
        c = find_container(cs, spec)
        if c is not None:
            return c
    try:
        ip = str(ipaddress.IPv4Address(spec))
    except ValueError:
        raise ConfigError(
            f"DST: {spec!r} is neither a container known here nor an IPv4 address "
            "(a container on another host needs --peer-state-dir, or use its address)") from None
    for cs in pools:
        for c in cs:
            if c.address == ip:
                return c
    return Endpoint(id=ip, address=ip, host=owner_of(ip, ctxs))


# ---- sessions: views on real hosts --------------------------------------------------------------
class Session:
    """Owns the KernelViews of one trace (closed on exit)."""

    def __init__(self) -> None:
        self.views: list[KernelView] = []

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        for v in self.views:
            try:
                v.close()
            except Exception:  # noqa: BLE001 - closing best effort
                pass

    def view(self, key: str, netns: str | None) -> KernelView:
        v = KernelView(key, netns)
        self.views.append(v)
        return v

    def host(self, state: Any, netns: str | None = None, ovs_rundir: str | None = None) -> HostSide:
        from crossnet.host import load_context

        ctx, backend = load_context(state)
        recorded = (state.load_applied() or {}).get("ovs_rundir")
        return HostSide(name=ctx.host, ctx=ctx, backend=backend, view=self.view(f"host:{ctx.host}", netns),
                        containers=container_records(state), netns=netns, state_dir=str(state.root),
                        ovs_rundir=ovs_rundir or (recorded if isinstance(recorded, str) and recorded else None))

    def containers(self, *eps: Endpoint) -> dict[str, View]:
        out: dict[str, View] = {}
        for ep in eps:
            if ep.is_container and ep.id not in out:
                out[ep.id] = self.view(f"ctr:{ep.id}", ep.netns)
        return out


def trace_hosts(src_spec: str, dst_spec: str, states: list[tuple[Any, ...]], verify: bool = False,
                count: int = DEFAULT_COUNT, make_ovs: Callable[[dict, dict], Any] | None = None) -> TraceResult:
    """Trace with the hosts given as (StateDir, netns or None[, OVS run dir or None])
    tuples; SRC is looked up in the first one (the host trace runs on), DST in all of
    them. ``make_ovs(hosts, host_netns)`` gives the OVS step (crossnet.trace_ovs.make_tracer), or None."""
    with Session() as s:
        sides = [s.host(state, netns, *rest) for state, netns, *rest in states]
        src_side = sides[0]
        src = find_container(src_side.containers, src_spec)
        if src is None:
            names = ", ".join(c.id for c in src_side.containers) or "none attached"
            raise ConfigError(f"SRC: no container {src_spec!r} on host {src_side.name} (containers: {names})")
        dst = resolve_dst(dst_spec, [h.containers for h in sides], [h.ctx for h in sides])
        if dst.id == src.id:
            raise ConfigError("DST: same container as SRC")
        hosts = {h.name: h for h in sides}
        host_netns = {h.name: h.netns for h in sides}
        cviews = s.containers(src, dst)
        ovs = make_ovs(hosts, host_netns) if make_ovs is not None else None
        return trace(src, dst, hosts, cviews, verify=verify, count=count, host_netns=host_netns, ovs_tracer=ovs)


__all__ = [
    "Link", "Route", "Neigh", "FdbEntry", "View", "FakeView", "KernelView", "Endpoint", "HostSide", "Hop",
    "Packet", "TraceResult", "Walker", "trace", "classify_frame", "apply_deltas", "send_probe", "NicTap",
    "container_records", "find_container", "Session", "trace_hosts", "resolve_dst", "owner_of", "lpm", "matching_route", "fmt_route",
]
