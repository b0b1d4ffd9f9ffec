"""Path MTU per peer: measure it (crossnet.transport.probe), derive the container MTU
from it, record it, show it, and carry a changed MTU to the containers already attached.

    container MTU = min(underlay MTU, path MTU of every measured peer) - transport overhead

The underlay MTU is the cluster's `mtu` (or the NIC's), so the container MTU never
exceeds what this host's own NIC carries. Transport overhead: vxlan 50 (outer Ethernet
14 + IPv4 20 + UDP 8 + VXLAN 8), wireguard 60 over IPv4 (IPv4 20 + UDP 8 + WireGuard 32;
the backend's static 80, used while nothing is measured, assumes IPv6), ovs-gre 38, ovs-vxlan 50, host-gw 0 (direct).
The bridge backend puts containers on the LAN itself: nothing to probe.

Backend auto (docs/transport.md) has one container MTU for every peer, while each peer
may move between its candidate transports at any time (the prober switches within
seconds, without resizing containers). So each peer counts with the largest overhead of
the transports it may use (vxlan 50, wireguard 60 when it has a WireGuard key, only
wireguard with `encrypt`; direct 0 never the largest), and the underlay bound with the
largest of all peers (a peer whose path was not measured may still use any of its
transports up to the underlay MTU):

    container MTU = min(underlay MTU - max overhead of any peer,
                        path MTU of p - max overhead of p's transports, for each measured p)

Every transport of every peer then carries a full container packet: direct needs
container MTU <= path, vxlan container MTU + 50 <= path, wireguard + 60 <= path.

A peer is *narrow* when its path cannot carry the configured underlay MTU: `status`
names it with the number measured. `crossnet apply --probe-mtu` measures (every peer
in parallel, bounded time) and records the result in applied.json (`path_mtu`); a later
`apply` without the flag keeps using that record (peers no longer in the cluster
dropped) so the MTU does not flap; `--probe-mtu` again measures anew.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crossnet.backends import lan_backend_names
from crossnet.backends import vxlan as vx
from crossnet.backends.base import Backend, HostContext
from crossnet.errors import ConfigError
from crossnet.transport.probe import PathUnreachable, discover

if TYPE_CHECKING:
    from crossnet.state import StateDir

log = logging.getLogger(__name__)

MIN_PATH_MTU = 576  # the smallest MTU probed (and the smallest `mtu` a cluster file may give)
IPV4_OVERHEAD = {"wireguard": 60}  # backends whose static overhead assumes an IPv6 underlay
TRANSPORT_OVERHEAD = {"direct": 0, "vxlan": vx.Vxlan.overhead, "wireguard": IPV4_OVERHEAD["wireguard"]}  # auto's
WORKERS = 16


def probed(backend: str) -> bool:
    """Whether the path to peers matters for this backend (all but the LAN backends)."""
    return backend not in lan_backend_names()


def transport_overhead(backend: Backend) -> int:
    """Bytes the transport adds to a container packet on this IPv4 underlay."""
    return IPV4_OVERHEAD.get(backend.name, backend.overhead)


def container_mtu(underlay_mtu: int, configured: int, paths: dict[str, int | None],
                  overhead: int | dict[str, int]) -> int:
    """The container MTU once paths are measured: min(underlay MTU, smallest measured
    path MTU) - the transport's overhead on this underlay; `configured` (underlay - the
    backend's static overhead) when nothing was measured (peers whose path could not be
    measured, None, do not count). Never above the underlay MTU minus the overhead.
    `overhead` per peer (backend auto, see `peer_overheads`): each measured path minus
    its peer's overhead, the underlay minus the largest of all."""
    measured = {n: m for n, m in paths.items() if m}
    if not measured:
        return configured
    if isinstance(overhead, int):
        return max(min(underlay_mtu, *measured.values()), MIN_PATH_MTU) - overhead
    worst = max(overhead.values(), default=0)
    return min([underlay_mtu - worst] + [max(min(underlay_mtu, m), MIN_PATH_MTU) - overhead.get(n, worst)
                                         for n, m in measured.items()])


def peer_overheads(ctx: HostContext, backend: Backend) -> int | dict[str, int]:
    """The overhead to size the containers with: the backend's (`transport_overhead`), or
    for backend auto per peer the largest overhead of the transports it may use."""
    if backend.name != "auto":
        return transport_overhead(backend)
    from crossnet.backends.auto import peer_candidates

    return {p.name: max(TRANSPORT_OVERHEAD[t] for t in peer_candidates(ctx, p, on_link_=False)) for p in ctx.peers}


