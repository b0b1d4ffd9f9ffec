"""bridge: the tutorial's first method. The host NIC is enslaved to a Linux bridge
(`br0`) that takes over the NIC's MAC, addresses and routes; containers sit
directly on the LAN with addresses from this host's part of it (what
`docker -b=br0 --fixed-cidr=...` did by hand). No per-peer state: it is one L2
segment, so all hosts must share it."""

from __future__ import annotations

from crossnet.backends.base import Backend, HostContext
from crossnet.plan.nic import NicTakeover
from crossnet.plan.resources import Bridge, Resource


class LanBridge(Backend):
    name = "bridge"
    needs_l2 = True
    overhead = 0
    description = "host NIC enslaved to a Linux bridge; containers sit on the LAN"

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        return [Bridge(ctx.bridge, ctx.mtu, mac=ctx.nic_mac), NicTakeover(ctx.iface, ctx.bridge)]


def make(name: str) -> Backend:
    return LanBridge()
