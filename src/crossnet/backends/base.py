"""The small protocol every data plane implements (like flannel's Backend/Network).

A backend turns a HostContext (this host + its peers, everything already computed
by config/ipam) into desired Resources. It never touches the kernel itself: the
reconciler in crossnet.plan does. Per-peer resources are separate so the agent can
add/remove one peer at a time.

`Backend` is the whole protocol: every method has a default here (a backend overrides
what it needs), so callers call them directly and never probe with getattr. Backends
subclass it, live in one module each with ``make(name) -> Backend`` and are registered
by name in crossnet.backends.BACKENDS.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from crossnet.netlink import iproute as nl
from crossnet.errors import ApplyError, CrossnetError
from crossnet.netlink.const import RT_SCOPE_LINK
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource

if TYPE_CHECKING:
    from crossnet.state import StateDir


@dataclass
class Peer:
    name: str
    address: IPv4Address  # underlay
    subnet: IPv4Network  # its container subnet (or range, bridge backend)
    data: dict = field(default_factory=dict)  # backend data published by the peer (e.g. VTEP MAC)
    transport: str = ""  # backend auto: direct / vxlan / wireguard (crossnet.transport.select); "" elsewhere


@dataclass
class HostContext:
    cluster_name: str
    backend: str
    host: str
    address: IPv4Address  # this host's underlay address
    iface: str  # underlay NIC
    subnet: IPv4Network  # this host's container subnet / range
    network: IPv4Network  # the whole container network (overlay network, or the LAN)
    gateway: IPv4Address  # containers' default gateway
    prefixlen: int  # prefix length of container addresses
    bridge: str  # container bridge
    underlay_mtu: int
    mtu: int  # container MTU (underlay minus encapsulation overhead)
    masquerade: bool
    vni: int = 1
    port: int = 4789
    nic_mac: str | None = None
    peers: list[Peer] = field(default_factory=list)
    state_dir: str = ""  # this host's state directory (backends that keep files there: wireguard)
    wireguard: dict = field(default_factory=dict)  # wireguard settings: port, device, keepalive, implementation
    auto: dict = field(default_factory=dict)  # backend auto: encrypt, probe_network
    datapath: str = "kernel"  # kernel | ebpf (routed container veths: crossnet.datapath)
    net_name: str = ""  # a named network's name (docs/networks.md); "" = the top-level network

    def to_json(self) -> dict:
        out = {k: (str(v) if isinstance(v, (IPv4Address, IPv4Network)) else v) for k, v in self.__dict__.items()}
        out["peers"] = [
            {"name": p.name, "address": str(p.address), "subnet": str(p.subnet), "data": p.data,
             **({"transport": p.transport} if p.transport else {})} for p in self.peers
        ]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "HostContext":
        d = dict(data)
        for k in ("address", "gateway"):
            d[k] = IPv4Address(d[k])
        for k in ("subnet", "network"):
            d[k] = IPv4Network(d[k])
        d["peers"] = [
            Peer(p["name"], IPv4Address(p["address"]), IPv4Network(p["subnet"]), p.get("data", {}),
                 str(p.get("transport") or "")) for p in d["peers"]
        ]
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def applied(cls, state: StateDir) -> "HostContext":
        """This host's context as last applied (``<state-dir>/applied.json``);
        CrossnetError when the host is not configured yet. (host.load_context adds the
        backend; containers uses this, so it needs nothing from crossnet.host.)"""
        applied = state.load_applied()
        if not applied:
            raise CrossnetError(f"this host is not configured yet (no {state.applied_path}); run `crossnet apply -f CLUSTER` first")
        return cls.from_json(applied["context"])


def stable_mac(*parts: object) -> str:
    """A locally administered unicast MAC derived from the parts (same input, same MAC)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class Backend(Protocol):
    # settings (class attributes, or set by make(name) for a module serving several names)
    name: str  # as registered in crossnet.backends.BACKENDS
    needs_l2: ClassVar[bool] = False  # all hosts must share one L2 segment
    overhead: int = 0  # encapsulation bytes subtracted from the underlay MTU
    key_overhead: int = 0  # more bytes a named network's own tunnel key adds (ovs-gre: the GRE key)
    description: str = ""
    required_host_data: ClassVar[tuple[str, ...]] = ()  # fields every host of a cluster file must give (wireguard_key)

    # --- what peers need to know about a host (static store: derived; etcd: published)
    def host_data(self, cluster_name: str, host: str, address: IPv4Address) -> dict:
        return {}

    def local_data(self, state_dir: str, create: bool = True) -> dict:
        """Data only this host knows (its WireGuard public key), published with host_data
        by the agent and checked against the cluster file by apply. `create`: make what is
        missing (e.g. the key); False for read-only callers (--dry-run)."""
        return {}

    def prepare_context(self, ctx: HostContext, env: Env) -> None:
        """Complete the context from facts of the live host before resources are made
        (backend auto: each peer's initial transport). Read-only."""

    def peer_device(self, ctx: HostContext) -> str | None:
        """The device this backend's routes name with a peer's address as next hop (None:
        no such route); check_underlay requires each peer to be on-link through it."""
        return None

    # --- validation against the live host (runs before anything changes)
    def check_underlay(self, ctx: HostContext, env: Env) -> None:
        if not self.needs_l2:
            return
        onlink = _onlink_lookup(env)
        dev = self.peer_device(ctx)
        want = env.index(dev) if dev else None
        for peer in ctx.peers:
            connected = onlink(peer.address)  # fast path: one route dump instead of a netlink request per peer
            if connected is not None and (want is None or connected.oif == want):
                continue
            route = nl.route_get(env.ipr, str(peer.address))
            if route is None:
                raise ApplyError(f"backend {self.name}: peer {peer.name} ({peer.address}) is unreachable from this host")
            if route.gateway:
                raise ApplyError(
                    f"backend {self.name} needs all hosts on one L2 segment, but peer {peer.name} "
                    f"({peer.address}) is reached via router {route.gateway}; use backend vxlan for an L3 underlay"
                )
            if want is not None and route.oif != want:
                # the kernel refuses "ip route add <subnet> via <address> dev <dev>" (ENETUNREACH, EINVAL)
                link = env.link(index=route.oif)
                raise ApplyError(f"backend {self.name}: peer {peer.name} ({peer.address}) is on-link through "
                                 f"{link.name if link else route.oif}, not through {dev}")

    # --- desired state
    def local_resources(self, ctx: HostContext) -> list[Resource]:
        raise NotImplementedError

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        return []

    def resources(self, ctx: HostContext) -> list[Resource]:
        out = self.local_resources(ctx)
        for peer in ctx.peers:
            out.extend(self.peer_resources(ctx, peer))
        return out

    # --- container attachment: where the host side of a container's veth goes
    def attach_port(self, ctx: HostContext, env: Env, host_if: str) -> None:
        env.ipr.link("set", index=nl.require_index(env.ipr, host_if), master=nl.require_index(env.ipr, ctx.bridge))

    def detach_port(self, ctx: HostContext, env: Env, host_if: str) -> None:
        """Undo anything attach_port did besides the veth itself (deleted by the caller)."""

    # --- tracing: the device that carries traffic to a peer
    def peer_claims(self, ctxs: Iterable[HostContext], name: str) -> list[str]:
        """What a peer named `name` takes on this host in each of `ctxs` (its networks here)
        that no other peer may take too, one line each (crossnet.store.records: the older
        record keeps it). Default: nothing beyond the name itself."""
        return []

    def tunnel_device(self, ctx: HostContext) -> str | None:
        return None

    # --- isolation (crossnet.netiso): its netdev layout hooks a network's own devices
    def ingress_devices(self, ctx: HostContext) -> list[str] | None:
        """The devices besides its bridge through which this network's packets from other
        hosts enter this host, and no other network's (vxlan: cnvx<vni>; ovs: [], its tunnel
        is a port of the bridge); None when they enter through a device networks share (the
        underlay NIC: host-gw, auto's direct peers) or when the network has no bridge
        (routed veths, datapath ebpf)."""
        return None

    def gw_mac(self, ctx: HostContext, peer: Peer | None = None) -> str | None:
        """The MAC of the container gateway of `peer` (this host's when None) when the
        backend derives it (frames reach it across the overlay at L2: ovs); None when
        it is not predictable or not on the path (routed backends)."""
        return None

    # --- the agent asks every second (keep it cheap): why the local data plane must be
    # re-programmed now (e.g. the userspace WireGuard process died), None when it is fine
    def local_broken(self, ctx: HostContext, env: Env) -> str | None:
        return None

    # --- `crossnet status`: backend-specific fields (e.g. the OVS datapath)
    def status_info(self, ctx: HostContext, env: Env) -> dict[str, Any]:
        return {}


