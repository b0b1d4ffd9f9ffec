"""What `crossnet trace` works on: a namespace as read (`Link`, `Route`, `Neigh`, `FdbEntry`
through the read-only `View` protocol), the endpoints and hosts of a trace, the hops and
the result; pure helpers (longest prefix match, formatting)."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol

from crossnet.netlink.const import (
    RT_SCOPE_LINK,
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
    ovs: Any = None  # OVS access for this host (crossnet.trace.ovs), None without OVS
    # where this host's Open vSwitch lives: given (--peer-ovs-rundir, the lab) or recorded
    # in its applied.json by apply; never guessed (see crossnet.trace.ovs.find_rundir)
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
    peer: str | None = None  # backend auto: the peer holding the destination
    recorded_transport: str | None = None  # backend auto: the transport crossnet records for it

    @property
    def transport(self) -> str | None:
        """How the packet crossed the underlay: wireguard / vxlan / gre / plain (None: it
        did not); backend auto names plain IP `direct`, as its connections table does."""
        kinds = [h.kind for h in self.hops]
        if "wireguard" in kinds:
            return "wireguard"
        if "vxlan" in kinds:
            return "vxlan"
        if "ovs-tunnel" in kinds:
            return "ovs-tunnel"
        if "nic" in kinds:
            return "direct" if self.backend == "auto" else "plain"
        return None

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
            **({"peer": self.peer, "recorded_transport": self.recorded_transport} if self.peer else {}),
            "tunnel": self.tunnel,
            "complete": self.complete,
            "handoff": self.handoff,
            "verified": self.verified,
            "probe": self.probe,
            "flagged": self.flagged,
            "warnings": self.warnings,
            "hops": [h.to_json() for h in self.hops],
        }
