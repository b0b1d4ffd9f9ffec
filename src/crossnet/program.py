"""The one path from a network description to the kernel of this host.

    network settings ─┐  (the cluster file: config.Cluster; a store: store.NetworkConfig)
    this host's lease ├─► context() ─► HostContext
    peers             ┘
    HostContext ─► desired_resources() ─► plan.reconcile(…, StateJournal) ─► record() (applied.json)

`program_host` walks it. `crossnet apply` (crossnet.host.apply) and `crossnet agent`
(crossnet.agent.core.Agent.full_sync: the cluster file, etcd, the `crossnet launch` mesh) both
call it. The agent's watch events take a fast path for one peer at a time
(`program_peer`, then `program_local` for the local resources that list the peers),
built from the same context and the same resource functions, and recorded by the same
`record`.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet import datapath, expose
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.errors import ApplyError, ConfigError
from crossnet.netlink import garp
from crossnet.netlink import iproute as nl
from crossnet.plan.env import Env
from crossnet.plan.reconciler import Change, Journal, Outcome, pending, reconcile
from crossnet.plan.resources import (
    Bridge,
    BridgeNetfilterOff,
    NftTable,
    Resource,
    Sysctl,
)
from crossnet.state import StateDir, crash_point

if TYPE_CHECKING:  # annotations only: keeps pydantic out of the agent's memory (RSS budget)
    from crossnet.config import Cluster

log = logging.getLogger("crossnet.agent")
NFT_TABLE = "crossnet"
NETWORKS_NAT_TABLE = "crossnet_nat"  # the named networks' masquerade (docs/networks.md)


# ---------------------------------------------------------------- 1. the context


@dataclass(frozen=True)
class Settings:
    """The cluster-wide settings a HostContext takes, whichever model they come from."""

    name: str
    backend: str
    network: IPv4Network  # where containers live (the overlay network, or the LAN for bridge)
    prefixlen: int  # prefix length of container addresses
    bridge: str
    mtu: int | None  # None: the NIC's
    masquerade: bool
    vni: int
    port: int
    wireguard: dict
    auto: dict = field(default_factory=dict)  # backend auto's settings (encrypt, probe_network)
    datapath: str = "kernel"  # kernel | ebpf (crossnet.datapath)

    @classmethod
    def of_cluster(cls, cluster: Cluster) -> Settings:
        return cls(cluster.name, cluster.backend, cluster.container_network(), cluster.container_prefixlen(),
                   cluster.bridge_name(), cluster.mtu, cluster.masquerade, cluster.vxlan.vni, cluster.vxlan.port,
                   *cluster.transport_settings(), datapath=cluster.datapath)

    @classmethod
    def of_config(cls, cfg: Any) -> Settings:
        """From a store's settings (crossnet.store.NetworkConfig, a layer below this one)."""
        return cls(cfg.name, cfg.backend, cfg.network, cfg.subnet_len, cfg.bridge_name, cfg.mtu, cfg.masquerade,
                   cfg.vni, cfg.port, *cfg.transport_settings(), datapath=getattr(cfg, "datapath", "kernel"))


def context(settings: Settings, backend: Backend, *, host: str, address: IPv4Address, iface: str,
            subnet: IPv4Network, nic: nl.LinkInfo, peers: list[Peer], state_dir: str = "",
            gateway: IPv4Address | None = None) -> HostContext:
    """THE HostContext: the settings, this host (name, underlay address and NIC, its
    subnet; `gateway` defaults to the subnet's first address) and its peers. The NIC's
    kernel facts give the MTU (unless the settings fix it) and the MAC."""
    underlay_mtu = settings.mtu or nic.mtu
    return HostContext(
        cluster_name=settings.name,
        backend=settings.backend,
        host=host,
        address=address,
        iface=iface,
        subnet=subnet,
        network=settings.network,
        gateway=gateway if gateway is not None else subnet.network_address + 1,
        prefixlen=settings.prefixlen,
        bridge=settings.bridge,
        underlay_mtu=underlay_mtu,
        mtu=underlay_mtu - backend.overhead,
        masquerade=settings.masquerade,
        vni=settings.vni,
        port=settings.port,
        nic_mac=nic.mac,
        peers=list(peers),
        state_dir=state_dir,
        wireguard=dict(settings.wireguard),
        auto=dict(settings.auto),
        datapath=settings.datapath,
    )


def peer_usable(ctx: HostContext, backend: Backend, env: Env, peer: Peer) -> bool:
    """Whether `peer` can be programmed from here (backends that need one L2 segment);
    the agent skips, and logs, a peer that cannot (apply refuses the whole cluster)."""
    if not backend.needs_l2:
        return True
    try:
        backend.check_underlay(HostContext(**{**ctx.__dict__, "peers": [peer]}), env)
    except ApplyError as exc:
        log.error("peer %s skipped: %s", peer.name, exc)
        return False
    return True


# ---------------------------------------------------------------- 2. the resources


