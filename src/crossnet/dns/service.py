"""Running crossnet's DNS on a host: inside the agent (:func:`start_for_agent`, a few
threads of the agent process) or, with no agent, `crossnet dns serve` (:func:`serve`).

Where it listens: the host's container gateway address (bridge backend: the host's own
LAN address), UDP and TCP port 53, in the host's namespace only (never 0.0.0.0).
What it answers: with a store that carries containers (etcd), every host's published
containers, re-read at every change the store watch reports (a detach is gone from every
host's answers as soon as its host published the new list); with the cluster file (no
channel between hosts), this host's own containers, re-read every second — `status` says
which (``scope``: ``cluster`` or ``host``).
Other names go to the resolvers of the host namespace's /etc/resolv.conf, read once at
start (never crossnet's own listen addresses, never crossnet's domain or reverse zones).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

from crossnet.dns import DEFAULT_DOMAIN, Table, parse_resolv_conf
from crossnet.dns import resolv as dns_resolv
from crossnet.state import StateDir

log = logging.getLogger("crossnet.dns")

RESOLV_CONF = "/etc/resolv.conf"
LOCAL_POLL = 1.0  # seconds between reads of this host's containers when there is no store channel
WATCH_RETRY = 1.0


def listen_addresses(ctx: Any) -> list[str]:
    """Where this host's DNS listens: the container gateway (bridge backend: the host's LAN address)."""
    return [str(ctx.address if ctx.backend == "bridge" else ctx.gateway)]


def upstreams(listen: list[str], path: str = RESOLV_CONF) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(65536)
    except OSError as exc:
        log.warning("dns: cannot read %s (%s): other names will not resolve", path, exc.strerror)
        return []
    return parse_resolv_conf(text, exclude=listen)


def local_containers(state: StateDir, read: Callable[[StateDir], list[dict]] | None = None) -> dict[str, list[dict]]:
    """This host's live containers of ``state`` as the table takes them. ``read``: a state
    dir's container list (default crossnet.containers.list_containers; a server that
    asks every second passes a crossnet.localcache.Readers' read)."""
    from crossnet import containers

    read = read or containers.list_containers
    return {"": [c for c in read(state) if c.get("state") != "stale"]}


def of_network(hosts: dict[str, list[dict]], network: str | None) -> dict[str, list[dict]]:
    """host -> its published containers of ``network`` (their ``network`` field; None: the
    top-level network's, which carry none): each network's DNS answers for its own only."""
    return {h: [c for c in items if c.get("network") == network] for h, items in hosts.items()}


class DnsService:
    """A :class:`crossnet.dns.server.DnsServer` and the thread that keeps its table current.

    ``read``: () -> host name -> published containers (None: the store has no channel);
    ``watch``: (since, stop) -> revisions of changes, with ``revision`` () giving the
    revision to start from; without them the table is re-read every LOCAL_POLL seconds."""

    def __init__(self, state: StateDir, domain: str, networks: list[IPv4Network], listen: list[str],
                 read: Callable[[], dict | None], port: int = 53, resolv_conf: str = RESOLV_CONF,
                 revision: Callable[[], int] | None = None,
                 watch: Callable[[int, threading.Event], Any] | None = None, scope: str = "cluster"):
        from crossnet.dns.server import DnsServer, Forwarder

        self.state, self.domain, self.networks, self.listen = state, domain, networks, listen
        self.read, self.revision, self.watch, self.scope = read, revision, watch, scope
        self.upstreams = upstreams(listen, resolv_conf)
        self.server = DnsServer(listen, Forwarder(self.upstreams), port=port, table=Table(domain, tuple(networks)),
                                clients=networks)
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.updated_at: float | None = None
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the store watch's connection
        self._lock: int | None = None  # dns.lock, held while serving

    def start(self) -> None:
        """OSError when it cannot listen, BlockingIOError when another process already
        serves this host's DNS (nothing is left running then)."""
        self._lock = dns_resolv.hold(self.state)
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - the store is down: the loop retries
            self.error = str(exc)
        try:
            self.server.start()
        except OSError:
            os.close(self._lock)
            self._lock = None
            raise
        self._thread = threading.Thread(target=self._loop, name="dns-table", daemon=True)
        self._thread.start()
        self._write_info()
        log.info("dns: serving %s on %s port %d (%s), forwarding other names to %s", self.domain,
                 ", ".join(self.listen), self.server.port, self.scope, ", ".join(self.upstreams) or "nobody")

    def _opened(self, conn: Any) -> None:
        self._conn = conn
        if self.stop_event.is_set():
            self._interrupt()

    def _interrupt(self) -> None:
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stop_event.set()
        self._interrupt()  # a watch blocked reading etcd returns now
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.server.stop()
        dns_resolv.remove_info(self.state)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def refresh(self) -> None:
        hosts = self.read()
        if hosts is None:
            hosts = {}
        table = Table.build(self.domain, hosts, self.networks)
        if table.rejected and table.rejected != self.server.table.rejected:
            log.warning("dns: ignored %d published container name(s) that are not DNS names", table.rejected)
        self.server.set_table(table)
        self.updated_at = time.time()

    def info(self) -> dict[str, Any]:
        t = self.server.table
        return {"pid": os.getpid(), "domain": self.domain, "listen": self.listen, "port": self.server.port,
                "scope": self.scope, "upstreams": self.upstreams, "names": len(t.names), "rejected": t.rejected,
                "networks": [str(n) for n in self.networks]}

    def _write_info(self) -> None:
        try:
            dns_resolv.write_info(self.state, self.info())
        except OSError as exc:
            log.warning("dns: writing %s: %s", dns_resolv.info_path(self.state), exc)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.watch is None or self.revision is None:
                    self.stop_event.wait(LOCAL_POLL)
                    self._refresh_logged()
                    continue
                since = self.revision() + 1
                self._refresh_logged()
                for _rev in self.watch(since, self.stop_event, self._opened):
                    self._refresh_logged()
                    if self.stop_event.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - the store is down or answered garbage: retry
                if self.error != str(exc):
                    log.warning("dns: following the store: %s; retrying", exc)
                self.error = str(exc)
                self.stop_event.wait(WATCH_RETRY)

    def _refresh_logged(self) -> None:
        before = len(self.server.table.names)
        self.refresh()
        self.error = None
        if len(self.server.table.names) != before:
            self._write_info()


