"""The named networks of a cluster file on this host (docs/networks.md).

The top-level settings are the network ``default``; every entry of ``networks:`` is one
more, with its own CIDR, per-host subnet, bridge and VNI. Here:

* :func:`contexts` -- this host's `HostContext` of every named network, built by the one
  builder (`program.context`) from the top-level context with the network's own
  settings; `program.program_host(networks=…)` programs them (and the isolation,
  crossnet.netiso) and records them in applied.json.
* :func:`state_of` -- a network's own state dir, ``<state-dir>/networks/<name>``: its
  applied.json (the network's context: what `attach --network`, the CNI plugin of
  `cni install --network` and `status` read) and its ipam.json (its addresses).
* :func:`prune` / :func:`record` / :func:`forget` -- after an apply, a network that is
  gone (its containers detached, its directory removed) and the others' records; at
  reset, all of them.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from typing import TYPE_CHECKING

from crossnet import program
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.errors import ConfigError
from crossnet.plan.env import Env
from crossnet.state import StateDir, crash_point, write_json_atomic

if TYPE_CHECKING:
    from crossnet.config import Cluster
    from crossnet.netmodel import NamedNetwork

DEFAULT = "default"
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,11}")  # = netmodel.NETWORK_NAME_RE (not imported: keeps pydantic out)


def contexts(cluster: Cluster, ctx: HostContext, backend: Backend) -> dict[str, HostContext]:
    """This host's context of each of ``cluster.networks`` (``ctx``: the top-level one)."""
    out: dict[str, HostContext] = {}
    base = program.Settings.of_cluster(cluster)
    for i, net in enumerate(cluster.networks):
        subnets = cluster.network_subnets(i)
        settings = named_settings(base, net, cluster.subnet_len, cluster.network_vni(i), cluster.masquerade)
        peers = [Peer(p.name, p.address, subnets[p.name], p.data, p.transport) for p in ctx.peers]
        out[net.name] = one_context(settings, ctx, backend, subnets[ctx.host], peers, net.name)
    return out


def named_settings(base: program.Settings, net: NamedNetwork, subnet_len: int, vni: int,
                   masquerade: bool) -> program.Settings:
    """A named network's own settings from the top-level ``base`` (its CIDR, subnet length,
    bridge, VNI; its ``masquerade:``, else the top-level one; WireGuard's device and port,
    crossnet.wg.named) — the cluster file's and the
    store's (crossnet.netstore) one rule."""
    from crossnet.wg import named

    wireguard, auto = named.settings(base.wireguard, base.auto, base.vni, vni, net.wireguard_port)
    return replace(base, network=net.network, prefixlen=net.subnet_len or subnet_len, bridge=net.bridge_name(),
                   vni=vni, masquerade=masquerade if net.masquerade is None else net.masquerade,
                   wireguard=wireguard, auto=auto)


def one_context(settings: program.Settings, ctx: HostContext, backend: Backend, subnet, peers: list[Peer],
                name: str) -> HostContext:
    """This host's context of named network ``name`` (``settings``: its own), from the top-level ``ctx``."""
    one = program.context(settings, backend, host=ctx.host, address=ctx.address, iface=ctx.iface,
                          subnet=subnet, nic=_Nic(ctx.underlay_mtu, ctx.nic_mac),  # type: ignore[arg-type]
                          peers=peers, state_dir=ctx.state_dir)
    # one underlay, one backend: the top-level container MTU (path MTU included), less what the
    # network's own tunnel key adds (ovs-gre)
    one.mtu = ctx.mtu - backend.key_overhead
    one.net_name = name
    return one


