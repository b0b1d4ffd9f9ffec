"""apply / reset / status for this host.

apply: cluster file -> this host, its subnet and its peers -> crossnet.program.program_host
(HostContext -> backend resources (+ forwarding, masquerade) -> reconcile against what is
in the kernel and what the previous apply recorded -> applied.json), the one path the
agent takes too. The record (<state-dir>/applied.json) is what `reset`, `attach` and
`status` use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet import networks, program
from crossnet.backends import get_backend
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.errors import ApplyError, ConfigError
from crossnet.netlink import iproute as nl
from crossnet.plan.env import Env
from crossnet.plan.reconciler import Change, teardown
from crossnet.plan.resources import Resource
from crossnet.program import (  # noqa: F401 - today's names, kept for their importers
    NFT_TABLE,
    StateJournal,
    check_routes,
    common_resources,
    desired_resources,
    record_extras,
)
from crossnet.state import StateDir
from crossnet.transport import pmtu

if TYPE_CHECKING:  # annotations only: keeps pydantic out of the agent's memory (RSS budget)
    from crossnet.config import Cluster


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


def build_context(cluster: Cluster, host_name: str, env: Env, backend: Backend, state_dir: str = "") -> HostContext:
    """This host's context from the cluster file (crossnet.program.context)."""
    host = cluster.host(host_name)
    nic = nl.link_info(env.ipr, host.iface)
    if nic is None:
        raise ConfigError(f"hosts[{host_name}].iface: interface {host.iface!r} does not exist on this host")
    subnets = cluster.host_subnets()
    peers = [
        Peer(peer.name, peer.address, subnets[peer.name],
             {**backend.host_data(cluster.name, peer.name, peer.address), **peer.published_data()})
        for peer in cluster.peers_of(host_name)
    ]
    return program.context(program.Settings.of_cluster(cluster), backend, host=host_name, address=host.address,
                           iface=host.iface, subnet=subnets[host_name], gateway=cluster.gateway_of(host_name),
                           nic=nic, peers=peers, state_dir=state_dir)


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


def load_record(state: StateDir) -> tuple[dict | None, bool]:
    """The record of what crossnet owns, and whether it is an interrupted apply's journal.
    When an apply was interrupted its journal is the record: it lists everything
    applied.json does plus everything that apply may have created, with what must be
    restored (see crossnet.state)."""
    applied = state.load_applied()
    journal = state.load_journal()
    # a journal of another host's record is not this record's (cannot happen through apply)
    if journal and journal.get("resources") is not None and (not applied or applied.get("host") == journal.get("host")):
        return journal, True
    return applied or None, False


def load_previous(state: StateDir) -> tuple[dict | None, list[Resource]]:
    """The record of what crossnet owns (:func:`load_record`) and its resources."""
    applied, _interrupted = load_record(state)
    return applied, record_resources(applied)


def record_resources(applied: dict | None) -> list[Resource]:
    if not applied:
        return []
    backend_name = (applied.get("context") or {}).get("backend")
    if backend_name:
        get_backend(backend_name)  # its module registers the resource kinds it records (e.g. ovs-*)
    return [Resource.from_json(r) for r in applied.get("resources", [])]


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
        ctx = build_context(cluster, host_name, env, backend, state_dir=str(state.root))
        backend.prepare_context(ctx, env)  # e.g. backend auto: each peer's first transport
        check_subnet_kept(cluster, applied, ctx)
        check_local_data(cluster, host_name, backend, ctx, create=not dry_run)
        path_mtu = pmtu.for_apply(ctx, backend, applied, probe=probe_mtu)  # lowers ctx.mtu (crossnet.transport.pmtu)
        # the one path (crossnet.program): context -> resources -> reconcile -> applied.json
        source = {"cluster": cluster.to_dict(), **({"path_mtu": path_mtu} if path_mtu else {})}
        nets = networks.contexts(cluster, ctx, backend)  # the named networks (docs/networks.md)
        networks.check_kept(applied, nets)
        done = program.program_host(state, env, ctx, backend, previous, source, dry_run=dry_run,
                                    always_record=bool(applied) and path_mtu != applied.get("path_mtu"),
                                    mtu_was=(applied.get("context") or {}).get("mtu") if applied else None,
                                    networks=nets)
        if not dry_run:  # after the checks and the kernel: bad input changes nothing
            networks.prune(state, set(nets), backend, env)
            networks.record(state, host_name, nets)
            networks.follow_mtu(state, applied, nets)  # their running containers follow a changed MTU
        return ApplyResult(host_name, cluster.backend, done.changes, dry_run, ctx, time.perf_counter() - started)


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
            networks.forget(state, backend, env)  # the named networks' containers and records
            changes = teardown(previous, env)
        from crossnet import expose

        # `crossnet expose` is undone with the rest, before the record goes: a reset killed
        # in between is run again from the record (with no record it returns at once)
        expose.save(state.root, [])
        state.clear()
        return changes


def peer_status(ctx: HostContext, backend: Backend, env: Env) -> list[dict[str, Any]]:
    out = []
    for peer in ctx.peers:
        res = program.peer_resources(ctx, backend, peer)
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


REFUSES = "  # apply refuses: "  # in a drift entry: what follows is the line apply fails with


def drift_line(r: Resource, env: Env) -> str:
    """A drifted resource as status shows it: what apply would do, or why it refuses."""
    why = r.conflict(env)
    return r.describe() if why is None else f"{r.describe()}{REFUSES}{why}"


def status(state: StateDir) -> dict[str, Any]:
    from crossnet import containers, datapath
    from crossnet.transport import connections

    # an interrupted apply's journal is the record (load_record): a first apply killed
    # half-way is reported with what it may have changed, not as "not configured yet"
    applied, interrupted = load_record(state)
    previous = record_resources(applied)
    if interrupted:
        ctx = HostContext.from_json(applied["context"])
        backend = get_backend(ctx.backend)
    else:
        ctx, backend = load_context(state)
    with nl.open_ipr() as ipr:
        env = Env(ipr)
        local_ok = all(r.check(env) for r in backend.local_resources(ctx))
        drift = [drift_line(r, env) for r in previous if not r.check(env)]
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
        "datapath": datapath.describe(ctx),  # docs/datapath.md
        "local_programmed": local_ok,
        "interrupted": interrupted,  # an apply (or agent sync) was killed: apply completes it, reset undoes it
        "drift": drift,
        "peers": peers,
        # per-peer transport (crossnet.transport.connections), with the measured path MTUs
        "connections": connections.rows(state, ctx, pmtu.paths_of((applied or {}).get("path_mtu"), ctx)),
        "containers": containers.list_containers(state),
        **networks.status(state, applied),
        **path_mtu,
        **extra,
    }


__all__ = ["apply", "reset", "status", "load_context", "ApplyResult", "IPv4Address", "IPv4Network", "ApplyError"]