def narrow_peers(underlay_mtu: int, paths: dict[str, int | None]) -> dict[str, int]:
    """Peers whose measured path MTU is below the configured underlay MTU."""
    return {name: m for name, m in sorted(paths.items()) if m and m < underlay_mtu}


def measure(ctx: HostContext, *, netns: str | None = None, timeout: float = 0.5, retries: int = 3,
            budget: float = 10.0) -> dict[str, Any]:
    """Path MTU to every peer of `ctx` (from ctx.address, DF echoes between [576,
    underlay MTU]), in parallel, at most `budget` seconds per peer. The record that
    applied.json keeps: {"measured_at", "underlay_mtu", "peers": {name: {"address",
    "path_mtu" (None when unreachable), "error"}}}."""

    def one(peer) -> tuple[str, dict[str, Any]]:
        row: dict[str, Any] = {"address": str(peer.address), "path_mtu": None, "error": None}
        try:
            row["path_mtu"] = discover(str(peer.address), low=min(MIN_PATH_MTU, ctx.underlay_mtu),
                                       high=ctx.underlay_mtu, timeout=timeout, retries=retries, budget=budget,
                                       netns=netns, src=str(ctx.address))
        except PathUnreachable as exc:
            row["error"] = str(exc)
        except OSError as exc:
            row["error"] = f"probe failed: {exc.strerror or exc}"
        return peer.name, row

    from concurrent.futures import ThreadPoolExecutor

    peers = list(ctx.peers)
    rows: dict[str, dict[str, Any]] = {}
    if peers:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(peers)), thread_name_prefix="pmtu") as pool:
            rows = dict(pool.map(one, peers))
    for name, row in rows.items():
        if row["error"]:
            log.warning("path MTU to %s (%s): %s", name, row["address"], row["error"])
        elif row["path_mtu"] < ctx.underlay_mtu:
            log.warning("path MTU to %s (%s) is %d, below the underlay MTU %d", name, row["address"],
                        row["path_mtu"], ctx.underlay_mtu)
    return {"measured_at": time.time(), "underlay_mtu": ctx.underlay_mtu, "peers": rows}


def paths_of(record: dict[str, Any] | None, ctx: HostContext) -> dict[str, int | None]:
    """Measured path MTU per current peer of `ctx` from a record (an entry whose peer
    left or changed address does not count)."""
    rows = ((record or {}).get("peers") or {}) if isinstance(record, dict) else {}
    out: dict[str, int | None] = {}
    for p in ctx.peers:
        row = rows.get(p.name)
        if isinstance(row, dict) and row.get("address") == str(p.address):
            m = row.get("path_mtu")
            out[p.name] = m if isinstance(m, int) and not isinstance(m, bool) and MIN_PATH_MTU <= m <= 65_535 else None
    return out


