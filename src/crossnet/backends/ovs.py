"""ovs-gre / ovs-vxlan: the tutorial's Open vSwitch method, for any number of hosts.

Per host (the tutorial's layout; chosen by measurement, see docs/ovs.md):

    containers ─veth─ cn0 (Linux bridge, gateway .1) ─ cnovs0 (OVS internal port)
                      cnovs0 (OVS bridge, fail_mode=secure) ─ gre-<peer> / vxl-<peer> (full mesh)

* Userspace datapath (no openvswitch kernel module, as on these machines): every
  bridge is `datapath_type=netdev`, and native tunnelling needs the underlay address
  on an OVS bridge: the NIC becomes a port of `br-phy`, its addresses and routes
  move to br-phy's internal port (br-phy keeps the NIC's MAC), and an nft netdev
  ingress chain drops everything the host kernel would otherwise see on the NIC
  (OVS reads the NIC with a packet socket before that hook, so it still sees all).
* Kernel datapath (module present): `datapath_type=system`, the NIC keeps its address.
* Split horizon in OpenFlow: a frame from a tunnel goes only to the local port, never
  into another tunnel; local frames go to the tunnel of the peer whose gateway MAC
  they are addressed to; local broadcast/multicast goes into every tunnel; anything
  else is dropped. No loop exists with any number of hosts, and no MAC learning.
* Routing: `<peer subnet> via <peer gateway> dev cn0 onlink`; peers' gateways are
  resolved by ARP across the overlay (cn0 MACs are derived from cluster+host).
* MTU: containers get underlay − 38 (GRE: outer Ethernet 14 + IPv4 20 + GRE 4) or
  − 50 (VXLAN: 14 + 20 + UDP 8 + VXLAN 8); OVS neither fragments nor sends
  "fragmentation needed", so this is the only safe value.
* Named networks (docs/networks.md): each has its own OVS bridge `cnovs<vni>` (its
  own flow table) behind its own container bridge, and its own tunnel ports
  (`gre<vni>-<peer>` / `vxl<vni>-<peer>`) whose key is the network's VNI, so OVS
  demultiplexes the networks by key and no frame can cross from one bridge to
  another. The underlay part (br-phy, the NIC, the nft table) is the top-level
  network's and shared. GRE's key costs 4 bytes: those networks' MTU is 4 lower.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from crossnet.backends.base import (
    Backend,
    HostContext,
    Peer,
    first_host,
    gateway_cidr,
    stable_mac,
)
from crossnet.errors import ApplyError, CrossnetError
from crossnet.ifname import nft_ifname
from crossnet.ovs import db as ovsdb
from crossnet.ovs.resources import (
    FLOW_COOKIE,
    AddressMove,
    DevIpv6Off,
    DevSysctl,
    OvsBridge,
    OvsFlows,
    OvsPort,
    TunnelNeighbours,
    bridge_conflict,
    ovs,
    port_conflict,
)
from crossnet.plan.env import Env
from crossnet.plan.resources import Address, Bridge, Enslave, NftTable, Resource, Route, Sysctl

PHY_BRIDGE = "br-phy"
OVERLAY_BRIDGE = "cnovs0"
NFT_TABLE = "crossnet_ovs"
BROADCAST_MATCH = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"
_FLOW_SAFE = re.compile(r"[A-Za-z0-9_.-]+")  # peer names usable as port names in flow text


class OvsBackend(Backend):
    needs_l2 = False

    def __init__(self, name: str, tunnel: str, overhead: int):
        self.name = name
        self.tunnel = tunnel  # OVS interface type: gre | vxlan
        self.overhead = overhead
        self.key_overhead = 4 if tunnel == "gre" else 0  # a named network's GRE key (VXLAN always has one)
        self.description = (
            f"Open vSwitch bridge with a {tunnel.upper()} port per peer (full mesh, split horizon); "
            "userspace datapath with br-phy when the kernel module is missing"
        )
        self._datapath: str | None = None

    # ---- derived names and values ---------------------------------------------------
    def datapath(self) -> str:
        if self._datapath is None:
            self._datapath = ovsdb.datapath_type()
        return self._datapath

    def host_data(self, cluster_name: str, host: str, address: IPv4Address) -> dict:
        return {"gw_mac": stable_mac(cluster_name, host, "ovs-gw")}

    def gw_mac(self, ctx: HostContext, peer: Peer | None = None) -> str:
        if peer is None:
            return self.host_data(ctx.cluster_name, ctx.host, ctx.address)["gw_mac"]
        return peer.data.get("gw_mac") or self.host_data(ctx.cluster_name, peer.name, peer.address)["gw_mac"]

    def ingress_devices(self, ctx: HostContext) -> list[str] | None:
        # none besides the bridge: the network's OVS bridge (its own tunnel ports, keyed by
        # its VNI) reaches the kernel only through its internal port, a port of the bridge
        return []

    @staticmethod
    def overlay_bridge(ctx: HostContext | None = None) -> str:
        """The OVS bridge of ctx's network: `cnovs0` (top-level), `cnovs<vni>` (named)."""
        return f"cnovs{ctx.vni}" if ctx is not None and ctx.net_name else OVERLAY_BRIDGE

    def tunnel_port(self, peer: Peer, ctx: HostContext | None = None) -> str:
        """`gre-<peer>` / `vxl-<peer>` (top-level network), `gre<vni>-<peer>` /
        `vxl<vni>-<peer>` (a named network); hashed when too long or not flow-safe
        (port names are unique across OVS bridges, and pasted into OpenFlow rules).
        A hashed name may equal another peer's (`gre-<8 hex>` is also the port of a peer
        named so): peer_claims lets only the older record have it."""
        return self._port_name(peer.name, ctx)

    def _port_name(self, peer: str, ctx: HostContext | None) -> str:
        base = "gre" if self.tunnel == "gre" else "vxl"
        if ctx is not None and ctx.net_name:
            name = f"{base}{ctx.vni}-{peer}"
            if len(name) > 15 or not _FLOW_SAFE.fullmatch(peer):  # 'x': never a top-level or unhashed name
                name = f"{base}x" + hashlib.sha1(f"{ctx.vni}/{peer}".encode()).hexdigest()[:11]
            return name
        prefix = base + "-"
        name = prefix + peer
        if len(name) > 15 or not _FLOW_SAFE.fullmatch(peer):  # the name is pasted into OpenFlow rules
            name = prefix + hashlib.sha1(peer.encode()).hexdigest()[:8]
        return name

    def peer_claims(self, ctxs: Iterable[HostContext], name: str) -> list[str]:
        # two peers with one tunnel port: the port's remote_ip is the last one set, and the
        # flows to both peers' gateway MACs output to it (one host would get the other's traffic)
        return [f"OVS tunnel port {self._port_name(name, ctx)}" for ctx in ctxs]

    def tunnel_options(self, ctx: HostContext, peer: Peer) -> dict[str, str]:
        opts = {"remote_ip": str(peer.address)}
        if self.tunnel == "vxlan" or ctx.net_name:  # a named network's own key: its VNI (GRE too)
            opts["key"] = str(ctx.vni)
        if self.tunnel == "vxlan" and ctx.port != 4789:
            opts["dst_port"] = str(ctx.port)
        return opts

    @staticmethod
    def peer_gateway(peer: Peer) -> str:
        return str(first_host(peer.subnet))

    def flows(self, ctx: HostContext) -> list[str]:
        c = f"cookie={FLOW_COOKIE}"
        tunnels = [(self.tunnel_port(p, ctx), self.gw_mac(ctx, p)) for p in ctx.peers]
        out = [f"{c},priority=100,in_port={port},actions=output:LOCAL" for port, _ in tunnels]
        out += [f"{c},priority=90,in_port=LOCAL,dl_dst={mac},actions=output:{port}" for port, mac in tunnels]
        flood = ",".join(f"output:{port}" for port, _ in tunnels) or "drop"
        out.append(f"{c},priority=80,in_port=LOCAL,{BROADCAST_MATCH},actions={flood}")
        out.append(f"{c},priority=0,actions=drop")
        return out

    # ---- desired state --------------------------------------------------------------
    def _underlay(self, ctx: HostContext) -> list[Resource]:
        if self.datapath() != "netdev" or ctx.net_name:  # the top-level network's, shared by the named ones
            return []
        device = nft_ifname(ctx.iface, f"hosts[{ctx.host}].iface")  # never pasted into nft unchecked
        body = (
            "  chain ingress {\n"
            f"    type filter hook ingress device {device} priority filter; policy drop;\n"
            "  }"
        )
        return [
            OvsBridge(PHY_BRIDGE, "netdev", None, hwaddr=ctx.nic_mac, role="underlay"),
            OvsPort(PHY_BRIDGE, ctx.iface, role="nic"),
            AddressMove(ctx.iface, PHY_BRIDGE),
            NftTable("netdev", NFT_TABLE, body),
        ]

    def _overlay(self, ctx: HostContext) -> list[Resource]:
        ovs_br = self.overlay_bridge(ctx)
        return [
            Bridge(ctx.bridge, ctx.mtu, mac=self.gw_mac(ctx)),
            # IPv6 off on the bridge and the internal port before the port brings them up
            # (the userspace datapath loses packets meanwhile: DevIpv6Off)
            DevIpv6Off.of(ctx.bridge),
            Address(ctx.bridge, gateway_cidr(ctx)),
            # traffic to peers enters and leaves cn0: no ICMP redirects to containers
            *([] if ctx.net_name else [Sysctl("net.ipv4.conf.all.send_redirects", "0")]),
            DevSysctl(f"net.ipv4.conf.{ctx.bridge}.send_redirects", "0"),
            OvsBridge(ovs_br, self.datapath(), "secure", mtu=ctx.mtu, role="overlay"),
            DevIpv6Off.of(ovs_br),
            Enslave(ovs_br, ctx.bridge),
        ]

    def _tail(self, ctx: HostContext) -> list[Resource]:
        out: list[Resource] = [OvsFlows(self.overlay_bridge(ctx), self.flows(ctx))]
        if self.datapath() == "netdev" and not ctx.net_name:
            out.append(TunnelNeighbours(PHY_BRIDGE))
        return out

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        return self._underlay(ctx) + self._overlay(ctx) + self._tail(ctx)

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        return [
            OvsPort(self.overlay_bridge(ctx), self.tunnel_port(peer, ctx), self.tunnel, self.tunnel_options(ctx, peer),
                    role="tunnel"),
            Route(str(peer.subnet), gateway=self.peer_gateway(peer), dev=ctx.bridge, onlink=True),
        ]

    def resources(self, ctx: HostContext) -> list[Resource]:
        # tunnel ports before the flows that name them
        out = self._underlay(ctx) + self._overlay(ctx)
        for peer in ctx.peers:
            out.extend(self.peer_resources(ctx, peer))
        return out + self._tail(ctx)

    # ---- validation before anything changes -----------------------------------------
    def conflicts(self, ctx: HostContext, d: ovsdb.OvsDb) -> list[str]:
        """OVS bridges and ports this host needs that exist but were not created by
        crossnet (no external_ids:crossnet): crossnet never takes them over."""
        out: list[str] = []
        for r in self.resources(ctx):
            if isinstance(r, OvsBridge):
                msg = bridge_conflict(d, r.name)
            elif isinstance(r, OvsPort):
                msg = port_conflict(d, r.bridge, r.name, r.role)
            else:
                continue
            if msg and msg not in out:
                out.append(msg)
        return out

    def check_underlay(self, ctx: HostContext, env: Env) -> None:
        """Runs before anything changes (also for --dry-run): Open vSwitch must run, and
        no bridge/port crossnet needs may belong to someone else."""
        found = self.conflicts(ctx, ovs(env))
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ApplyError(found[0] + more)

    # ---- containers: the default (veth into the Linux bridge cn0) is the layout -----
    def tunnel_device(self, ctx: HostContext) -> str | None:
        return self.overlay_bridge(ctx)

    # ---- status ---------------------------------------------------------------------
    def status_info(self, ctx: HostContext, env: Env) -> dict[str, Any]:
        """Extra `crossnet status` fields: {"ovs": {datapath, bridges, tunnels, ...}}.
        When Open vSwitch is not running: datapath "unknown", running false and the
        error with the hint how to start it (everything else in status still shows)."""
        info: dict[str, Any] = {
            "running": True,
            "datapath": self.datapath(),
            "datapath_kind": "kernel" if self.datapath() == "system" else "userspace",
            "kernel_module": ovsdb.kernel_datapath_available(),
            "tunnel": self.tunnel,
        }
        try:
            d = ovs(env)
        except ovsdb.OvsNotRunning as exc:
            info.update(running=False, datapath="unknown", datapath_kind="ovs not running", error=str(exc))
            return {"ovs": info}
        except CrossnetError as exc:
            info["error"] = str(exc)
            return {"ovs": info}
        try:
            bridges = {}
            for name in (PHY_BRIDGE, OVERLAY_BRIDGE):
                row = d.bridge(name)
                if row is not None:
                    bridges[name] = {"datapath_type": row.datapath_type, "ports": d.ports_of(name)}
            info["bridges"] = bridges
            if OVERLAY_BRIDGE in bridges:  # what is in use, rather than what would be chosen now
                dp = bridges[OVERLAY_BRIDGE]["datapath_type"] or "system"
                info["datapath"] = dp
                info["datapath_kind"] = "kernel" if dp == "system" else "userspace"
            tunnels = []
            for peer in ctx.peers:
                port = self.tunnel_port(peer)
                iface = d.interface(port)
                tunnels.append({
                    "peer": peer.name,
                    "port": port,
                    "remote_ip": str(peer.address),
                    "ofport": ovsdb.one(iface.ofport) if iface is not None else None,
                    "ok": iface is not None and (ovsdb.one(iface.ofport) or -1) > 0 and not ovsdb.one(iface.error),
                })
            info["tunnels"] = tunnels
            info["conflicts"] = self.conflicts(ctx, d)
            if info["conflicts"]:
                info["error"] = info["conflicts"][0]
        except CrossnetError as exc:
            info["error"] = str(exc)
        return {"ovs": info}


def make(name: str) -> Backend:
    if name == "ovs-gre":
        return OvsBackend(name, "gre", 38)  # outer Ethernet 14 + IPv4 20 + GRE 4
    if name == "ovs-vxlan":
        return OvsBackend(name, "vxlan", 50)  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    raise ValueError(f"crossnet.backends.ovs has no backend {name!r}")
