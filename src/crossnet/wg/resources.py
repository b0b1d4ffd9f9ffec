"""WireGuard resources for the reconciler (crossnet.plan): one device per host and one
peer entry per remote host. The backend (crossnet.backends.wireguard) builds them; a
per-peer transport (issue 14's `auto`) can use WgPeer for just the peers it encrypts.

Keys never enter a resource: WgDevice names the private key FILE (read by ensure/check
and sent over netlink or the UAPI socket); peers carry public keys only. applied.json and
--dry-run therefore show no secret.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from crossnet.errors import ApplyError, CrossnetError
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource, refuse_foreign_link
from crossnet.wg import control, keys, proc, uapi

IMPLS = ("auto", "kernel", "userspace")


def device_control(env: Env, name: str, run_dir: str) -> control.Control | None:
    info = env.link(name)
    return control.for_device(info.kind if info else None, name, run_dir)


def device_state(env: Env, name: str, run_dir: str) -> uapi.DeviceState | None:
    """The device's state, read once per Env snapshot (every peer's check shares it)."""

    def load() -> uapi.DeviceState | None:
        ctl = device_control(env, name, run_dir)
        if ctl is None:
            return None
        try:
            return ctl.get()
        except (CrossnetError, OSError, NetlinkError):
            return None

    return env._get(f"wg:{name}", load)


@dataclass
class WgDevice(Resource):
    """The host's WireGuard device: kernel link (`ip link add NAME type wireguard`) when
    the module exists, else a crossnet-supervised wireguard-go; private key, listen port,
    MTU, up."""

    kind: ClassVar[str] = "wireguard-device"
    name: str
    port: int
    mtu: int
    key_file: str
    run_dir: str  # pidfile + log of wireguard-go
    impl: str = "auto"

    def key(self) -> str:
        return f"link:{self.name}"

    def describe(self) -> str:
        create = {
            "kernel": f"ip link add {self.name} type wireguard",
            "userspace": f"wireguard-go -f {self.name} &",
        }.get(self.impl, f"ip link add {self.name} type wireguard (without the module: wireguard-go -f {self.name} &)")
        return (
            f"{create} && wg set {self.name} private-key {self.key_file} listen-port {self.port} "
            f"&& ip link set {self.name} mtu {self.mtu} up"
        )

    def check(self, env: Env) -> bool:
        info = env.link(self.name)
        if info is None or not info.up or info.mtu != self.mtu:
            return False
        if self.impl != "auto" and (info.kind == "wireguard") != (self.impl == "kernel"):
            return False
        try:
            private = keys.read_private(self.key_file)
        except CrossnetError:
            return False
        return self._keyed(device_state(env, self.name, self.run_dir), private)

    def _keyed(self, st: uapi.DeviceState | None, private: str) -> bool:
        """The running device (its state ``st``) has this key and this listen port."""
        return st is not None and st.public_key == keys.public_of(private) and st.listen_port == self.port

    def _create(self, env: Env) -> None:
        if self.impl in ("auto", "kernel"):
            try:
                env.ipr.link("add", ifname=self.name, kind="wireguard")
                self.saved["impl"] = "kernel"
                return
            except NetlinkError as exc:
                if self.impl == "kernel":
                    raise ApplyError(f"wireguard device {self.name}: the kernel refused it ({exc.args[-1]})") from None
        proc.start(self.run_dir, self.name)
        self.saved["impl"] = "userspace"

    def ensure(self, env: Env) -> None:
        private = keys.read_private(self.key_file)  # before anything is created
        info = env.link(self.name)
        ctl = control.for_device(info.kind if info else None, self.name, self.run_dir) if info else None
        if info is not None and ctl is None:
            raise ApplyError(
                f"interface {self.name} exists but is not a WireGuard device crossnet runs "
                f"({info.kind or 'plain'} link); remove it or choose another wireguard.device"
            )
        if info is not None and self.impl != "auto" and ctl.impl != self.impl:
            self.remove(env)
            info = None
        st = device_state(env, self.name, self.run_dir) if info is not None else None
        if info is None:
            self._create(env)
            env.changed("links")
            ctl = device_control(env, self.name, self.run_dir)
            if ctl is None:
                raise ApplyError(f"wireguard device {self.name} did not appear")
        # only what differs: wireguard-go re-opens its UDP socket on every listen_port it is
        # sent (what arrives meanwhile is lost), e.g. on an MTU change that needs nothing else
        if not self._keyed(st, private):
            ctl.set(private_key=private, listen_port=self.port)
        env.ipr.link("set", index=env.require_index(self.name), mtu=self.mtu, state="up")
        env.changed("links", "addresses", "routes", f"wg:{self.name}")

    def preflight(self, env: Env, owned: set[str]) -> None:
        # an admin's own WireGuard device of this name: never re-keyed, given peers or deleted
        refuse_foreign_link(env, self.name, self.key(), owned,
                            " (or choose another `wireguard.device`, or a named network's `vni`, in the cluster file)")

    def remove(self, env: Env) -> None:
        proc.stop(self.run_dir, self.name)  # userspace: the device and its socket go with it
        env.changed("links")
        info = env.link(self.name)
        if info is not None and info.kind == "wireguard":
            with contextlib.suppress(NetlinkError):
                env.ipr.link("del", index=info.index)
        env.changed("links", "addresses", "routes", f"wg:{self.name}")


KICK_KEEPALIVE = 25


def kick(cfg: uapi.PeerConfig) -> list[uapi.PeerConfig]:
    """The peer's configuration, preceded (keepalive off) by the same with a keepalive:
    turning a keepalive on sends one at once (kernel and wireguard-go alike), which makes
    this side start a handshake now. A device just (re)started thus replaces the stale
    sessions its peers still hold instead of waiting for their 15 s re-handshake timeout."""
    if cfg.keepalive or cfg.remove:
        return [cfg]
    return [uapi.PeerConfig(cfg.public_key, cfg.endpoint, list(cfg.allowed_ips), KICK_KEEPALIVE), cfg]


@dataclass
class WgPeer(Resource):
    """One peer of the device: its public key, endpoint, allowed IPs (its container
    subnet), keepalive. Identity is the public key: a rotated key is a new peer, created
    before the old one is removed (allowed IPs move to it)."""

    kind: ClassVar[str] = "wireguard-peer"
    dev: str
    run_dir: str
    peer: str  # host name (for people)
    public_key: str
    endpoint: str
    allowed_ips: list[str] = field(default_factory=list)
    keepalive: int = 0

    def key(self) -> str:
        return f"wgpeer:{self.dev}:{self.public_key}"

    def describe(self) -> str:
        ka = f" persistent-keepalive {self.keepalive}" if self.keepalive else ""
        return (
            f"wg set {self.dev} peer {self.public_key} endpoint {self.endpoint} "
            f"allowed-ips {','.join(self.allowed_ips)}{ka}  # {self.peer}"
        )

    def config(self, remove: bool = False) -> uapi.PeerConfig:
        return uapi.PeerConfig(self.public_key, self.endpoint, list(self.allowed_ips), self.keepalive, remove)

    def check(self, env: Env) -> bool:
        st = device_state(env, self.dev, self.run_dir)
        p = st.peers.get(self.public_key) if st else None
        return (
            p is not None
            and p.endpoint == self.endpoint
            and sorted(p.allowed_ips) == sorted(self.allowed_ips)
            and p.keepalive == self.keepalive
        )

    def ensure(self, env: Env) -> None:
        ctl = device_control(env, self.dev, self.run_dir)
        if ctl is None:
            raise ApplyError(f"wireguard device {self.dev} is not running")
        ctl.set(peers=kick(self.config()))
        env.changed(f"wg:{self.dev}")

    def remove(self, env: Env) -> None:
        ctl = device_control(env, self.dev, self.run_dir)
        if ctl is None:
            return  # device gone: so is the peer
        with contextlib.suppress(CrossnetError, OSError, NetlinkError):
            ctl.set(peers=[self.config(remove=True)])
        env.changed(f"wg:{self.dev}")