def adjust(ctx: HostContext, backend: Backend, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Set ctx.mtu to what the recorded paths carry; returns the record kept for the
    current peers (None: nothing measured, or a backend without a path to measure)."""
    if not record or not probed(ctx.backend):
        return None
    paths = paths_of(record, ctx)
    ctx.mtu = container_mtu(ctx.underlay_mtu, ctx.underlay_mtu - backend.overhead, paths,
                            peer_overheads(ctx, backend))
    kept = {k: v for k, v in record.items() if k != "peers"}
    kept["peers"] = {n: record["peers"][n] for n in paths}
    return kept


def for_apply(ctx: HostContext, backend: Backend, applied: dict[str, Any] | None, *,
              probe: bool) -> dict[str, Any] | None:
    """apply: measure every peer's path now (`probe`, `crossnet apply --probe-mtu`) or
    take the last record of applied.json; set ctx.mtu from it; the record to keep."""
    if probe and not probed(ctx.backend):
        raise ConfigError(f"--probe-mtu: backend {ctx.backend} puts containers on the LAN itself: "
                          "there is no path between hosts to probe")
    record = measure(ctx) if probe else (applied or {}).get("path_mtu")
    return adjust(ctx, backend, record)


def status_info(applied: dict[str, Any] | None, ctx: HostContext, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """For `status`: `path_mtu` and `narrow` on each peer row, `narrow_peers` [{name,
    path_mtu}] and `path_mtu_measured_at` (None: never measured)."""
    record = (applied or {}).get("path_mtu")
    paths = paths_of(record, ctx)
    narrow = narrow_peers(ctx.underlay_mtu, paths)
    for row in peers:
        if row.get("name") in paths:
            row["path_mtu"] = paths[row["name"]]
            row["narrow"] = row["name"] in narrow
    return {
        "path_mtu_measured_at": record.get("measured_at") if isinstance(record, dict) else None,
        "narrow_peers": [{"name": n, "path_mtu": m} for n, m in narrow.items()],
    }


def update_containers(state: StateDir, ctx: HostContext) -> list[str]:
    """Set the MTU of every attached container's veth (both ends) to ctx.mtu: a changed
    path MTU reaches running containers, not only new attachments (a container still at
    the old, larger MTU would send packets the path drops). Returns the ids changed;
    containers whose namespace is gone are skipped (`crossnet gc` collects them)."""
    from crossnet import containers
    from crossnet.netlink import iproute as nl

    changed = []
    rows = [c for c in containers.list_containers(state) if c.get("state") == "attached"]
    if not rows:
        return changed
    with nl.open_ipr() as ipr:
        for c in rows:
            try:
                hit = False
                idx = nl.ifindex(ipr, c["host_if"]) if c.get("host_if") else None
                if idx is not None and nl.link_info(ipr, index=idx).mtu != ctx.mtu:
                    ipr.link("set", index=idx, mtu=ctx.mtu)
                    hit = True
                with nl.open_ipr(c["netns"]) as cipr:
                    cidx = nl.ifindex(cipr, c["ifname"])
                    if cidx is not None and nl.link_info(cipr, index=cidx).mtu != ctx.mtu:
                        cipr.link("set", index=cidx, mtu=ctx.mtu)
                        hit = True
            except Exception as exc:  # noqa: BLE001 - one vanished container must not stop the others
                log.warning("container %s: MTU not updated: %s", c["id"], exc)
                continue
            if hit:
                changed.append(c["id"])
    return changed


# Backends whose agent measures path MTUs unless told not to (`agent --no-probe-mtu`):
# auto moves peers between transports by full-size probes anyway (Weave probes always);
# a path that cannot carry the container MTU would make every transport of that peer
# "fail". `apply` stays opt-in (`--probe-mtu`): one measurement, frozen in applied.json,
# with nothing to correct it later (docs/mtu.md).
PROBED_BY_DEFAULT = ("auto",)


def probes_by_default(backend_name: str) -> bool:
    """Whether `crossnet agent` measures path MTUs for this backend without --probe-mtu."""
    return backend_name in PROBED_BY_DEFAULT


class Monitor:
    """The agent's prober (`crossnet agent --probe-mtu`): measures every peer's path at
    start, every `interval` seconds and soon after `poke()` (a peer joined or changed);
    when the container MTU the new record gives differs from the one in use it calls
    `changed()` (the agent then resyncs: `adjust` in its full sync, containers updated).
    `record` is the last measurement (kept in applied.json as apply keeps its own).
    `run(…, stop)` sleeps between rounds without waking: set `stop`, then `poke()`."""

    def __init__(self, interval: float, **probe_opts: Any):
        self.interval = interval
        self.probe_opts = {"timeout": 0.3, "retries": 3, "budget": 5.0, **probe_opts}
        self.record: dict[str, Any] | None = None
        self._wake = threading.Event()

    @classmethod
    def resume(cls, state: StateDir, interval: float) -> Monitor:
        """A monitor that starts from the last record in applied.json: a restarted agent
        keeps the measured MTU instead of raising it until the first probe is done."""
        m = cls(interval)
        try:
            record = (state.load_applied() or {}).get("path_mtu")
        except Exception:  # noqa: BLE001 - an unreadable record is no measurement
            record = None
        m.record = record if isinstance(record, dict) else None
        return m

    def poke(self) -> None:
        self._wake.set()

    def run(self, get_ctx: Callable[[], HostContext | None], backend: Backend, changed: Callable[[], None],
            stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            ctx = get_ctx()
            if ctx is not None and ctx.peers and probed(ctx.backend):
                try:
                    self.record = measure(copy.copy(ctx), **self.probe_opts)
                except Exception:  # noqa: BLE001 - never let the prober die silently
                    log.exception("path MTU: measurement failed")
                else:
                    trial = copy.copy(ctx)
                    adjust(trial, backend, self.record)
                    if trial.mtu != ctx.mtu:
                        log.info("path MTU: container MTU %d -> %d", ctx.mtu, trial.mtu)
                        changed()
            # sleeps until the next round or poke() (no periodic wakeup): whoever sets
            # `stop` pokes too (the agent's _shutdown_threads)
            deadline = time.monotonic() + self.interval
            while not stop.is_set() and time.monotonic() < deadline:
                if self._wake.wait(max(0.0, deadline - time.monotonic())):
                    break
