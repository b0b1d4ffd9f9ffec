"""auto: per peer, the best transport that works (like Weave's fastdp/sleeve choice).

Every host has the container bridge, a kernel VXLAN device (`cnvx<vni>`, as backend
vxlan) and a WireGuard device (`cnwg0`, as backend wireguard). Each peer carries the
transport chosen for it (`Peer.transport`, see crossnet.transport.select: direct when
its underlay address is on a subnet connected to this host's NIC, else vxlan, and
wireguard when vxlan does not get through; with ``auto.encrypt: true`` wireguard
only); its container subnet is routed over that one:

    direct:     ip route replace <subnet> via <peer underlay> dev <nic>
    vxlan:      ip route replace <subnet> via <subnet .0> dev cnvx<vni> onlink
    wireguard:  ip route replace <subnet> dev cnwg0

Whatever the choice, every transport a peer may use stays programmed with a probe
address that only it reaches, so the prober can tell which ones work:

* vxlan: the peer's subnet .0 (on its cnvx device, as backend vxlan has it), reached
  through ``<subnet .0>/32 dev cnvx<vni>`` (+ its FDB and neighbour entries);
* wireguard: the peer's address in ``auto.probe_network`` (default 198.18.0.0/15,
  RFC 2544's benchmarking block: the host's subnet index + 1) on its cnwg0 device,
  reached through ``<probe>/32 dev cnwg0`` (allowed-ips: its subnet and that /32);
* direct: the peer's underlay address itself.

With `encrypt` there is no VXLAN device, and the whole container network is routed
into cnwg0 (a peer without a key is dropped there, never sent in clear).

A named network (docs/networks.md) has its own VXLAN device (`cnvx<its VNI>`) and
WireGuard device (`cnwg<its VNI>`, its own port: crossnet.wg.named) and routes each peer's
subnet of it over the transport the top-level network chose for that peer (its context's
`auto.named`): no probe addresses of its own, allowed-ips its subnet only.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from crossnet import datapath
from crossnet.backends import vxlan as vx
from crossnet.backends import wireguard as wgb
from crossnet.backends.base import Backend, HostContext, Peer, gateway_cidr, gateway_mac
from crossnet.errors import ConfigError
from crossnet.netlink import iproute as nl
from crossnet.plan.env import Env
from crossnet.plan.resources import Address, Bridge, Fdb, Neigh, Resource, Route
from crossnet.plan.resources import Vxlan as VxlanLink
from crossnet.transport.select import candidates
from crossnet.wg import keys
from crossnet.wg.resources import WgDevice, WgPeer

DEFAULT_PROBE_NETWORK = "198.18.0.0/15"
OVERHEAD = max(vx.Vxlan.overhead, wgb.OVERHEAD)  # a peer may move to WireGuard at any time


def settings(ctx: HostContext) -> dict[str, Any]:
    a = ctx.auto or {}
    return {"encrypt": bool(a.get("encrypt", False)),
            "probe_network": IPv4Network(a.get("probe_network") or DEFAULT_PROBE_NETWORK),
            "named": bool(a.get("named", False))}  # a named network: follows the top-level choice, no probes


def wg_probe_address(ctx: HostContext, subnet: IPv4Network) -> IPv4Address:
    """The WireGuard probe address of the host holding `subnet`."""
    probe_net = settings(ctx)["probe_network"]
    index = (int(subnet.network_address) - int(ctx.network.network_address)) >> (32 - subnet.prefixlen)
    if not 0 <= index < probe_net.num_addresses - 2:
        raise ConfigError(f"auto.probe_network: {probe_net} has no probe address for subnet {subnet} "
                          f"(index {index}); give a larger one")
    return probe_net.network_address + 1 + index


def on_link(ctx: HostContext, connected: list[IPv4Network], peer: Peer) -> bool:
    return any(peer.address in net for net in connected)


def peer_candidates(ctx: HostContext, peer: Peer, on_link_: bool) -> tuple[str, ...]:
    key = peer.data.get("wireguard_key")
    return candidates(on_link_, bool(key) and not keys.check_key(key), settings(ctx)["encrypt"])


def transport_of(ctx: HostContext, peer: Peer) -> str:
    """The peer's transport: its recorded choice when it is one of its candidates
    (direct is trusted as recorded: it was chosen from this host's connected subnets),
    else the best candidate that needs no facts (vxlan, or wireguard with encrypt)."""
    cands = peer_candidates(ctx, peer, on_link_=peer.transport == "direct")
    return peer.transport if peer.transport in cands else cands[0]


def probe_targets(ctx: HostContext, peer: Peer) -> dict[str, tuple[str, str]]:
    """transport -> (source, destination) of the probes that reach `peer` only through it."""
    return {
        "direct": (str(ctx.address), str(peer.address)),
        "vxlan": (str(ctx.subnet.network_address), str(peer.subnet.network_address)),
        "wireguard": (str(wg_probe_address(ctx, ctx.subnet)), str(wg_probe_address(ctx, peer.subnet))),
    }


class Auto(Backend):
    name = "auto"
    needs_l2 = False
    overhead = OVERHEAD
    required_host_data = ("wireguard_key",)
    description = "per peer: direct route on the same L2 segment, else VXLAN, WireGuard when VXLAN fails or encrypt is set"

    def local_data(self, state_dir: str, create: bool = True) -> dict:
        return wgb.WireGuard().local_data(state_dir, create)

    def host_data(self, cluster_name: str, host: str, address: IPv4Address) -> dict:
        return vx.Vxlan().host_data(cluster_name, host, address)

    def prepare_context(self, ctx: HostContext, env: Env) -> None:
        """Initial choice from the facts alone (no probes yet): direct for a peer on a
        subnet connected to the NIC, else the next candidate."""
        connected = connected_networks(env, ctx.iface)
        for peer in ctx.peers:
            if not peer.transport:
                peer.transport = peer_candidates(ctx, peer, on_link(ctx, connected, peer))[0]

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        s, w = settings(ctx), wgb.settings(ctx)
        out: list[Resource] = []
        if not s["encrypt"]:
            dev = vx.Vxlan.device(ctx)
            out += [VxlanLink(dev, ctx.vni, ctx.port, str(ctx.address), ctx.iface, ctx.mtu,
                              self.host_data(ctx.cluster_name, ctx.host, ctx.address)["vtep_mac"]),
                    Address(dev, f"{ctx.subnet.network_address}/32")]
        out += [WgDevice(w["device"], w["port"], ctx.mtu, str(keys.key_path(ctx.state_dir or "/var/lib/crossnet")),
                         wgb.run_dir(ctx), w["implementation"])]
        if not s["named"]:  # a named network's peers follow the top-level choice: nothing to probe
            out.append(Address(w["device"], f"{wg_probe_address(ctx, ctx.subnet)}/32"))
        if s["encrypt"]:
            out.append(Route(str(ctx.network), dev=w["device"]))  # never in clear
        if datapath.routed(ctx):  # no container bridge; the programs after the devices (docs/datapath.md)
            return datapath.local_resources(ctx, out)
        return [Bridge(ctx.bridge, ctx.mtu, mac=gateway_mac(ctx)), Address(ctx.bridge, gateway_cidr(ctx)), *out]

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        s, w = settings(ctx), wgb.settings(ctx)
        t = transport_of(ctx, peer)
        out: list[Resource] = []
        if not s["encrypt"]:
            dev = vx.Vxlan.device(ctx)
            mac = peer.data.get("vtep_mac") or self.host_data(ctx.cluster_name, peer.name, peer.address)["vtep_mac"]
            gw = str(peer.subnet.network_address)
            out += [Fdb(dev, mac, str(peer.address)), Neigh(dev, gw, mac), Route(f"{gw}/32", dev=dev)]
        key = peer.data.get("wireguard_key")
        if key and not keys.check_key(key):
            # a named network's own device: allowed-ips its subnet only (it probes nothing)
            probe = None if s["named"] else f"{wg_probe_address(ctx, peer.subnet)}/32"
            out.append(WgPeer(w["device"], wgb.run_dir(ctx), peer.name, key, f"{peer.address}:{w['port']}",
                              [str(peer.subnet), *([probe] if probe else [])], w["keepalive"]))
            if probe:
                out.append(Route(probe, dev=w["device"]))
        elif t == "wireguard":
            return out  # no key yet: its subnet stays in the network route (encrypt) or unrouted
        if t == "direct":
            out.append(Route(str(peer.subnet), gateway=str(peer.address), dev=ctx.iface))
        elif t == "vxlan":
            out.append(Route(str(peer.subnet), gateway=str(peer.subnet.network_address), dev=vx.Vxlan.device(ctx),
                             onlink=True))
        else:
            out.append(Route(str(peer.subnet), dev=w["device"]))
        return out

    def local_broken(self, ctx: HostContext, env: Env) -> str | None:
        return wgb.WireGuard().local_broken(ctx, env)

    def tunnel_device(self, ctx: HostContext) -> str | None:
        return vx.Vxlan.device(ctx) if not settings(ctx)["encrypt"] else wgb.settings(ctx)["device"]

    def status_info(self, ctx: HostContext, env: Env) -> dict[str, Any]:
        return wgb.WireGuard().status_info(ctx, env)


def connected_networks(env: Env, iface: str) -> list[IPv4Network]:
    """The subnets of the addresses on `iface` (what is one L2 hop away)."""
    index = env.index(iface)
    if index is None:
        return []
    return [IPv4Interface(c).network for c in nl.addresses(env.ipr, index) if ":" not in c]


def make(name: str) -> Backend:
    return Auto()


__all__ = ["Auto", "connected_networks", "make", "peer_candidates", "probe_targets", "transport_of", "wg_probe_address"]
