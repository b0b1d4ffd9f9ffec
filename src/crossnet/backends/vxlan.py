"""vxlan: kernel VXLAN across any (L3) underlay, programmed like flannel's vxlan
backend: one vxlan device per host (no learning, no multicast) and, per peer,

    ip route replace <peer subnet> via <peer subnet .0> dev cnvx<vni> onlink
    ip neigh replace <peer subnet .0> lladdr <peer VTEP MAC> dev cnvx<vni> nud permanent
    bridge fdb append <peer VTEP MAC> dev cnvx<vni> dst <peer underlay address>

VTEP MACs are derived from (cluster, host, vni) so every host can compute its
peers' MACs from the static cluster file; the etcd store publishes them instead.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from crossnet import datapath
from crossnet.backends.base import Backend, HostContext, Peer, gateway_cidr, gateway_mac, stable_mac
from crossnet.plan.resources import Address, Bridge, Fdb, Neigh, Resource, Route, Vxlan as VxlanLink


class Vxlan(Backend):
    name = "vxlan"
    needs_l2 = False
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    description = "kernel VXLAN device, static FDB/neighbour entries per peer (works across routers)"

    @staticmethod
    def device(ctx: HostContext) -> str:
        return f"cnvx{ctx.vni}"

    def host_data(self, cluster_name: str, host: str, address: IPv4Address) -> dict:
        return {"vtep_mac": stable_mac(cluster_name, host, "vxlan")}

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        dev = self.device(ctx)
        mac = self.host_data(ctx.cluster_name, ctx.host, ctx.address)["vtep_mac"]
        device = [VxlanLink(dev, ctx.vni, ctx.port, str(ctx.address), ctx.iface, ctx.mtu, mac),
                  Address(dev, f"{ctx.subnet.network_address}/32")]
        if datapath.routed(ctx):  # no container bridge; the programs after the device (docs/datapath.md)
            return datapath.local_resources(ctx, device)
        return [Bridge(ctx.bridge, ctx.mtu, mac=gateway_mac(ctx)), Address(ctx.bridge, gateway_cidr(ctx)), *device]

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        dev = self.device(ctx)
        mac = peer.data.get("vtep_mac") or self.host_data(ctx.cluster_name, peer.name, peer.address)["vtep_mac"]
        gw = str(peer.subnet.network_address)
        return [
            Fdb(dev, mac, str(peer.address)),
            Neigh(dev, gw, mac),
            Route(str(peer.subnet), gateway=gw, dev=dev, onlink=True),
            *datapath.vtep_resources(ctx, dev, gw, str(peer.address)),  # ebpf: the programs encapsulate too
        ]

    def tunnel_device(self, ctx: HostContext) -> str | None:
        return self.device(ctx)

    def ingress_devices(self, ctx: HostContext) -> list[str] | None:
        return None if datapath.routed(ctx) else [self.device(ctx)]


def make(name: str) -> Backend:
    return Vxlan()
