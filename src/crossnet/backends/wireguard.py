"""wireguard: encrypted transport between hosts (like flannel's wireguard backend).

One WireGuard device per host (`cnwg0`; kernel module through pyroute2 when it exists,
else a crossnet-supervised wireguard-go), the host's container-subnet network address on
it, a route for the whole container network into it (a peer without a key or a peer
entry is dropped there, never sent in clear), and per peer:

    wg set cnwg0 peer <its public key> endpoint <its underlay address>:51820 allowed-ips <its subnet>
    ip route replace <its subnet> dev cnwg0

Container traffic between hosts leaves only as WireGuard UDP. Each host's private key is
made on the host (crossnet.wg.keys) and never leaves it; public keys come from the store
(`data.wireguard_key` of each host record) or the cluster file (`hosts[].wireguard_key`).
"""

from __future__ import annotations

from typing import Any

from crossnet.netlink import iproute as nl
from crossnet.backends.base import Backend, HostContext, Peer, gateway_cidr, gateway_mac
from crossnet.plan.env import Env
from crossnet.plan.resources import Address, Bridge, Resource, Route
from crossnet.wg import keys, proc
from crossnet.wg.resources import WgDevice, WgPeer, device_state

DEFAULT_PORT = 51820
DEFAULT_DEVICE = "cnwg0"
OVERHEAD = 80  # outer IPv6 40 (IPv4 20) + UDP 8 + WireGuard 32: what wg-quick subtracts


def settings(ctx: HostContext) -> dict[str, Any]:
    s = ctx.wireguard or {}
    return {
        "port": int(s.get("port") or DEFAULT_PORT),
        "device": s.get("device") or DEFAULT_DEVICE,
        "keepalive": int(s.get("keepalive") or 0),
        "implementation": s.get("implementation") or "auto",
    }


def run_dir(ctx: HostContext) -> str:
    return str(keys.key_dir(ctx.state_dir or "/var/lib/crossnet"))


def validate_host_data(data: object) -> str | None:
    """For the store's record validation: None when `data` is acceptable for a
    wireguard host (a base64 32-byte `wireguard_key`, when present), else why not."""
    return keys.validate_host_data(data)


class WireGuard(Backend):
    name = "wireguard"
    needs_l2 = False
    overhead = OVERHEAD
    required_host_data = ("wireguard_key",)
    description = "WireGuard device per host (kernel or wireguard-go), a peer per host: encrypted, any (L3) underlay"

    def local_data(self, state_dir: str, create: bool = True) -> dict:
        pub = keys.ensure_key(state_dir)[0] if create else keys.local_public(state_dir)
        return {"wireguard_key": pub} if pub else {}

    def device(self, ctx: HostContext) -> str:
        return settings(ctx)["device"]

    def local_resources(self, ctx: HostContext) -> list[Resource]:
        s = settings(ctx)
        dev = s["device"]
        return [
            Bridge(ctx.bridge, ctx.mtu, mac=gateway_mac(ctx)),
            Address(ctx.bridge, gateway_cidr(ctx)),
            WgDevice(dev, s["port"], ctx.mtu, str(keys.key_path(ctx.state_dir or "/var/lib/crossnet")), run_dir(ctx),
                     s["implementation"]),
            Address(dev, f"{ctx.subnet.network_address}/32"),
            Route(str(ctx.network), dev=dev),  # no peer entry: dropped by WireGuard, never in clear
        ]

    def peer_resources(self, ctx: HostContext, peer: Peer) -> list[Resource]:
        key = peer.data.get("wireguard_key")
        if not key or keys.check_key(key):
            return []  # not published yet: its subnet stays in the device's network route (dropped)
        s = settings(ctx)
        dev = s["device"]
        return [
            WgPeer(dev, run_dir(ctx), peer.name, key, f"{peer.address}:{s['port']}", [str(peer.subnet)], s["keepalive"]),
            Route(str(peer.subnet), dev=dev),
        ]

    def local_broken(self, ctx: HostContext, env: Env) -> str | None:
        dev = self.device(ctx)
        info = nl.link_info(env.ipr, dev)
        if info is None:
            return f"wireguard device {dev} is gone"
        if info.kind == "tun" and proc.read_pid(run_dir(ctx), dev) is None:
            return f"wireguard-go of {dev} is not running"
        return None

    def tunnel_device(self, ctx: HostContext) -> str | None:
        return self.device(ctx)

    def ingress_devices(self, ctx: HostContext) -> list[str] | None:
        return [self.device(ctx)]  # each network its own device, its peers' subnets of it only

    def status_info(self, ctx: HostContext, env: Env) -> dict[str, Any]:
        s = settings(ctx)
        st = device_state(env, s["device"], run_dir(ctx))
        info = env.link(s["device"])
        by_key = {p.data.get("wireguard_key"): p.name for p in ctx.peers}
        out: dict[str, Any] = {
            "device": s["device"],
            "implementation": (info.kind == "wireguard" and "kernel" or "userspace") if info else None,
            "running": st is not None,
            "listen_port": st.listen_port if st else None,
            "public_key": st.public_key if st else None,
            "peers": [
                {"name": by_key.get(k, "?"), **p.to_json()} for k, p in sorted((st.peers if st else {}).items())
            ],
        }
        return {"wireguard": out}


def make(name: str) -> Backend:
    return WireGuard()


__all__ = ["WireGuard", "make", "validate_host_data"]
