"""One way to read and configure a WireGuard device, whichever implementation runs it:
the kernel module (generic netlink through ``pyroute2.WireGuard``) or wireguard-go (its
UAPI socket). Both give a uapi.DeviceState and take uapi.PeerConfig lists."""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Protocol

from crossnet.wg import keys, proc, uapi


class Control(Protocol):
    impl: str

    def get(self) -> uapi.DeviceState: ...

    def set(self, private_key: str | None = None, listen_port: int | None = None,
            peers: list[uapi.PeerConfig] = ()) -> None: ...


class UapiControl:
    impl = "userspace"

    def __init__(self, path: str):
        self.path = path

    def get(self) -> uapi.DeviceState:
        return uapi.get(self.path)

    def set(self, private_key: str | None = None, listen_port: int | None = None,
            peers: list[uapi.PeerConfig] = ()) -> None:
        uapi.set_(self.path, uapi.set_message(private_key, listen_port, list(peers)))


def wireguard_socket():  # pyroute2's genetlink socket (tests replace it)
    from pyroute2 import WireGuard

    return WireGuard()


def _b64(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KernelControl:
    """The kernel module through pyroute2's WireGuard genetlink API (one request per
    peer: pyroute2 sets one peer per message)."""

    impl = "kernel"

    def __init__(self, ifname: str, factory: Callable[[], Any] | None = None):
        self.ifname = ifname
        self.factory = factory or (lambda: wireguard_socket())

    def get(self) -> uapi.DeviceState:
        wg = self.factory()
        try:
            msgs = list(wg.info(self.ifname))
        finally:
            wg.close()
        dev = uapi.DeviceState()
        for msg in msgs:
            priv = msg.get("WGDEVICE_A_PRIVATE_KEY")
            if priv:
                dev.public_key = keys.public_of(_b64(priv))
            port = msg.get("WGDEVICE_A_LISTEN_PORT")
            if port is not None:
                dev.listen_port = int(port)
            for p in msg.get("WGDEVICE_A_PEERS") or []:
                st = uapi.PeerState(_b64(p.get("WGPEER_A_PUBLIC_KEY")))
                ep = p.get("WGPEER_A_ENDPOINT")
                if ep:
                    st.endpoint = f"{ep['addr']}:{ep['port']}"
                st.allowed_ips = [a["addr"] for a in p.get("WGPEER_A_ALLOWEDIPS") or [] if a.get("addr")]
                st.keepalive = int(p.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0)
                st.rx_bytes = int(p.get("WGPEER_A_RX_BYTES") or 0)
                st.tx_bytes = int(p.get("WGPEER_A_TX_BYTES") or 0)
                hs = p.get("WGPEER_A_LAST_HANDSHAKE_TIME")
                if hs and hs["tv_sec"]:
                    st.last_handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
                dev.peers[st.public_key] = st
        return dev

    def set(self, private_key: str | None = None, listen_port: int | None = None,
            peers: list[uapi.PeerConfig] = ()) -> None:
        wg = self.factory()
        try:
            if private_key is not None or listen_port is not None:
                kw: dict[str, Any] = {}
                if private_key is not None:
                    kw["private_key"] = private_key
                if listen_port is not None:
                    kw["listen_port"] = listen_port
                wg.set(self.ifname, **kw)
            for p in peers:
                wg.set(self.ifname, peer=peer_dict(p))
        finally:
            wg.close()


def peer_dict(p: uapi.PeerConfig) -> dict[str, Any]:
    """A uapi.PeerConfig as pyroute2's WireGuard peer structure."""
    keys.decode(p.public_key)
    if p.remove:
        return {"public_key": p.public_key, "remove": True}
    out: dict[str, Any] = {"public_key": p.public_key, "replace_allowed_ips": True,
                           "allowed_ips": list(p.allowed_ips), "persistent_keepalive": int(p.keepalive)}
    if p.endpoint:
        host, _, port = p.endpoint.rpartition(":")
        ipaddress.ip_address(host)
        out["endpoint_addr"], out["endpoint_port"] = host, int(port)
    return out


def for_device(link_kind: str | None, ifname: str, run_dir: str) -> Control | None:
    """The control of device `ifname` given its link kind; None when it is not ours/running."""
    if link_kind == "wireguard":
        return KernelControl(ifname)
    if link_kind == "tun":
        pid = proc.read_pid(run_dir, ifname)
        if pid is not None:
            return UapiControl(proc.socket_path(pid, ifname))
    return None


__all__ = ["Control", "KernelControl", "UapiControl", "for_device", "peer_dict"]
