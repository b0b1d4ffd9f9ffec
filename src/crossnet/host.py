"""apply / reset / status for this host.

apply: cluster file -> HostContext -> backend resources (+ forwarding, masquerade)
-> reconcile against what is in the kernel and what the previous apply recorded.
The record (<state-dir>/applied.json) is what `reset`, `attach` and `status` use.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet.netlink import garp
from crossnet.netlink import iproute as nl
from crossnet.backends import get_backend
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.errors import ApplyError, ConfigError
from crossnet.plan.env import Env
from crossnet.plan.reconciler import Change, Journal, pending, reconcile, teardown
from crossnet.plan.resources import NftTable, Resource, Sysctl
from crossnet.state import StateDir, crash_point
from crossnet.transport import pmtu

if TYPE_CHECKING:  # annotations only: keeps pydantic out of the agent's memory (RSS budget)
    from crossnet.config import Cluster

NFT_TABLE = "crossnet"


def detect_host(cluster: Cluster, env: Env) -> str:
    """The cluster host whose underlay address is configured on this machine."""
    local = set()
    for link in env.ipr.get_links():
        for cidr in nl.addresses(env.ipr, link["index"]):
            local.add(cidr.split("/")[0])
    matches = [h.name for h in cluster.hosts if str(h.address) in local]
    if len(matches) != 1:
        names = ", ".join(h.name for h in cluster.hosts)
        raise ConfigError(
            f"--host: cannot tell which host this is (none of the hosts' addresses is configured here); pass --host ({names})"
            if not matches
            else f"--host: several hosts' addresses are configured here ({', '.join(matches)}); pass --host"
        )
    return matches[0]


def build_context(cluster: Cluster, host_name: str, env: Env, backend: Backend) -> HostContext:
    host = cluster.host(host_name)
    nic = nl.link_info(env.ipr, host.iface)
    if nic is None:
        raise ConfigError(f"hosts[{host_name}].iface: interface {host.iface!r} does not exist on this host")
    underlay_mtu = cluster.mtu or nic.mtu
    mtu = underlay_mtu - backend.overhead
    subnets = cluster.host_subnets()
    peers = []
    for peer in cluster.peers_of(host_name):
        peers.append(
            Peer(
                name=peer.name,
                address=peer.address,
                subnet=subnets[peer.name],
                data={**backend.host_data(cluster.name, peer.name, peer.address), **peer.published_data()},
            )
        )
    return HostContext(
        cluster_name=cluster.name,
        backend=cluster.backend,
        host=host_name,
        address=host.address,
        iface=host.iface,
        subnet=subnets[host_name],
        network=cluster.container_network(),
        gateway=cluster.gateway_of(host_name),
        prefixlen=cluster.container_prefixlen(),
        bridge=cluster.bridge_name(),
        underlay_mtu=underlay_mtu,
        mtu=mtu,
        masquerade=cluster.masquerade,
        vni=cluster.vxlan.vni,
        port=cluster.vxlan.port,
        nic_mac=nic.mac,
        peers=peers,
        wireguard=cluster.wireguard.model_dump() if cluster.backend in ("wireguard", "auto") else {},
        auto=cluster.auto.model_dump(mode="json") if cluster.backend == "auto" else {},
    )


def common_resources(ctx: HostContext) -> list[Resource]:
    out: list[Resource] = [Sysctl("net.ipv4.ip_forward", "1")]
    if ctx.masquerade:
        body = (
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {ctx.subnet} ip daddr != {ctx.network} masquerade\n"
            "  }"
        )
        out.append(NftTable("ip", NFT_TABLE, body))
    return out


def desired_resources(ctx: HostContext, backend: Backend) -> list[Resource]:
    return common_resources(ctx) + backend.resources(ctx)


def check_routes(ctx: HostContext, env: Env, owned: list[Resource]) -> None:
    """The container network must not overlap routes this host already has
    (other than the ones crossnet made, and the LAN itself for the bridge backend)."""
    owned_dsts = {r.dst for r in owned if getattr(r, "dst", None) and r.kind == "route"}
    ours = {env.index(ctx.bridge)} | {env.index(f"cnvx{ctx.vni}")}
    for r in env.routes():
        if r.dst == "0.0.0.0/0" or r.dst in owned_dsts or r.oif in ours:
            continue
        if ctx.backend == "bridge" and ipaddress.ip_network(r.dst) == ctx.network:
            continue
        net = ipaddress.ip_network(r.dst)
        if net.overlaps(ctx.network):
            dev = nl.link_info(env.ipr, index=r.oif).name if r.oif else "?"
            raise ConfigError(
                f"network: container network {ctx.network} overlaps this host's route {r.dst} dev {dev}"
            )


def check_subnet_kept(cluster: Cluster, applied: dict | None, ctx: HostContext) -> None:
    """Refuse to renumber this host: the subnet the previous apply recorded must be the
    one the cluster file gives now (hosts inserted/removed/reordered before it, or a
    changed network, move subnets; its containers would keep stale addresses)."""
    from crossnet.leases import check_kept

    old = ((applied or {}).get("context") or {}).get("subnet")
    i = next(i for i, h in enumerate(cluster.hosts) if h.name == ctx.host)
    check_kept(i, ctx.host, old, ctx.subnet, holds="was applied with",
               start_over="run `crossnet reset` first to renumber this host")


def check_local_data(cluster: Cluster, host_name: str, backend: Backend, ctx: HostContext, create: bool) -> None:
    """What only this host knows (its WireGuard public key) must be what the cluster
    file tells the other hosts about it."""
    for j, h in enumerate(cluster.hosts):
        for k in backend.required_host_data:
            if k not in h.published_data():
                raise ConfigError(
                    f"hosts[{j}].{k}: required for backend {backend.name} "
                    f"(run `crossnet keygen` on host {h.name} and paste the key it prints)"
                )
    own = backend.local_data(ctx.state_dir, create=create)
    i, spec = next((i, h) for i, h in enumerate(cluster.hosts) if h.name == host_name)
    declared = spec.published_data()
    for k, v in own.items():
        if k in declared and declared[k] != v:
            raise ConfigError(
                f"hosts[{i}].{k}: is not this host's key (its private key in {ctx.state_dir} gives "
                f"{v}; `crossnet keygen` prints it)"
            )


@dataclass
class ApplyResult:
    host: str
    backend: str
    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False
    context: HostContext | None = None
    elapsed_s: float = 0.0

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "backend": self.backend,
            "dry_run": self.dry_run,
            "changed": bool(self.changes),
            "changes": [{"action": c.action, "command": c.resource.describe()} for c in self.changes],
            "subnet": str(self.context.subnet) if self.context else None,
            "mtu": self.context.mtu if self.context else None,
            "elapsed_s": round(self.elapsed_s, 4),
        }


def load_previous(state: StateDir) -> tuple[dict | None, list[Resource]]:
    """The record of what crossnet owns. When an apply was interrupted its journal
    is the record: it lists everything applied.json does plus everything that apply
    may have created, with what must be restored (see crossnet.state)."""
    applied = state.load_applied()
    journal = state.load_journal()
    if journal and journal.get("resources") is not None:
        if applied and applied.get("host") != journal.get("host"):
            journal = None  # not this record's (cannot happen through apply)
        else:
            applied = journal
    if not applied:
        return None, []
    backend_name = (applied.get("context") or {}).get("backend")
    if backend_name:
        get_backend(backend_name)  # its module registers the resource kinds it records (e.g. ovs-*)
    return applied, [Resource.from_json(r) for r in applied.get("resources", [])]


def record_extras(ctx: HostContext) -> dict:
    """What applied.json records beyond the context: for the ovs backends, which Open
    vSwitch this host uses (`crossnet trace --peer-state-dir` on another host reads it;
    it must never guess, see crossnet.trace.ovs.find_rundir)."""
    if not ctx.backend.startswith("ovs"):
        return {}
    import os

    from crossnet.ovs.db import rundir

    return {"ovs_rundir": os.path.abspath(rundir())}


class StateJournal(Journal):
    """apply's write-ahead record in the state dir (journal.json, fsync'd)."""

    def __init__(self, state: StateDir, header: dict):
        self.state = state
        self.header = header

    def write(self, resources: list[Resource]) -> None:
        self.state.save_journal({**self.header, "resources": [r.to_json() for r in resources]})
        crash_point()

    def discard(self) -> None:
        self.state.clear_journal()


def apply(cluster: Cluster, state: StateDir, host_name: str | None = None, dry_run: bool = False,
          probe_mtu: bool = False) -> ApplyResult:
    started = time.perf_counter()
    backend = get_backend(cluster.backend)
    with state.lock(), nl.open_ipr() as ipr:
        env = Env(ipr, batch=True)  # this namespace: per-peer writes go out in bursts
        applied, previous = load_previous(state)
        recorded = applied.get("host") if applied else None
        if not host_name and recorded in {h.name for h in cluster.hosts}:
            host_name = recorded  # addresses may have moved (bridge/br-phy): trust the record
        host_name = host_name or detect_host(cluster, env)
        if applied and applied.get("host") != host_name:
            raise ConfigError(
                f"--host: this state dir belongs to host {applied.get('host')!r}; run `crossnet reset` first"
            )
        ctx = build_context(cluster, host_name, env, backend)
        ctx.state_dir = str(state.root)
        backend.prepare_context(ctx, env)
        check_subnet_kept(cluster, applied, ctx)
        check_local_data(cluster, host_name, backend, ctx, create=not dry_run)
        path_mtu = pmtu.for_apply(ctx, backend, applied, probe=probe_mtu)  # lowers ctx.mtu (crossnet.transport.pmtu)
        desired = desired_resources(ctx, backend)
        backend.check_underlay(ctx, env)
        check_routes(ctx, env, previous + desired)
        if dry_run:
            return ApplyResult(host_name, cluster.backend, pending(desired, previous, env), True, ctx,
                               time.perf_counter() - started)
        header = {"version": 1, "host": host_name, "cluster": cluster.to_dict(), "context": ctx.to_json(),
                  **record_extras(ctx), **({"path_mtu": path_mtu} if path_mtu else {})}
        interrupted = state.journal_path.exists()
        outcome = reconcile(desired, previous, env, StateJournal(state, header))
        garp.announce(ctx, ipr)  # peers learn a new NIC MAC now, not after ~30 s (crossnet.netlink.garp)
        if outcome.changes or not applied or interrupted or path_mtu != applied.get("path_mtu"):
            state.save_applied({**header, "resources": [r.to_json() for r in outcome.resources]})
        if applied and (applied.get("context") or {}).get("mtu") != ctx.mtu:
            pmtu.update_containers(state, ctx)  # running containers follow a changed MTU
        return ApplyResult(host_name, cluster.backend, outcome.changes, False, ctx, time.perf_counter() - started)


def load_context(state: StateDir) -> tuple[HostContext, Backend]:
    ctx = HostContext.applied(state)
    return ctx, get_backend(ctx.backend)


def reset(state: StateDir) -> list[Change]:
    """Remove every container attachment and every resource crossnet created."""
    from crossnet import containers

    with state.lock():
        applied, previous = load_previous(state)
        if applied is None:
            return []
        ctx = HostContext.from_json(applied["context"])
        backend = get_backend(ctx.backend)
        changes: list[Change] = []
        with nl.open_ipr() as ipr:
            env = Env(ipr)
            containers.detach_all(state, ctx, backend, env)
            changes = teardown(previous, env)
        state.clear()
        return changes


def peer_status(ctx: HostContext, backend: Backend, env: Env) -> list[dict[str, Any]]:
    out = []
    for peer in ctx.peers:
        res = backend.peer_resources(ctx, peer)
        programmed = all(r.check(env) for r in res)
        out.append(
            {
                "name": peer.name,
                "address": str(peer.address),
                "subnet": str(peer.subnet),
                "programmed": programmed,
                "resources": len(res),
            }
        )
    return out


def status(state: StateDir) -> dict[str, Any]:
    from crossnet import containers
    from crossnet.transport import connections

    ctx, backend = load_context(state)
    applied, previous = load_previous(state)
    with nl.open_ipr() as ipr:
        env = Env(ipr)
        local_ok = all(r.check(env) for r in backend.local_resources(ctx))
        drift = [r.describe() for r in previous if not r.check(env)]
        peers = peer_status(ctx, backend, env)
        path_mtu = pmtu.status_info(applied, ctx, peers)  # per-peer path MTU, narrow peers
        extra = backend.status_info(ctx, env)  # backend-specific extras (e.g. OVS datapath)
    return {
        "host": ctx.host,
        "cluster": ctx.cluster_name,
        "backend": ctx.backend,
        "address": str(ctx.address),
        "iface": ctx.iface,
        "subnet": str(ctx.subnet),
        "network": str(ctx.network),
        "gateway": str(ctx.gateway),
        "bridge": ctx.bridge,
        "mtu": ctx.mtu,
        "underlay_mtu": ctx.underlay_mtu,
        "masquerade": ctx.masquerade,
        "local_programmed": local_ok,
        "drift": drift,
        "peers": peers,
        "connections": connections.rows(state, ctx),  # per-peer transport (crossnet.transport.connections)
        "containers": containers.list_containers(state),
        **path_mtu,
        **extra,
    }


__all__ = ["apply", "reset", "status", "load_context", "ApplyResult", "IPv4Address", "IPv4Network", "ApplyError"]
