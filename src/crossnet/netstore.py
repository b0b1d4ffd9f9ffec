"""Named networks under a store (docs/networks.md, "Under a store"): what the agent adds
to the one path for them.

The store's network config carries ``networks`` (validated like the cluster file's,
crossnet.netmodel.named_network_problems); every host leases one subnet per named
network (crossnet.store.etcd, the rules of crossnet.leases) and lists them in its
record (``networks``: name -> subnet, validated by crossnet.store.records). Here, pure
but for reading state dirs:

* :func:`contexts` -- this host's `HostContext` of each named network it holds a
  subnet of, with the peers that hold one too (crossnet.networks.one_context, as apply);
  `program.program_host(networks=…)` programs them and the isolation.
* :func:`view` -- what peers' subnets of the named networks are checked against.
* :func:`kept` -- networks gone from the config that this host keeps because
  containers are still attached to them (removed once they are detached), and
  :func:`effective` -- the config with them.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from crossnet import networks, program
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.state import StateDir

if TYPE_CHECKING:
    from crossnet.netmodel import NamedNetwork, NetworkConfig


def contexts(cfg: NetworkConfig, ctx: HostContext, backend: Backend, own: dict[str, IPv4Network],
             peers: list[tuple[Peer, dict[str, IPv4Network]]]) -> dict[str, HostContext]:
    """This host's context of each of ``cfg.networks`` it holds a subnet of (``own``);
    ``peers``: each usable peer of the top-level network with its subnets of the named
    networks (a peer without one is no peer of that network)."""
    base = program.Settings.of_config(cfg)
    out: dict[str, HostContext] = {}
    for i, net in enumerate(cfg.networks):
        subnet = own.get(net.name)
        if subnet is None:
            continue
        settings = networks.named_settings(base, net, cfg.subnet_len, cfg.network_vni(i), cfg.masquerade)
        members = [Peer(p.name, p.address, subs[net.name], p.data, p.transport) for p, subs in peers if net.name in subs]
        out[net.name] = networks.one_context(settings, ctx, backend, subnet, members, net.name)
    return out


def view(cfg: NetworkConfig, own: dict[str, IPv4Network]) -> dict[str, tuple[IPv4Network, int, IPv4Network | None]]:
    """name -> (CIDR, subnet_len, this host's subnet): crossnet.store.records.LocalView.networks."""
    return {n.name: (n.network, n.subnet_len or cfg.subnet_len, own.get(n.name)) for n in cfg.networks}


def kept(cfg: NetworkConfig, state: StateDir) -> list[NamedNetwork]:
    """The networks this host has records of that ``cfg`` no longer names and that still
    have containers attached: kept (as they were applied) until those are detached."""
    from crossnet import containers, netconfig

    names = {n.name for n in cfg.networks}
    out = []
    for name in networks.recorded(state):
        sub = networks.state_of(state, name)
        if name in names or not [c for c in containers.list_containers(sub) if c.get("state") != "stale"]:
            continue
        c = (sub.load_applied() or {}).get("context") or {}
        try:
            out.append(netconfig.named(name=name, network=c["network"], subnet_len=c["prefixlen"], vni=c["vni"],
                                    bridge=c["bridge"], wireguard_port=(c.get("wireguard") or {}).get("port")))
        except (KeyError, ValueError, TypeError):
            continue  # an unreadable record: nothing to keep it by (reset removes it)
    return out


def effective(cfg: NetworkConfig, extra: list[NamedNetwork]) -> NetworkConfig:
    """``cfg`` with the ``extra`` (kept) networks appended; a ConfigError when they clash
    with the config's (the caller keeps what it has)."""
    if not extra:
        return cfg
    from crossnet import netconfig

    data = {k: getattr(cfg, k) for k in type(cfg).model_fields}
    data["networks"] = [*cfg.networks, *extra]
    return netconfig.build(**data)


def pin_vnis(cfg: NetworkConfig, old: NetworkConfig | None) -> NetworkConfig:
    """``cfg`` with every named network's VNI written out, as `etcd init` and `launch`
    store it: one given stays; else the VNI the store's config ``old`` gives the network
    of that name; else the lowest one free above the top-level VNI. So removing or
    reordering networks later never moves another network's VNI (its devices would be
    replaced under its containers)."""
    if not cfg.networks:
        return cfg
    from crossnet import netconfig

    before = {n.name: old.network_vni(i) for i, n in enumerate(old.networks)} if old is not None else {}
    used = {cfg.vxlan.vni} | {n.vni for n in cfg.networks if n.vni}
    pinned = []
    for net in cfg.networks:
        vni = net.vni
        if vni is None and before.get(net.name) not in (None, *used):
            vni = before[net.name]
        if vni is None:
            vni = next(v for v in range(cfg.vxlan.vni + 1, 1 << 24) if v not in used)
        used.add(vni)
        pinned.append(net.model_copy(update={"vni": vni}))
    data = {k: getattr(cfg, k) for k in type(cfg).model_fields}
    data["networks"] = pinned
    return netconfig.build(**data)