def start_for_agent(agent: Any) -> DnsService | None:
    """The agent's DNS (called once the first sync made the bridge); None (logged) when it
    cannot listen — the agent runs on without DNS."""
    from crossnet.store import StoreError

    store = agent.store
    try:
        channel = store.containers() is not None
    except StoreError:  # down right now: it has the channel
        channel = True

    def read() -> dict | None:  # the top-level network's (the named ones': crossnet.agent.netdns)
        if not channel:
            return local_containers(agent.state)
        return of_network(agent.cluster_containers()["hosts"], None)

    svc = DnsService(agent.state, agent.cfg.dns_domain,
                     [agent.cfg.network], listen_addresses(agent.ctx), read,
                     revision=(lambda: store.containers_at()[1]) if channel else None,
                     watch=store.watch_containers if channel else None,
                     scope="cluster" if channel else "host")
    # a container whose namespace died (no detach) drops out of the list the agent publishes:
    # with scope "cluster" its main loop asks for a republish every second (Agent._check_local)
    try:
        svc.start()
    except BlockingIOError:
        log.error("dns: another process serves this host's DNS (crossnet dns serve?); the agent does not")
        return None
    except OSError as exc:
        log.error("dns: cannot listen on %s: %s; no DNS on this host", ", ".join(svc.listen), exc.strerror or exc)
        return None
    except Exception:  # noqa: BLE001 - DNS never takes the agent (the data plane) down with it
        log.exception("dns: not started")
        return None
    return svc


def serve(state: StateDir, domain: str | None, port: int, resolv_conf: str, stop: threading.Event,
          wait: bool = False) -> None:
    """`crossnet dns serve`: this host's own containers, until ``stop``. ``wait``: the host
    may not be configured yet (the lab starts it before `apply`): wait for it."""
    from crossnet.backends.base import HostContext
    from crossnet.errors import CrossnetError

    while True:
        try:
            ctx = HostContext.applied(state)
            break
        except (CrossnetError, OSError, ValueError, KeyError):
            if not wait:
                raise
            if stop.wait(0.5):
                return
    if domain is None:  # what the agent last applied, else the default
        domain = ((state.load_applied() or {}).get("network_config") or {}).get("dns_domain") or DEFAULT_DOMAIN
    from crossnet.localcache import Readers

    cached = Readers()  # the table is re-read every LOCAL_POLL seconds: only what changed
    svc = DnsService(state, domain, [ctx.network], listen_addresses(ctx),
                     lambda: local_containers(state, cached.read), port=port, resolv_conf=resolv_conf, scope="host")
    try:
        svc.start()
    except BlockingIOError:
        raise CrossnetError("dns: this host's DNS is served already (by the agent or another crossnet dns serve)"
                            ) from None
    except OSError as exc:
        raise CrossnetError(f"dns: cannot listen on {', '.join(svc.listen)} port {port}: "
                            f"{exc.strerror or exc}") from None
    named = named_services(state, domain, port, resolv_conf, cached)
    try:
        stop.wait()
    finally:
        for one in named:
            one.stop()
        svc.stop()


def named_services(state: StateDir, domain: str, port: int, resolv_conf: str, cached: Any = None) -> list[DnsService]:
    """`crossnet dns serve` for the named networks this host applied (docs/networks.md):
    one server per network, on that network's gateway, answering for that network's
    containers only (its own state dir: its IPAM, dns.json, dns.lock), so a name resolves
    only from its own network (another network's server says NXDOMAIN, and its gateway is
    out of reach: crossnet.netiso). Started once (networks applied later: restart it); one
    that cannot listen is logged and skipped."""
    from crossnet import networks
    from crossnet.backends.base import HostContext

    out = []
    for name in networks.recorded(state):
        sub = networks.state_of(state, name)
        try:
            ctx = HostContext.applied(sub)
        except Exception as exc:  # noqa: BLE001 - a damaged record: that network has no DNS
            log.error("dns: network %s: %s; not served", name, exc)
            continue
        svc = DnsService(sub, domain, [ctx.network], listen_addresses(ctx),
                         lambda sub=sub: local_containers(sub, cached.read if cached else None), port=port,
                         resolv_conf=resolv_conf, scope="host")
        try:
            svc.start()
        except OSError as exc:
            log.error("dns: network %s: cannot listen on %s: %s", name, ", ".join(svc.listen), exc.strerror or exc)
            continue
        out.append(svc)
    return out


__all__ = ["DnsService", "listen_addresses", "of_network", "serve", "start_for_agent", "upstreams"]