def check_kept(applied: dict | None, nets: dict[str, HostContext]) -> None:
    """A network's subnet on this host never moves while it exists (its containers would
    keep stale addresses): a ConfigError naming the network, before any change."""
    old = (applied or {}).get("networks") or {}
    for name, ctx in nets.items():
        held = (old.get(name) or {}).get("subnet") if isinstance(old.get(name), dict) else None
        if held is not None and held != str(ctx.subnet):
            raise ConfigError(
                f"networks[{name}]: the cluster file now gives host {ctx.host} {ctx.subnet}, but it was applied with "
                f"{held} (hosts inserted, removed or reordered, or its network changed); to renumber it, apply "
                f"without network {name} first (its containers are detached), then with it")


class _Nic:
    """The NIC facts program.context reads (the top-level context already read them)."""

    def __init__(self, mtu: int, mac: str | None):
        self.mtu, self.mac = mtu, mac


def state_of(state: StateDir, name: str) -> StateDir:
    """The state dir of network ``name`` (``default``: ``state`` itself)."""
    if name == DEFAULT:
        return state
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"--network: invalid network name {name[:40]!r} (lower-case letters and digits, "
                          "at most 12, starting with a letter)")
    return StateDir(state.root / "networks" / name)


def recorded(state: StateDir) -> list[str]:
    """The networks this host has records of (their state dirs)."""
    base = state.root / "networks"
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if d.is_dir() and NAME_RE.fullmatch(d.name))


def check_known(state: StateDir, name: str) -> StateDir:
    """``name``'s state dir when this host was applied with it, else a ConfigError naming the known ones."""
    sub = state_of(state, name)
    if name != DEFAULT and not sub.applied_path.exists():
        known = ", ".join([DEFAULT, *recorded(state)])
        raise ConfigError(f"--network: this host has no network {name!r} (applied: {known})")
    return sub


def prune(state: StateDir, keep: set[str], backend: Backend, env: Env) -> None:
    """After an apply: a network no longer in the file has its containers detached and
    its state dir removed (its bridge, VNI and rules went with the apply)."""
    for name in recorded(state):
        if name not in keep:
            _forget_one(state, name, backend, env)


def record(state: StateDir, host: str, networks: dict[str, HostContext]) -> None:
    """Each network's own record (its context), after program_host recorded everything."""
    for name, net in networks.items():
        sub = state_of(state, name)
        os.makedirs(sub.root, mode=0o700, exist_ok=True)
        write_json_atomic(sub.applied_path, {"version": 1, "host": host, "network": name,
                                             "context": net.to_json(), "resources": []})
        crash_point()  # test hook (CROSSNET_TEST_CRASH_AT)


def follow_mtu(state: StateDir, applied: dict | None, networks: dict[str, HostContext]) -> dict[str, list[str]]:
    """After an apply: a network whose container MTU changed since the last one (a
    measured path MTU, `mtu:`) has its running containers follow, like the top-level
    network's (crossnet.transport.pmtu.update_containers). Returns network -> ids changed."""
    from crossnet.transport import pmtu

    old = (applied or {}).get("networks") or {}
    out = {}
    for name, net in networks.items():
        was = (old.get(name) or {}).get("mtu") if isinstance(old.get(name), dict) else None
        if was is not None and was != net.mtu:
            out[name] = pmtu.update_containers(state_of(state, name), net)
    return out


def gc(state: StateDir, backend: Backend, dry_run: bool = False) -> list[dict]:
    """`crossnet gc` for every named network of this host: each one's containers whose
    namespace is gone (containers.gc on its own IPAM), each item naming its network."""
    from crossnet import containers

    out = []
    for name in recorded(state):
        sub = state_of(state, name)
        if sub.applied_path.exists():
            out += [{**item, "network": name}
                    for item in containers.gc(sub, HostContext.applied(sub), backend, dry_run=dry_run)]
    return out


def forget(state: StateDir, backend: Backend, env: Env) -> None:
    """reset: every network's containers detached and its state dir removed."""
    for name in recorded(state):
        _forget_one(state, name, backend, env)
    with_base = state.root / "networks"
    if with_base.is_dir() and not any(with_base.iterdir()):
        with_base.rmdir()