def common_resources(ctx: HostContext) -> list[Resource]:
    out: list[Resource] = [Sysctl("net.ipv4.ip_forward", "1")]
    if ctx.masquerade:
        out.append(NftTable("ip", NFT_TABLE, _masquerade_body([ctx])))
    return out + expose.resources(ctx)  # `crossnet expose`: this host's address in the network


def _masquerade_body(ctxs: list[HostContext]) -> str:
    """One postrouting chain: each network's containers reach what lies outside it from
    this host's address (the nft text `nft list table` prints back, line by line)."""
    rules = "".join(f"    ip saddr {c.subnet} ip daddr != {c.network} masquerade\n" for c in ctxs)
    return "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n" + rules + "  }"


def bridge_netfilter_off(resources: list[Resource]) -> list[Resource]:
    """`resources` + bridge netfilter off while the Linux bridges among them are the
    namespace's only ones (plan.resources.BridgeNetfilterOff), right after the last of
    them (it exists then; and local_resources + the peers' parts stay desired_resources)."""
    at = [i for i, r in enumerate(resources) if isinstance(r, Bridge)]
    if not at:
        return resources
    ours = sorted({resources[i].name for i in at})
    return resources[:at[-1] + 1] + [BridgeNetfilterOff(ours)] + resources[at[-1] + 1:]


def desired_resources(ctx: HostContext, backend: Backend, extra: list[Resource] | None = None) -> list[Resource]:
    """Everything this host must have: forwarding (+ masquerade), the backend's local
    resources and every peer's, in the backend's order (+ `extra`: the named networks')."""
    return bridge_netfilter_off(datapath.one_program_set(common_resources(ctx) + backend.resources(ctx) + (extra or [])))


def network_resources(ctx: HostContext, backend: Backend, networks: dict[str, HostContext]) -> list[Resource]:
    """What the named networks add (docs/networks.md): each network's own local and peer
    resources from the same backend, and the nftables isolation between all of them."""
    if not networks:
        return []
    extra = [r for net in networks.values() for r in backend.resources(net)]
    nat = [net for net in networks.values() if net.masquerade]
    if nat:  # their own table: the top-level one (NFT_TABLE) stays as a one-network file makes it
        extra.append(NftTable("ip", NETWORKS_NAT_TABLE, _masquerade_body(nat)))
    extra += [r for name, net in networks.items() for r in expose.resources(net, network=name)]  # `expose --network`
    return extra + isolation_resources(ctx, backend, networks)


def isolation_resources(ctx: HostContext, backend: Backend, networks: dict[str, HostContext]) -> list[Resource]:
    """The nftables isolation between the top-level network (``default``) and the named
    ones (crossnet.netiso), told which devices each network's packets enter by alone."""
    from crossnet import netiso

    nets = {"default": ctx, **networks}
    return netiso.isolation_resources(nets, {name: backend.ingress_devices(net) for name, net in nets.items()})


def local_resources(ctx: HostContext, backend: Backend) -> list[Resource]:
    """desired_resources without the peers' own (those may still be listed, e.g. OVS flows)."""
    return bridge_netfilter_off(common_resources(ctx) + backend.local_resources(ctx))


def peer_resources(ctx: HostContext, backend: Backend, peer: Peer) -> list[Resource]:
    """One peer's part of desired_resources."""
    return backend.peer_resources(ctx, peer)


def check_routes(ctx: HostContext, env: Env, owned: list[Resource], desired: list[Resource] = ()) -> None:
    """The container network must not overlap routes this host already has (other than
    the ones crossnet made -- `owned`, its record -- and the LAN itself for the bridge
    backend). A route to exactly a destination crossnet is about to route (`desired`) is
    in the way too unless it is that very route (same gateway and device) made by crossnet
    (its protocol number, RTPROT_CROSSNET): crossnet's `ip route replace` would silently
    take it over, and `reset` then delete it -- an admin's identical route too."""
    owned_dsts = {r.dst for r in owned if getattr(r, "dst", None) and r.kind == "route"}
    wanted = {(r.dst, r.gateway, (env.index(r.dev) or -1) if r.dev else None)  # -1: its device is not there yet
              for r in desired if r.kind == "route" and getattr(r, "dst", None)}
    ours = {env.index(ctx.bridge)} | {env.index(f"cnvx{ctx.vni}")} | datapath.container_devices(ctx, env)
    for r in env.routes():
        if r.dst == "0.0.0.0/0" or r.dst in owned_dsts or r.oif in ours:
            continue
        if r.proto == nl.RTPROT_CROSSNET and ((r.dst, r.gateway, r.oif) in wanted or (r.dst, r.gateway, None) in wanted):
            continue
        if ctx.backend == "bridge" and ipaddress.ip_network(r.dst) == ctx.network:
            continue
        net = ipaddress.ip_network(r.dst)
        if net.overlaps(ctx.network):
            dev = nl.link_info(env.ipr, index=r.oif).name if r.oif else "?"
            via = f" via {r.gateway}" if r.gateway else ""
            raise ConfigError(
                f"network: container network {ctx.network} overlaps this host's route {r.dst}{via} dev {dev}"
            )


# ---------------------------------------------------------------- 3. the record


