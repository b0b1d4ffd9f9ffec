"""The agent's prober (backend auto): every `interval` seconds, one probe per peer and
per candidate transport (the one in use and the others), full-size (the container MTU)
and don't-fragment, to the probe address that only that transport reaches
(crossnet.backends.auto.probe_targets). Results go into each peer's `Selector`
(crossnet.transport.select); a switch is one log line, a counter, and a request to
the agent's main thread to re-program that peer (`notify(subnet)`): only the main
thread touches the kernel. What the prober knows is written to
``<state-dir>/transport.json`` for `crossnet status` (crossnet.transport.connections).

Hooked into crossnet.agent with a few lines: `attach(agent)` (None unless the backend
is auto), `annotate(peer)` when the agent builds a peer, `run` as a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from crossnet.backends.base import HostContext, Peer
from crossnet.transport import probe
from crossnet.transport.select import Selector, Switch, Timing

log = logging.getLogger("crossnet.transport")
STATE_FILE = "transport.json"
INTERVAL = 0.5  # s between probe rounds
TIMEOUT = 1.0  # s an echo may take
WRITE_EVERY = 2.0  # s between writes of transport.json without a switch
MAX_WORKERS = 32

Echo = Callable[..., "float | None"]


def state_path(state_root: str | Path) -> Path:
    return Path(state_root) / STATE_FILE


class Prober:
    def __init__(self, state_root: str | Path, ctx: Callable[[], HostContext | None],
                 connected: Callable[[], list[IPv4Network]], notify: Callable[[IPv4Network], None],
                 stop: threading.Event, timing: Timing | None = None, echo: Echo = probe.echo,
                 clock: Callable[[], float] = time.monotonic, interval: float = INTERVAL, timeout: float = TIMEOUT,
                 live: Callable[[], set[IPv4Network]] | None = None):
        self.path = state_path(state_root)
        self.ctx = ctx
        self.connected = connected
        self.notify = notify
        self.stop = stop
        self.timing = timing or Timing()
        self.echo = echo
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.live = live  # the peers' subnets the agent still has (others are forgotten)
        self.lock = threading.Lock()
        self.selectors: dict[IPv4Network, Selector] = {}
        self.peers: dict[IPv4Network, Peer] = {}
        self.since_wall: dict[IPv4Network, float] = {}
        self.switches = 0
        self._connected_cache: tuple[float, list[IPv4Network]] | None = None
        self._written = 0.0

    # ---- main thread: the agent builds a peer
    def annotate(self, peer: Peer) -> Peer:
        """Set the peer's transport to the one its selector chose (a new peer: the best
        candidate from the facts). Called by the thread that programs the kernel."""
        from crossnet.backends.auto import on_link, peer_candidates

        ctx = self.ctx()
        if ctx is None:
            return peer
        cands = peer_candidates(ctx, peer, on_link(ctx, self._connected(), peer))
        with self.lock:
            sel = self.selectors.get(peer.subnet)
            if sel is None or sel.candidates != cands:
                now = self.clock()
                sel = Selector(cands, now, self.timing, current=sel.current if sel else "")
                self.selectors[peer.subnet] = sel
                self.since_wall[peer.subnet] = time.time()
            self.peers[peer.subnet] = peer
            peer.transport = sel.current
        return peer

    def forget(self, keep: set[IPv4Network]) -> None:
        with self.lock:
            for s in [s for s in self.selectors if s not in keep]:
                self.selectors.pop(s, None)
                self.peers.pop(s, None)
                self.since_wall.pop(s, None)

    def _connected(self) -> list[IPv4Network]:
        now = self.clock()
        if self._connected_cache is None or now - self._connected_cache[0] > 5.0:
            self._connected_cache = (now, self.connected())
        return self._connected_cache[1]

    # ---- prober thread
    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="crossnet-probe") as pool:
            while not self.stop.is_set():
                started = self.clock()
                try:
                    self.round(pool)
                except Exception as exc:  # noqa: BLE001 - the prober must outlive one bad round
                    log.error("probe round failed: %s", exc)
                left = self.interval - (self.clock() - started)
                if left > 0 and self.stop.wait(left):
                    break

    def round(self, pool: ThreadPoolExecutor | None = None) -> list[tuple[str, Switch]]:
        """One probe of every candidate of every peer, then the decisions."""
        from crossnet.backends.auto import probe_targets

        ctx = self.ctx()
        if ctx is None:
            return []
        if self.live is not None:
            self.forget(self.live())
        with self.lock:
            work = [(s, self.peers[s], sel.candidates) for s, sel in self.selectors.items() if s in self.peers]
        jobs = []
        for subnet, peer, cands in work:
            targets = probe_targets(ctx, peer)
            for t in cands:
                src, dst = targets[t]
                jobs.append((subnet, t, src, dst))
        size = ctx.mtu

        def one(job: tuple) -> float | None:
            return self.echo(job[3], size, timeout=self.timeout, df=True, src=job[2])

        results = list(pool.map(one, jobs)) if pool is not None else [one(j) for j in jobs]
        now = self.clock()
        switched: list[tuple[str, Switch]] = []
        with self.lock:
            for (subnet, t, _src, _dst), rtt in zip(jobs, results):
                sel = self.selectors.get(subnet)
                if sel is not None:
                    sel.record(t, rtt, now)
            for subnet, sel in self.selectors.items():
                peer = self.peers.get(subnet)
                sw = sel.decide(now)
                if sw is None or peer is None:
                    continue
                self.switches += 1
                self.since_wall[subnet] = time.time()
                switched.append((peer.name, sw))
                log.warning("%s", sw.line(peer.name))
                self.notify(subnet)
        if switched or time.time() - self._written >= WRITE_EVERY:
            self.write()
        return switched

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            peers = {}
            for subnet, sel in self.selectors.items():
                peer = self.peers.get(subnet)
                if peer is None:
                    continue
                peers[peer.name] = {"subnet": str(subnet), "address": str(peer.address),
                                    "since": round(self.since_wall.get(subnet, 0.0), 3), **sel.to_json()}
            return {"updated": round(time.time(), 3), "switches": self.switches, "peers": peers}

    def write(self) -> None:
        from crossnet.state import write_json_atomic

        self._written = time.time()
        try:
            write_json_atomic(self.path, self.snapshot())
        except OSError as exc:
            log.error("writing %s: %s", self.path, exc)


def attach(agent: Any) -> Prober | None:
    """The agent's prober when its backend is auto, else None."""
    if agent.backend is None or agent.backend.name != "auto":
        return None
    from crossnet.backends.auto import connected_networks

    def connected() -> list[IPv4Network]:
        return connected_networks(agent._env(), agent.iface)

    return Prober(agent.state.root, lambda: agent.ctx, connected,
                  lambda subnet: agent.queue.put(("transport", subnet)), agent.stop, live=lambda: set(agent.peers))


__all__ = ["Prober", "attach", "state_path", "STATE_FILE"]
