"""`crossnet agent`: keep this host programmed from a Store (etcd or the cluster file).

Start-up (each step retried with bounded exponential backoff while the store is
unreachable, uninitialised or refuses us; the data plane is left alone meanwhile):

1. read the network config;
2. register this host and lease a subnet (the previous one if still ours or free:
   the local lease file ``<state-dir>/agent.json`` and the store both remember it);
3. one full reconcile: local resources (bridge, gateway address, tunnel device, sysctl,
   nft) + every peer's resources, against what ``applied.json`` says we own. Resources
   that already match are not touched, so a restart never disturbs running containers;
   peers that vanished while we were away are removed;
4. then, in the main thread, apply peer changes from the watch one peer at a time,
   re-reconcile everything every ``--resync`` seconds (repairs drift), and re-register
   if the lease was lost.

Threads: keepalive (renews the lease every TTL/3), watch (streams peer changes into
the queue, resumes from the last revision after a reconnect, then re-reads a
snapshot), containers (publishes this host's containers in the store, next to its
registration, at start, after every attach/detach/CNI ADD/DEL through the API, at
every resync and after a re-registration; `crossnet check` on any host reads them),
and the local API (unix socket). Only the main thread touches the kernel's
routes/FDB/neighbours and applied.json.

SIGTERM/SIGINT: stop; the data plane stays as it is (the lease expires after TTL
unless the agent comes back first). With ``--release``: revoke the lease (peers drop
our routes at once), forget this host in the store, and reset this host like
``crossnet reset``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet import program, sdnotify
from crossnet.agent.health import lease_left
from crossnet.netlink import iproute as nl
from crossnet.backends import get_backend
from crossnet.backends.base import Backend, HostContext, Peer
from crossnet.errors import ApplyError, ConfigError, CrossnetError
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource
from crossnet.redact import MaskingFilter
from crossnet.state import StateDir, ensure_state_dir, lock_fd, read_json, write_json_atomic
from crossnet.store import (
    HostRecord,
    LeaseLost,
    PeerEvent,
    Snapshot,
    Store,
    StoreError,
    SubnetLease,
    validate_host_name,
)
from crossnet.store.records import LocalView, PeerBook, filter_containers
from crossnet.transport import pmtu

if TYPE_CHECKING:
    from crossnet.netmodel import NetworkConfig

log = logging.getLogger("crossnet.agent")
LOCAL_CHECK_INTERVAL = 1.0  # s between checks of the local data plane / published data (_check_local)


class Stopped(Exception):
    """The agent was asked to stop while waiting."""


@dataclass
class AgentOptions:
    name: str | None = None
    iface: str | None = None
    address: str | None = None
    ttl: int | None = None
    release: bool = False
    retries: int = 0  # give up after this many failed attempts of a start-up step; 0 = never
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    resync: float = 60.0
    api: bool = True
    # measure peers' path MTU (crossnet.transport.pmtu) at start, every resync, on join;
    # None: the backend's default (pmtu.probes_by_default: on for auto)
    probe_mtu: bool | None = None


def lease_path(state: StateDir) -> str:
    return str(state.root / "agent.json")


def socket_path(state: StateDir) -> str:
    return str(state.root / "agent.sock")


class Agent:
    def __init__(self, store: Store, state: StateDir, opts: AgentOptions):
        self.store = store
        self.state = state
        self.opts = opts
        self.stop = threading.Event()
        # what the main loop acts on; SimpleQueue: put() is safe in a signal handler (request_stop)
        self.queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.cfg: NetworkConfig | None = None  # the store's config (+ networks kept for their containers)
        self.nets: dict[str, HostContext] = {}  # this host's context of each named network (docs/networks.md)
        self.kept_networks: list[str] = []  # named networks gone from the store, kept for their containers
        self.store_cfg: NetworkConfig | None = None  # the config followed (the store's at start + its networks)
        self.config_pending: NetworkConfig | None = None  # a config change not taken yet (retried at resync)
        self.backend: Backend | None = None
        self.lease: SubnetLease | None = None
        self.ctx: HostContext | None = None
        self.dns: Any = None  # crossnet.dns.service.DnsService once started
        self.net_dns: dict[str, Any] = {}  # named network -> its DnsService (crossnet.agent.netdns)
        self.name = ""
        self.address: IPv4Address | None = None
        self.iface = ""
        self.peers: dict[IPv4Network, HostRecord] = {}  # the valid peers (crossnet.store.records)
        self.book = PeerBook()  # every live record of the store but our own, valid or not
        self.rejected_containers = 0
        self.base_res: list[Resource] = []  # common + local, as owned after the last full sync
        self.peer_res: dict[IPv4Network, list[Resource]] = {}
        self.revision = 0
        self.started = time.time()
        self.synced_at: float | None = None
        self.health: dict[str, str | None] = {"keepalive": None, "watch": None, "sync": None, "containers": None,
                                              "config": None}
        self.reacquire_at: float | None = None
        self.next_resync = 0.0
        self.next_local_check = 0.0
        self._threads: list[threading.Thread] = []
        self._lock_fh = None
        self._api = None
        self._ipr = None
        # containers publisher: requests are numbered; the thread publishes the latest
        self._pub_cond = threading.Condition()
        self._pub_wanted = 0
        self._local: Any = None  # crossnet.localcache.Readers: the container list per state dir, cached
        self._pub_done = 0
        self._published: tuple | None = None  # (lease id, containers) last written to the store
        self.pmtu = pmtu.Monitor.resume(state, opts.resync) if opts.probe_mtu else None
        self.transports = None  # backend auto: crossnet.transport.prober.Prober
        self.metrics: Any = None  # --metrics-address: crossnet.agent.metrics.AgentMetrics (sync/error hooks)
        self.lease_renewed: float | None = None  # monotonic time the lease was last granted or renewed
        self.data_plane_problem: str | None = None  # what the backend last said is broken locally (/healthz)

    # ------------------------------------------------------------------ helpers

    def _report(self, what: str, error: str | None) -> None:
        """Log a component's health only when it changes (no log spam while etcd is down)."""
        before = self.health.get(what)
        self.health[what] = error
        if error and self.metrics is not None:
            self.metrics.error(what)
        if error and error != before:
            log.error("%s: %s", what, error)
        elif not error and before:
            log.info("%s: recovered", what)

    def _count_error(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.error(what)

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        delay = self.opts.backoff_initial
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                return fn()
            except (StoreError, ApplyError) as exc:
                attempt += 1
                if self.metrics is not None:
                    self.metrics.error(what)
                limit = self.opts.retries
                if limit and attempt >= limit:
                    raise CrossnetError(f"{what}: {exc} (gave up after {attempt} attempts)") from None
                of = f"/{limit}" if limit else ""
                log.error("%s: %s; retrying in %.1fs (attempt %d%s)", what, exc, delay, attempt, of)
                if self.stop.wait(delay):
                    raise Stopped() from None
                delay = min(delay * 2, self.opts.backoff_max)

    def _env(self) -> Env:
        if self._ipr is None:
            self._ipr = nl.open_ipr()
        return Env(self._ipr)

    def _reset_ipr(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    # ------------------------------------------------------------------ start-up

    def _take_lock(self) -> None:
        path = ensure_state_dir(self.state.root) / "agent.lock"
        try:
            fd = lock_fd(path, fcntl.LOCK_EX | fcntl.LOCK_NB)  # 0600: no other user can open it
        except BlockingIOError:
            try:
                pid = path.read_text().strip() or "?"
            except OSError:
                pid = "?"
            raise CrossnetError(f"another crossnet agent (pid {pid}) already runs with state dir {self.state.root}") from None
        fh = os.fdopen(fd, "r+")  # held for the agent's lifetime
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def _identity(self) -> None:
        """This host's name, underlay interface and address."""
        self.name = validate_host_name(self.opts.name or socket.gethostname().split(".")[0])
        want = None
        if self.opts.address:  # bad input before any netlink socket
            from crossnet.ipv4 import ipv4_address

            want = ipv4_address(self.opts.address, "--address")
        env = self._env()
        addrs = nl.all_addresses(env.ipr)
        links = {li.index: li for li in nl.all_links(env.ipr)}
        # what this host used before: a backend may have moved the address off the NIC
        # (OVS userspace datapath: onto br-phy), so a restart trusts the record
        applied = self.state.load_applied() or {}
        rec = applied.get("context") if applied.get("host") == self.name else None
        rec_iface = rec.get("iface") if isinstance(rec, dict) else None
        rec_addr = None
        with contextlib.suppress(ValueError, TypeError, KeyError):
            rec_addr = IPv4Address(rec["address"]) if rec_iface else None
        rec_idx = env.index(rec_iface) if rec_iface else None
        if self.opts.iface:
            idx = env.index(self.opts.iface)
            if idx is None:
                raise ConfigError(f"--iface: interface {self.opts.iface!r} does not exist on this host")
        elif want is not None:
            idx = next((i for i, cidrs in addrs.items() if any(IPv4Interface(c).ip == want for c in cidrs)), None)
            if idx is None and want == rec_addr and rec_idx is not None:
                idx = rec_idx
            if idx is None:
                raise ConfigError(f"--address: {want} is not configured on any interface of this host")
        elif rec_idx is not None and rec_addr is not None:
            idx, want = rec_idx, rec_addr
        else:
            route = nl.route_get(env.ipr, "192.0.2.1")  # a lookup only, nothing is sent
            if route is None or not route.oif:
                raise ConfigError("--iface: this host has no default route; pass --iface (and --address)")
            idx = route.oif
        mine = [IPv4Interface(c).ip for c in addrs.get(idx, [])]
        recorded = rec_idx == idx and rec_addr is not None
        if want is None:
            if recorded and (rec_addr in mine or not mine):
                want = rec_addr
            elif mine:
                want = mine[0]
            else:
                raise ConfigError(f"--iface: interface {links[idx].name!r} has no IPv4 address; pass --address")
        elif self.opts.iface and want not in mine and not (recorded and want == rec_addr):
            raise ConfigError(f"--address: {want} is not configured on {self.opts.iface}")
        self.iface = links[idx].name
        self.address = want

    def _previous(self) -> tuple[IPv4Network | None, int]:
        """The subnet/lease this host had (local lease file, else applied.json)."""
        data = read_json(self.state.root / "agent.json") or {}
        if isinstance(data, dict) and data:
            from crossnet.stateformat import upgrade

            data = upgrade("agent.json", data, self.state.root / "agent.json")
        lease = data.get("lease") or {}
        if lease.get("name") == self.name and lease.get("subnet"):
            with contextlib.suppress(ValueError):
                return IPv4Network(lease["subnet"]), int(lease.get("lease", 0)) if data.get("store") == self.store.describe() else 0
        applied = self.state.load_applied() or {}
        if applied.get("host") == self.name:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return IPv4Network(applied["context"]["subnet"]), 0
        return None, 0

    def _check_state_dir(self) -> None:
        applied = self.state.load_applied()
        if applied and applied.get("host") not in (None, self.name):
            raise ConfigError(
                f"--name: state dir {self.state.root} belongs to host {applied.get('host')!r}; "
                "use --name accordingly or run `crossnet reset` first"
            )

    def _save_lease(self) -> None:
        assert self.lease is not None
        write_json_atomic(self.state.root / "agent.json", {
            "version": 1,
            "store": self.store.describe(),
            "lease": self.lease.to_json(),
            "acquired": time.time(),
        })

    def _acquire(self, previous: IPv4Network | None, previous_lease: int) -> None:
        assert self.cfg and self.backend and self.address
        data = {**self.backend.host_data(self.cfg.name, self.name, self.address),
                **self.backend.local_data(str(self.state.root))}  # e.g. this host's WireGuard public key
        lease = self.store.acquire(self.cfg, self.name, self.address, data, previous=previous,
                                   previous_lease=previous_lease, ttl=self.opts.ttl)
        if previous is not None and lease.subnet != previous:
            log.warning("subnet %s is no longer available; this host now has %s "
                        "(containers attached with addresses of %s must be re-attached)", previous, lease.subnet, previous)
        self.lease, self.lease_renewed = lease, time.monotonic()
        self._save_lease()
        self.ctx = self._context()
        log.info("host %s (%s on %s) holds subnet %s (lease %x, ttl %ss)", self.name, self.address, self.iface,
                 lease.subnet, lease.lease_id, lease.ttl)

    def _context(self) -> HostContext:
        """This host's context from the store's settings and its lease (crossnet.program.context);
        the peers are filled in by each sync."""
        assert self.cfg and self.backend and self.lease and self.address
        nic = nl.link_info(self._env().ipr, self.iface)
        if nic is None:
            raise ApplyError(f"interface {self.iface!r} disappeared")
        return program.context(program.Settings.of_config(self.cfg), self.backend, host=self.name,
                               address=self.address, iface=self.iface, subnet=self.lease.subnet, nic=nic,
                               peers=[], state_dir=str(self.state.root))

    def _load_config(self) -> None:
        cfg = self.store.get_config()
        backend = get_backend(cfg.backend)
        assert self.address is not None
        if self.address in cfg.network:
            raise ConfigError(f"network {cfg.network} contains this host's underlay address {self.address}")
        self.store_cfg = cfg
        self.cfg, self.backend = self._effective(cfg), backend
        if self.pmtu is None and self.opts.probe_mtu is None and pmtu.probes_by_default(cfg.backend):
            self.pmtu = pmtu.Monitor.resume(self.state, self.opts.resync)

    # the named networks of a changed config (crossnet.agent.netfollow, docs/networks.md)

    def _effective(self, cfg: NetworkConfig) -> NetworkConfig:
        from crossnet.agent import netfollow

        return netfollow.effective(self, cfg)

    def follow_config(self, new: NetworkConfig) -> bool:
        from crossnet.agent import netfollow

        return netfollow.follow(self, new)

    def _config_loop(self) -> None:
        from crossnet.agent import netfollow

        netfollow.watch_loop(self)

    # ------------------------------------------------------------------ programming

    def _peer(self, rec: HostRecord) -> Peer:
        peer = Peer(rec.name, rec.address, rec.subnet, dict(rec.data))
        return self.transports.annotate(peer) if self.transports else peer

    def _sync_ctx_peers(self) -> None:
        assert self.ctx is not None
        self.ctx.peers = [self._peer(self.peers[s]) for s in sorted(self.peers) if s in self.peer_res]

    def _save_applied(self) -> None:
        """applied.json after the fast path: the local resources, then each peer's."""
        assert self.ctx
        self._sync_ctx_peers()
        program.record(self.state, program.record_header(self.ctx, self._source()), self._owned())

    def _source(self) -> dict:
        """Where this host's settings come from (and the measured path MTUs), as applied.json records it."""
        assert self.cfg
        return {"store": {"kind": self.store.kind, "where": self.store.describe()}, "network_config": self.cfg.to_json(),
                **({"path_mtu": self.pmtu.record} if self.pmtu and self.pmtu.record else {})}

    @staticmethod
    def _key(rec: HostRecord) -> IPv4Network:
        """The subnet a record's store key names (what it is filed under, not what it claims)."""
        return rec.key if rec.key is not None else rec.subnet

    def _owned(self) -> list[Resource]:
        owned = list(self.base_res)
        for s in sorted(self.peer_res):
            owned += self.peer_res[s]
        return owned

    def _view(self, env: Env, owned: list[Resource]) -> LocalView:
        """What peers' records are validated against: the cluster network, this host's
        identity, and its routes that crossnet does not own (never to be replaced)."""
        import ipaddress

        assert self.cfg and self.ctx and self.backend and self.lease
        ours_dst = {r.dst for r in owned if r.kind == "route" and getattr(r, "dst", None)}
        from crossnet import datapath

        ours_dev = {env.index(self.ctx.bridge)} | datapath.container_devices(self.ctx, env)
        tunnel = self.backend.tunnel_device(self.ctx)
        if tunnel:
            ours_dev.add(env.index(tunnel))
        ours_dev.discard(None)
        # the named networks' devices, each with its CIDR (their routes are crossnet's too)
        nets_dev = {env.index(d): n.network for n in self.nets.values()
                    for d in (n.bridge, self.backend.tunnel_device(n)) if d}
        nets_dev.pop(None, None)
        foreign, connected = [], []
        for r in env.routes():
            net = ipaddress.ip_network(r.dst, strict=False)
            if not r.gateway and r.oif not in ours_dev:
                connected.append(net)
            if (r.dst in ours_dst or (r.oif in ours_dev and net.subnet_of(self.cfg.network))
                    or (r.oif in nets_dev and net.subnet_of(nets_dev[r.oif]))):
                continue
            foreign.append(net)
        mine = {**self.backend.host_data(self.cfg.name, self.name, self.address),
                **self.backend.local_data(str(self.state.root), create=False)}  # what _acquire published
        macs = frozenset(v for v in mine.values() if isinstance(v, str))  # MACs, the WireGuard key
        from crossnet import netstore

        # the networks this host follows after this selection (the config's, that it holds a subnet
        # of), not only those followed so far: the sync that first follows one programs the peers
        # selected here, so their claims there count from now on (ports carry no peers: none needed)
        nets = {**netstore.contexts(self.cfg, self.ctx, self.backend, self.lease.record.networks, []), **self.nets}
        ctx, backend = self.ctx, self.backend

        def claims(rec: HostRecord) -> list[str]:  # e.g. its OVS tunnel ports (in the networks followed)
            return backend.peer_claims([ctx, *(nets[n] for n in sorted(rec.networks) if n in nets)], rec.name)

        return LocalView(self.cfg.network, self.cfg.subnet_len, self.name, self.address, self.lease.subnet, macs,
                         tuple(foreign), tuple(connected), netstore.view(self.cfg, self.lease.record.networks), claims)

    def _take_snapshot(self, snap: Snapshot, env: Env, owned: list[Resource]) -> None:
        """Every record of the snapshot but ours, filed under its key; the valid ones
        become the peers (only records that pass validation reach the kernel)."""
        assert self.lease is not None
        self.book.load([r for r in snap.hosts if self._key(r) != self.lease.subnet],
                       {k: v for k, v in snap.invalid.items() if k != self.lease.subnet})
        self.peers = self.book.select(self._view(env, owned))

    def full_sync(self, snap: Snapshot) -> None:
        """Make the kernel match the snapshot: local + all peers, one reconcile, through
        the same path as `crossnet apply` (crossnet.program.program_host)."""
        from crossnet.host import load_previous

        assert self.ctx and self.backend and self.lease
        if snap.revision < self.revision:
            return  # older than what we have already applied
        t0 = time.perf_counter()
        own = [r for r in snap.hosts if self._key(r) == self.lease.subnet]
        if self.store.kind != "static" and (not own or own[0].name != self.name):
            self.queue.put(("lease-lost", self.lease.lease_id))
        with self.state.lock():
            env = self._env()
            _, previous = load_previous(self.state)
            # our routes (recorded in applied.json or owned now) are not "this host's routes" to protect
            self._take_snapshot(snap, env, previous + self._owned())
            # the peers this host can reach the way the backend needs (the others are skipped,
            # logged); local resources may depend on the peer list (e.g. OVS flows naming the
            # tunnel ports): the context holds every usable peer
            usable = {s: p for s, p in ((s, self._peer(self.peers[s])) for s in sorted(self.peers))
                      if program.peer_usable(self.ctx, self.backend, env, p)}
            self.ctx.peers = list(usable.values())
            mtu_was = self.ctx.mtu
            pmtu.adjust(self.ctx, self.backend, self.pmtu.record if self.pmtu else None)  # measured paths
            done = self._program_all(env, previous, usable, mtu_was)
            self._split_owned(done, usable)
            self.revision = snap.revision
        repaired = len(done.changes) if self.synced_at is not None else 0  # after the first: drift
        self.synced_at = time.time()
        if self.metrics is not None:
            self.metrics.synced(time.perf_counter() - t0, repaired)
        for ch in done.changes:
            log.info("  %s", ch)
        log.info("synced at revision %d: %d peer(s), %d change(s)", snap.revision, len(self.peer_res), len(done.changes))

    def _program_all(self, env: Env, previous: list[Resource], usable: dict[IPv4Network, Peer],
                     mtu_was: int | None = None) -> program.Programmed:
        """program_host with every named network (crossnet.netstore), as `crossnet apply`
        does; then each network's own record, and a network gone is pruned."""
        from crossnet import netstore, networks

        assert self.ctx and self.backend and self.lease and self.cfg
        nets = netstore.contexts(self.cfg, self.ctx, self.backend, self.lease.record.networks,
                                 [(p, self.peers[s].networks) for s, p in usable.items()])
        done = program.program_host(self.state, env, self.ctx, self.backend, previous, self._source(),
                                    check_underlay=False, protect_routes=self.synced_at is None,
                                    always_record=True, mtu_was=mtu_was, networks=nets)
        assert done.owned is not None
        networks.prune(self.state, set(nets), self.backend, env)
        networks.record(self.state, self.name, nets)
        self.nets = nets
        return done

    def _split_owned(self, done: program.Programmed, usable: dict[IPv4Network, Peer]) -> None:
        """What is owned now, for the fast path: each peer's resources, the rest local."""
        assert self.ctx and self.backend and done.owned is not None
        by_key = {r.key(): r for r in done.owned}
        per_peer = {s: program.peer_resources(self.ctx, self.backend, p) for s, p in usable.items()}
        self.peer_res = {s: [by_key.get(r.key(), r) for r in res] for s, res in per_peer.items()}
        peer_keys = {r.key() for res in per_peer.values() for r in res}
        self.base_res = [r for r in done.owned if r.key() not in peer_keys]

    def apply_events(self, events: list[PeerEvent]) -> None:
        assert self.ctx and self.backend
        touched: set[IPv4Network] = set()
        for ev in events:
            if ev.revision <= self.revision and self.store.kind != "static":
                continue
            if self.lease is not None and ev.subnet == self.lease.subnet:
                if ev.kind == "delete":
                    self.queue.put(("lease-lost", self.lease.lease_id))
                continue  # our own key (a changed value: the next full sync re-checks our lease)
            touched.add(ev.subnet)
            if ev.kind == "delete":
                self.book.delete(ev.subnet)
            else:
                if ev.record is not None and ev.record.key is None:
                    ev.record.key = ev.subnet
                self.book.put(ev.subnet, ev.record, ev.error)
        if self.store.kind != "static":
            self.revision = max([self.revision] + [ev.revision for ev in events])
        if not touched:
            return
        with self.state.lock():
            env = self._env()
            # re-select every valid peer: a record going away may let a younger claimant
            # of its subnet/name/MAC in, a new one may be refused; only differences count
            valid = self.book.select(self._view(env, self._owned()))
            changed = {s for s in set(self.peers) | set(valid)
                       if not (s in valid and valid[s].same_content(self.peers.get(s)))}
            # a record put again is retried if it is not programmed (e.g. skipped earlier)
            changed |= {s for s in touched if (s in valid) != (s in self.peer_res)}
            self.peers = valid
            if not changed:
                return
            if self.nets or (self.cfg and self.cfg.networks):  # named networks: the whole path
                from crossnet.host import load_previous

                usable = {s: p for s, p in ((s, self._peer(valid[s])) for s in sorted(valid))
                          if program.peer_usable(self.ctx, self.backend, env, p)}
                self.ctx.peers = list(usable.values())
                done = self._program_all(env, load_previous(self.state)[1], usable)
                self._split_owned(done, usable)
                for ch in done.changes:
                    log.info("  %s", ch)
                return
            # peers added/changed first, then the local resources that may list the peers
            # (OVS flows name the tunnel ports), then the removed peers
            for s in sorted(x for x in changed if x in self.peers):
                self._program_peer(env, s)
            self._program_base(env)
            for s in sorted(x for x in changed if x not in self.peers):
                self._program_peer(env, s)
            self._save_applied()
        if self.pmtu:
            self.pmtu.poke()  # measure the new peers' paths

    def _program_base(self, env: Env) -> None:
        assert self.ctx and self.backend
        self._sync_ctx_peers()
        try:
            outcome = program.program_local(self.ctx, self.backend, env, self.base_res)
        except ApplyError as exc:
            log.error("local resources: %s; will retry at the next resync", exc)
            self._count_error("local")
            self.next_resync = min(self.next_resync, time.monotonic() + 2)
            return
        self.base_res = outcome.resources
        for ch in outcome.changes:
            log.info("  %s", ch)

    def _program_peer(self, env: Env, subnet: IPv4Network) -> None:
        assert self.ctx and self.backend
        t0 = time.perf_counter()
        rec = self.peers.get(subnet)
        try:
            outcome = program.program_peer(self.ctx, self.backend, env, self._peer(rec) if rec else None,
                                           self.peer_res.get(subnet, []))
        except ApplyError as exc:
            log.error("peer %s (%s): %s; will retry at the next resync", rec.name if rec else "?", subnet, exc)
            self._count_error("peer")
            self.next_resync = min(self.next_resync, time.monotonic() + 2)
            return
        if rec is not None and outcome.resources:
            self.peer_res[subnet] = outcome.resources
        else:
            self.peer_res.pop(subnet, None)
        what = f"peer {rec.name} {rec.address} subnet {subnet}" if rec else f"peer subnet {subnet}"
        verb = "added/updated" if rec is not None else "removed"
        log.info("%s %s: %d change(s) in %.0f ms", what, verb, len(outcome.changes), (time.perf_counter() - t0) * 1000)

    # ------------------------------------------------------------------ threads

    def _keepalive_loop(self) -> None:
        first = True
        while True:
            lease = self.lease
            interval = max(0.3, (lease.ttl if lease and lease.ttl else 10) / 3)
            if self.stop.wait(0 if first else interval):
                return
            first = False
            lease = self.lease
            if lease is None or not lease.lease_id:
                continue
            try:
                self.store.renew(lease)
                self.lease_renewed = time.monotonic()
                self._report("keepalive", None)
            except LeaseLost as exc:
                self._report("keepalive", str(exc))
                self.queue.put(("lease-lost", lease.lease_id))
            except StoreError as exc:
                self._report("keepalive", f"{exc}; data plane left as is")
                self.store.interrupt_watch()

    def _watch_loop(self) -> None:
        since = self.revision + 1
        need_snapshot = False
        delay = self.opts.backoff_initial
        while not self.stop.is_set():
            try:
                if need_snapshot:
                    snap = self.store.snapshot()
                    self.queue.put(("snapshot", snap))
                    since = snap.revision + 1
                    need_snapshot = False
                for batch in self.store.watch(since, self.stop):  # etcd: open until WATCH_IDLE_TIMEOUT of silence
                    self._report("watch", None)
                    delay = self.opts.backoff_initial
                    if batch:
                        self.queue.put(("events", batch))
                        since = max(since, max(ev.revision for ev in batch) + 1)
            except StoreError as exc:
                if self.stop.is_set():
                    return
                self._report("watch", f"{exc}; reconnecting")
                need_snapshot = True
                if self.stop.wait(delay):
                    return
                delay = min(delay * 2, self.opts.backoff_max)
            except Exception:  # never let the watcher die silently
                log.exception("watch: unexpected error")
                need_snapshot = True
                if self.stop.wait(delay):
                    return

    def _start_thread(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def containers_changed(self, wait: float = 1.0, force: bool = False) -> None:
        """Ask the publisher thread to publish this host's containers; wait (bounded:
        etcd may be down, attaches must not hang on it) until it has."""
        with self._pub_cond:
            if force:
                self._published = None
            self._pub_wanted += 1
            target = self._pub_wanted
            self._pub_cond.notify_all()
            if wait > 0:
                self._pub_cond.wait_for(lambda: self._pub_done >= target or self.stop.is_set(), timeout=wait)

    def _local_containers(self) -> list[dict[str, str]]:
        from crossnet.agent import netdns
        from crossnet.localcache import Readers

        if self._local is None:  # one cache per state dir (top-level, each named network)
            self._local = Readers()
        return netdns.local_containers(self.state, self._local.read)  # the named networks' too, with their network

    def publish_containers(self) -> None:
        """Write this host's containers to the store if they changed since the last write."""
        lease = self.lease
        if lease is None or self.synced_at is None:
            return
        try:
            items = self._local_containers()
        except (CrossnetError, OSError, ValueError) as exc:
            self._report("containers", f"reading local containers: {exc}")
            return
        if self._published == (lease.lease_id, items):
            return
        try:
            self.store.publish_containers(lease, items)
        except LeaseLost as exc:
            self._report("containers", str(exc))
            self.queue.put(("lease-lost", lease.lease_id))
            return
        except StoreError as exc:
            self._report("containers", f"publishing containers: {exc}; retrying at the next resync")
            return
        self._published = (lease.lease_id, items)
        self._report("containers", None)
        log.info("published %d container(s)", len(items))

    def _publisher_loop(self) -> None:
        while True:
            with self._pub_cond:
                self._pub_cond.wait_for(lambda: self._pub_done < self._pub_wanted or self.stop.is_set())
                if self.stop.is_set():
                    self._pub_cond.notify_all()
                    return
                target = self._pub_wanted
            try:
                self.publish_containers()
            except Exception:  # never let the publisher die silently
                log.exception("containers: unexpected error")
            with self._pub_cond:
                self._pub_done = target
                self._pub_cond.notify_all()

    def cluster_containers(self) -> dict[str, Any]:
        """Every host's published containers (GET /v1/containers): `known` is false
        when the store has no channel between hosts (the cluster file)."""
        hosts = self.store.containers()
        if hosts is not None:
            # only hosts with a valid record, only addresses inside their subnet: `crossnet
            # check` pings these from this host's containers
            subnets = {r.name: s for s, r in list(self.peers.items())}
            if self.lease is not None:
                subnets[self.name] = self.lease.subnet
            named = {r.name: r.networks for r in list(self.peers.values())}
            if self.lease is not None:
                named[self.name] = self.lease.record.networks
            hosts, dropped = filter_containers(hosts, subnets, named)
            if dropped:
                self.rejected_containers += dropped
                log.warning("ignored %d published container(s) outside their host's valid subnet", dropped)
        return {"host": self.name, "store": self.store.kind, "known": hosts is not None, "hosts": hosts or {}}

    # ------------------------------------------------------------------ status (API)

    def info(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "pid": os.getpid(),
            "host": self.name,
            "address": str(self.address) if self.address else None,
            "iface": self.iface,
            "store": self.store.describe(),
            "subnet": str(lease.subnet) if lease else None,
            "lease": f"{lease.lease_id:x}" if lease and lease.lease_id else None,
            "ttl": lease.ttl if lease else None,
            "ttl_left": lease_left(self),
            "revision": self.revision,
            "synced": self.synced_at is not None,
            "synced_at": self.synced_at,
            "started": self.started,
            "healthy": not any(self.health.values()),
            "errors": {k: v for k, v in self.health.items() if v},
            "peers": [
                {"name": r.name, "address": str(r.address), "subnet": str(s), "programmed": s in self.peer_res}
                for s, r in sorted(self.peers.items())
            ],
            "rejected_records": self.book.rejected_total,
            "rejected": self.book.rejected_json(),
            "rejected_containers": self.rejected_containers,
            "networks": {name: {"network": str(c.network), "subnet": str(c.subnet), "bridge": c.bridge, "vni": c.vni,
                                "peers": len(c.peers), "kept": name in self.kept_networks}
                         for name, c in self.nets.items()},
            "rss_kb": _rss_kb(),
        }

    # ------------------------------------------------------------------ main

    def set_store_endpoints(self, endpoints: list[str]) -> None:
        """The store's servers changed (the mesh's voters): requests go to these from now
        on, and agent.json names them, so that a restart on them keeps this lease."""
        self.store.set_endpoints(endpoints)
        if self.lease is not None:
            self._save_lease()

    def request_stop(self, *_args: Any) -> None:
        self.stop.set()
        self.queue.put(("wake",))  # the main loop sleeps until its next deadline: wake it now

    def resync_soon(self) -> None:
        """A full resync at once (POST /v1/resync, the PMTU thread): the main loop is woken."""
        self.next_resync = 0.0
        self.queue.put(("wake",))

    def _idle_wait(self, window: float) -> float:
        """Seconds the main loop may sleep on its queue: until the next thing it has to do
        (local check, resync, re-registration), no periodic wakeup beyond those; at most
        half the systemd watchdog's window (``window``, 0: none)."""
        due = min(self.next_local_check, self.next_resync,
                  self.reacquire_at if self.reacquire_at is not None else float("inf"))
        wait = due - time.monotonic()
        if window:
            wait = min(wait, window / 2)
        return min(max(wait, 0.0), LOCAL_CHECK_INTERVAL)

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._take_lock()
        try:
            return self._run()
        except Stopped:
            log.info("stopped before start-up completed; nothing changed")
            return 0
        finally:
            self._shutdown_threads()
            self._reset_ipr()
            self.store.close()
            if self._lock_fh is not None:  # an agent run again in the same process (crossnet launch) takes it anew
                self._lock_fh.close()
                self._lock_fh = None

    def _run(self) -> int:
        self._identity()
        self._check_state_dir()
        log.info("crossnet agent %s starting: %s, underlay %s on %s", self.name, self.store.describe(), self.address, self.iface)
        self._retry("read network config", self._load_config)
        assert self.cfg is not None
        log.info("network %s, /%d per host, backend %s", self.cfg.network, self.cfg.subnet_len, self.cfg.backend)
        previous, previous_lease = self._previous()
        self._retry("acquire subnet lease", lambda: self._acquire(previous, previous_lease))
        from crossnet.transport import prober

        self.transports = prober.attach(self)  # backend auto: per-peer transport (docs/transport.md)
        self._start_thread("keepalive", self._keepalive_loop)
        self._retry("initial sync", lambda: self.full_sync(self.store.snapshot()))
        self.next_resync = time.monotonic() + self.opts.resync
        if self.opts.api:
            from crossnet.agent.api import serve

            self._api = serve(self, socket_path(self.state))
        self._start_thread("watch", self._watch_loop)
        self._start_thread("containers", self._publisher_loop)
        if self.store.config_watch:
            self._start_thread("config", self._config_loop)
        if self.pmtu:
            self._start_thread("pmtu", lambda: self.pmtu.run(lambda: self.ctx, self.backend, self.resync_soon, self.stop))
        if self.transports:
            self._start_thread("transport", self.transports.run)
        self.containers_changed(wait=0)
        from crossnet.dns.service import start_for_agent

        self.dns = start_for_agent(self)  # names of the cluster's containers (docs/dns.md)
        self._sync_dns()
        log.info("ready")
        beat = sdnotify.ready(f"synced: {len(self.peer_res)} peer(s)", self.stop)  # systemd Type=notify
        while not self.stop.is_set():
            beat.beat()
            try:
                item = self.queue.get(timeout=self._idle_wait(beat.window))
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                if self.reacquire_at is not None and now >= self.reacquire_at:
                    self._reacquire()
                if now >= self.next_local_check:
                    self._check_local()
                if now >= self.next_resync:
                    self._resync()
            except (ApplyError, OSError) as exc:
                log.error("programming failed: %s; will retry", exc)
                self._reset_ipr()
                self.next_resync = min(self.next_resync, time.monotonic() + 2)
        log.info("stopping (%s)", "releasing the subnet" if self.opts.release else "data plane left in place")
        sdnotify.notify("STOPPING=1")
        self._shutdown_threads()
        if self.opts.release:
            self._release()
        return 0

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "events":
            self.apply_events(item[1])
        elif kind == "snapshot":
            self._sync_safely(item[1])
            if self.health.get("containers"):  # the store is back: retry the failed publish
                self.containers_changed(wait=0)
        elif kind == "config":
            from crossnet.agent import netfollow

            netfollow.changed(self)
        elif kind == "transport" and item[1] in self.peers:  # the prober switched this peer's transport
            if self.nets:  # the named networks follow the choice (backend auto): the whole path
                self._resync()
                return
            with self.state.lock():
                self._program_peer(self._env(), item[1])
                self._save_applied()
        elif (kind == "lease-lost" and self.lease is not None and item[1] == self.lease.lease_id
              and self.reacquire_at is None):
            self.reacquire_at = time.monotonic()

    def _sync_safely(self, snap: Snapshot) -> None:
        try:
            self.full_sync(snap)
            self._report("sync", None)
            self._sync_dns()
        except (ApplyError, ConfigError) as exc:
            self._report("sync", str(exc))
            self.next_resync = min(self.next_resync, time.monotonic() + 2)

    def _sync_dns(self) -> None:
        from crossnet.agent import netdns

        netdns.sync(self)  # one DNS server per named network (docs/dns.md)

    def _resync(self) -> None:
        self.next_resync = time.monotonic() + self.opts.resync
        if (self.kept_networks or self.config_pending) and self.store_cfg is not None:
            # a kept network whose containers are gone now goes; a change that failed is retried
            self.follow_config(self.config_pending or self.store_cfg)
        try:
            snap = self.store.snapshot()
        except StoreError as exc:
            self._report("sync", f"resync: {exc}")
            self.next_resync = time.monotonic() + min(self.opts.resync, 5)
            return
        self._sync_safely(snap)
        self.collect_stale()
        self.containers_changed(wait=0)  # catches attaches that did not go through the API

    def collect_stale(self) -> list[dict[str, Any]]:
        """`crossnet gc` at every resync: release the containers whose namespace is gone."""
        from crossnet import containers
        from crossnet.host import load_context

        try:
            ctx, backend = load_context(self.state)
            items = containers.gc(self.state, ctx, backend)
        except (CrossnetError, OSError) as exc:
            log.error("collecting stale containers: %s; will retry at the next resync", exc)
            return []
        for it in items:
            log.info("collected stale container %s (%s): released %s", it["id"], it["reason"], it["address"])
        return items

    def _check_local(self) -> None:
        """Every second: republish this host's containers when one's namespace died (with
        the cluster-wide DNS), what only this host knows when it changed (a rotated
        WireGuard key: `crossnet keygen --rotate`), and re-program at once when the
        backend says its local data plane broke (wireguard-go died)."""
        self.next_local_check = time.monotonic() + LOCAL_CHECK_INTERVAL
        if self.dns is not None and self.dns.scope == "cluster":
            # the DNS answers every host's published containers: a container whose namespace
            # died without a detach leaves this host's list (the publisher reads it only when
            # ipam.json, applied.json or a namespace path changed: crossnet.localcache)
            self.containers_changed(wait=0)
        if self.lease is None or self.ctx is None or self.backend is None or self.reacquire_at is not None:
            return
        try:
            own = self.backend.local_data(str(self.state.root), create=False)
        except CrossnetError as exc:  # e.g. a key file made unreadable or damaged: say so, keep running
            self._report("sync", str(exc))
            return
        if any(self.lease.record.data.get(k) != v for k, v in own.items()):
            log.info("this host's %s changed: republishing it", ", ".join(sorted(own)))
            try:
                self._acquire(self.lease.subnet, self.lease.lease_id)
            except StoreError as exc:
                self._report("keepalive", f"republishing: {exc}")
                return
            self.next_resync = 0.0  # the device takes the new key now
            return
        broken = self.backend.local_broken(self.ctx, self._env())
        self.data_plane_problem = broken or None
        if broken:
            log.warning("%s: re-programming this host", broken)
            self.next_resync = 0.0

    def _reacquire(self) -> None:
        assert self.lease is not None
        old = self.lease
        try:
            self._acquire(old.subnet, 0)
        except StoreError as exc:
            self._report("keepalive", f"re-registering: {exc}")
            self.reacquire_at = time.monotonic() + min(self.opts.backoff_max, max(1.0, old.ttl / 2))
            return
        self.reacquire_at = None
        self._report("keepalive", None)
        log.info("re-registered after losing the lease")
        self.containers_changed(wait=0, force=True)  # the old lease took the published list with it
        if self.lease.subnet != old.subnet:
            self.revision = 0
        self._resync()

    def _shutdown_threads(self) -> None:
        self.stop.set()
        if self.pmtu:
            self.pmtu.poke()  # its thread sleeps until its next round otherwise
        with self._pub_cond:
            self._pub_cond.notify_all()
        self.store.interrupt_watch()
        if self._api is not None:
            self._api.close()
            self._api = None
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        from crossnet.agent import netdns

        netdns.stop_all(self)
        if self.dns is not None:
            self.dns.stop()
            self.dns = None

    def _release(self) -> None:
        from crossnet.host import reset

        if self.lease is not None:
            for attempt in range(3):
                try:
                    self.store.release(self.lease)
                    log.info("released subnet %s", self.lease.subnet)
                    break
                except StoreError as exc:
                    log.error("release: %s%s", exc, "; retrying" if attempt < 2 else "; giving up (the lease expires after its TTL)")
                    time.sleep(0.5 * (attempt + 1))
        self._reset_ipr()
        changes = reset(self.state)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state.root / "agent.json")
        log.info("host state removed (%d change(s))", len(changes))


def _rss_kb() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def setup_logging(verbose: bool = False, fmt: str = "text", name: str = "crossnet-agent") -> None:
    from crossnet.logjson import JsonFormatter, TextFormatter

    handler = logging.StreamHandler()
    # one JSON object per line, or text; RFC 3339 UTC times either way (crossnet.logjson)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(name))
    handler.addFilter(MaskingFilter())  # no password or token of an endpoint in the log
    root = logging.getLogger("crossnet")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