def record_extras(ctx: HostContext) -> dict:
    """What applied.json records beyond the context: for the ovs backends, which Open
    vSwitch this host uses (`crossnet trace --peer-state-dir` on another host reads it;
    it must never guess, see crossnet.trace.ovs.find_rundir)."""
    if not ctx.backend.startswith("ovs"):
        return {}
    import os

    from crossnet.ovs.db import rundir

    return {"ovs_rundir": os.path.abspath(rundir())}


def record_header(ctx: HostContext, source: dict[str, Any]) -> dict:
    """applied.json's (and the journal's) description of this host, without resources.
    `source`: where the settings came from ({"cluster": …} for apply; {"store": …,
    "network_config": …} for the agent)."""
    return {"version": 1, "host": ctx.host, **source, "context": ctx.to_json(), **record_extras(ctx)}


def record(state: StateDir, header: dict, resources: list[Resource]) -> None:
    """applied.json: what this host owns now (what `reset`, `attach`, `status` read)."""
    state.save_applied({**header, "resources": [r.to_json() for r in resources]})


class StateJournal(Journal):
    """The write-ahead record in the state dir (journal.json, fsync'd). A journal an
    interrupted run left is the record this run starts from (host.load_previous): a
    rollback puts it back as it was instead of discarding it, since what that run made
    is on no other record."""

    def __init__(self, state: StateDir, header: dict):
        self.state = state
        self.header = header
        self.resumed = state.load_journal() if state.journal_path.exists() else None

    def write(self, resources: list[Resource]) -> None:
        self.state.save_journal({**self.header, "resources": [r.to_json() for r in resources]})
        crash_point()

    def discard(self) -> None:
        self.state.clear_journal()

    def rolled_back(self, owned: list[Resource]) -> None:
        if self.resumed is not None:
            self.state.save_journal(self.resumed)
        else:
            self.discard()


# ---------------------------------------------------------------- the path


@dataclass
class Programmed:
    """What program_host did: the changes (or, with dry_run, those it would make), the
    resources it wanted, and what this host owns now (None with dry_run)."""

    changes: list[Change]
    desired: list[Resource]
    owned: list[Resource] | None


def program_host(state: StateDir, env: Env, ctx: HostContext, backend: Backend, previous: list[Resource],
                 source: dict[str, Any], *, dry_run: bool = False, check_underlay: bool = True,
                 protect_routes: bool = True, always_record: bool = False,
                 mtu_was: int | None = None, networks: dict[str, HostContext] | None = None) -> Programmed:
    """HostContext -> desired_resources -> reconcile (with the journal) -> record.

    `previous`: what the record says this host owns (host.load_previous). Checks first,
    before anything changes: the peers are reachable the way the backend needs
    (`check_underlay`; the agent checks peer by peer with peer_usable instead), the
    container network overlaps no route of this host (`protect_routes`). `dry_run`:
    only say what would change. applied.json is written when something changed, when
    there was no record, when an interrupted run left a journal, or `always_record`.
    `mtu_was`: the container MTU of the last run; when ctx.mtu differs (a measured path
    MTU changed it, crossnet.transport.pmtu), running containers' veths follow.
    `networks`: this host's context of every named network (docs/networks.md),
    programmed and recorded with the top-level one."""
    networks = networks or {}
    datapath.check_switch(state, ctx, env)
    desired = desired_resources(ctx, backend, network_resources(ctx, backend, networks))
    if check_underlay:
        for one in (ctx, *networks.values()):  # ovs: each network's own OVS bridge and ports too
            backend.check_underlay(one, env)
    if protect_routes:
        for one in (ctx, *networks.values()):
            check_routes(one, env, previous, desired)
    if dry_run:
        return Programmed(pending(desired, previous, env), desired, None)
    header = record_header(ctx, source)
    if networks:
        header["networks"] = {name: net.to_json() for name, net in networks.items()}
    unrecorded = not state.applied_path.exists() or state.journal_path.exists()
    outcome: Outcome = reconcile(desired, previous, env, StateJournal(state, header))
    garp.announce(ctx, env.ipr)  # peers learn a new NIC MAC now, not after ~30 s (crossnet.netlink.garp)
    if outcome.changes or unrecorded or always_record:
        record(state, header, outcome.resources)
    if mtu_was is not None and mtu_was != ctx.mtu:
        from crossnet.transport import pmtu

        pmtu.update_containers(state, ctx)  # running containers follow a changed MTU
    return Programmed(outcome.changes, desired, outcome.resources)


def program_local(ctx: HostContext, backend: Backend, env: Env, owned: list[Resource]) -> Outcome:
    """Fast path (agent events): the local resources alone, against what they owned."""
    return reconcile(local_resources(ctx, backend), owned, env)


def program_peer(ctx: HostContext, backend: Backend, env: Env, peer: Peer | None, owned: list[Resource]) -> Outcome:
    """Fast path (agent events): one peer's resources (none: `peer` is gone or not
    usable from here), against what that peer owned."""
    new = peer_resources(ctx, backend, peer) if peer is not None and peer_usable(ctx, backend, env, peer) else []
    return reconcile(new, owned, env)