def _onlink_lookup(env: Env):
    """address -> the most specific route to it in the main table (from the Env's one-dump
    snapshot) when that is a directly connected one (no gateway, scope link). Anything
    else (a gateway, no route, blackhole...) returns None and the caller asks the kernel
    (route_get) as before. 1,000 host-gw peers: 1.8 s of route_gets -> ms."""
    by_len: dict[int, dict[int, nl.RouteInfo]] = {}
    for r in env.routes():
        net = ipaddress.ip_network(r.dst, strict=False)
        by_len.setdefault(net.prefixlen, {}).setdefault(int(net.network_address), r)
    lens = sorted(by_len, reverse=True)

    def onlink(address: IPv4Address) -> nl.RouteInfo | None:
        a = int(address)
        for plen in lens:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            r = by_len[plen].get(a & mask)
            if r is not None:
                return r if not r.gateway and r.scope == RT_SCOPE_LINK else None
        return None

    return onlink


def gateway_mac(ctx: HostContext) -> str:
    """A fixed MAC for the container bridge: without one a Linux bridge takes a
    port's MAC, and the containers' gateway MAC would change as containers come and go."""
    return stable_mac(ctx.cluster_name, ctx.host, "gateway")


def gateway_cidr(ctx: HostContext) -> str:
    return f"{ctx.gateway}/{ctx.prefixlen}"


def first_host(net: IPv4Network) -> IPv4Address:
    return next(net.hosts()) if net.num_addresses > 2 else net.network_address


__all__ = ["Backend", "HostContext", "Peer", "stable_mac", "gateway_cidr", "gateway_mac", "first_host", "ipaddress"]