def _forget_one(state: StateDir, name: str, backend: Backend, env: Env) -> None:
    from crossnet import containers

    sub = state_of(state, name)
    data = sub.load_applied()
    if data and data.get("context"):
        containers.detach_all(sub, HostContext.from_json(data["context"]), backend, env)
        crash_point()
    shutil.rmtree(sub.root, ignore_errors=True)


def status(state: StateDir, applied: dict | None) -> dict:
    """`status`: each named network's subnet, bridge, VNI and containers (none: no key)."""
    from crossnet import containers

    nets = (applied or {}).get("networks") or {}
    if not nets:
        return {}
    out = {}
    for name, c in nets.items():
        sub = state_of(state, name)
        routed = c.get("datapath", "kernel") == "ebpf"  # routed container veths: no bridge (crossnet.datapath)
        out[name] = {"network": c.get("network"), "subnet": c.get("subnet"), "gateway": c.get("gateway"),
                     "bridge": None if routed else c.get("bridge"), "vni": c.get("vni"),
                     "layout": "routed" if routed else "bridge", "devices": carriers(c), "peers": peers_of(c),
                     "containers": containers.list_containers(sub) if sub.applied_path.exists() else []}
    return {"networks": out}


CARRIER_KINDS = ("vxlan", "wireguard-device", "ovs-bridge")  # the devices that keep a network apart between hosts


def carriers(context: dict) -> list[dict]:
    """The devices that carry a named network between hosts, as its backend describes
    them for its recorded context (its own VXLAN device, WireGuard device and port, OVS
    bridge; none for host-gw: routes): [{"kind", "name"[, "port"]}]. A record that does
    not load says nothing (its network's other fields still show)."""
    from crossnet.backends import get_backend
    from crossnet.backends.base import HostContext

    try:
        ctx = HostContext.from_json(context)
        resources = get_backend(ctx.backend).local_resources(ctx)
    except Exception:  # noqa: BLE001 - a damaged record: status shows the rest
        return []
    out = []
    for r in resources:
        if r.kind in CARRIER_KINDS:
            out.append({"kind": r.kind, "name": r.name, **({"port": r.port} if r.kind == "wireguard-device" else {})})
    return out


def peers_of(context: dict) -> list[dict]:
    """The peers of a named network as its recorded context holds them, each with the
    transport that reaches it: backend auto's choice recorded for that peer (the one
    the agent or apply programmed; crossnet.backends.auto.transport_of), else the
    backend's one transport (crossnet.transport.connections): [{"name", "address",
    "subnet", "transport"}]. A record that does not load says nothing."""
    from crossnet.backends.base import HostContext
    from crossnet.transport.connections import BACKEND_TRANSPORT

    try:
        ctx = HostContext.from_json(context)
        if ctx.backend == "auto":
            from crossnet.backends.auto import transport_of

            how = [transport_of(ctx, p) for p in ctx.peers]
        else:
            how = [BACKEND_TRANSPORT.get(ctx.backend, ctx.backend)] * len(ctx.peers)
    except Exception:  # noqa: BLE001 - a damaged record: status shows the rest
        return []
    return [{"name": p.name, "address": str(p.address), "subnet": str(p.subnet), "transport": t}
            for p, t in zip(ctx.peers, how, strict=True)]


def peers_text(peers: list[dict]) -> str:
    """`status`'s line of a named network's peers, grouped by transport:
    ``peers over vxlan: h2 10.33.1.0/24, h3 10.33.2.0/24; over wireguard: h4 …`` (none: ``no peers``)."""
    if not peers:
        return "no peers"
    groups: dict[str, list[str]] = {}
    for p in peers:
        groups.setdefault(p["transport"], []).append(f"{p['name']} {p['subnet']}")
    return "peers " + "; ".join(f"over {t}: {', '.join(names)}" for t, names in groups.items())
