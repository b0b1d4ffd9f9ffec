"""host-gw: a container bridge per host and one route per peer —
`ip route add <peer subnet> via <peer underlay address>` for every peer.
Needs all hosts on one L2 segment (the next hop must be on-link)."""

from __future__ import annotations

from crossnet import datapath
from crossnet.backends.base import Backend, HostContext, Peer, gateway_cidr, gateway_mac
from crossnet.plan.resources import Address, Bridge, Resource, Route


class HostGw(Backend):
    name = "host-gw"
    needs_l2 = True
    overhead = 0
    description = "plain routes to each peer's container subnet via the peer's underlay address"

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        if datapath.routed(ctx):  # no container bridge (docs/datapath.md)
            return datapath.local_resources(ctx)
        return [Bridge(ctx.bridge, ctx.mtu, mac=gateway_mac(ctx)), Address(ctx.bridge, gateway_cidr(ctx))]

    def peer_device(self, ctx: HostContext) -> str | None:
        return ctx.iface

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        return [Route(str(peer.subnet), gateway=str(peer.address), dev=ctx.iface)]


def make(name: str) -> Backend:
    return HostGw()
