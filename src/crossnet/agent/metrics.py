"""The agent's Prometheus metrics and health endpoints (``crossnet agent --metrics-address
HOST:PORT``, off by default; docs/production.md).

- ``GET /metrics``: Prometheus text format (prometheus_client, imported only when the
  option is given). Gauges and totals are read from the agent at scrape time (peers,
  resources, containers, lease, store, per-peer transport and RTT from the prober); the
  histograms and counters are fed by hooks: ``synced(seconds, repaired)`` and
  ``error(component)`` in crossnet.agent.core, ``observe(agent, kind, seconds, ...)`` in
  crossnet.agent.api around the attaches and CNI calls the agent runs (the CNI plugin
  hands ADD/DEL to the agent when one runs: its latency is measured there, the plugin
  process imports nothing more). docs/operations.md "Metrics reference" lists them all.
- ``GET /healthz``: 200 ``ok`` when the last full sync succeeded and the store is
  reachable or the data plane is intact; 503 and a one-line reason otherwise.
- ``GET /readyz``: 200 once synced with the store reachable, else 503.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crossnet.agent.health import STORE_PARTS, lease_left
from crossnet.errors import ConfigError, CrossnetError
from crossnet.optdeps import needed
from crossnet.serveloop import LimitedConnections

log = logging.getLogger("crossnet.agent.metrics")
DEFAULT_HOST = "127.0.0.1"
SYNC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ATTACH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# the endpoint may listen on every address (no authentication): a request is read within
# TIMEOUT per read and CONNECTION_DEADLINE in all, at most MAX_CONNECTIONS at once, at most
# MAX_PER_SOURCE of them from one address (crossnet.serveloop.LimitedConnections)
TIMEOUT = 10.0
CONNECTION_DEADLINE = 30.0
MAX_CONNECTIONS = 32
MAX_PER_SOURCE = 4


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (then 127.0.0.1). Every address
    (0.0.0.0, ::) only when written out."""
    label = "--metrics-address"
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = "", raw
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or DEFAULT_HOST
    if host == "localhost":
        host = DEFAULT_HOST
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{label}: {text!r}: the host must be an IP address or localhost (HOST:PORT)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{label}: {text!r}: the port must be 1-65535 (HOST:PORT)")
    if ip.is_multicast:
        raise ConfigError(f"{label}: {text!r}: not a unicast address")
    return str(ip), int(port)


def health(agent: Any) -> tuple[bool, str]:
    """(healthy, one-line reason) — what /healthz answers."""
    if agent.synced_at is None:
        return False, "not synced yet (start-up in progress)"
    errors = agent.health
    if errors.get("sync"):
        return False, f"last sync failed: {errors['sync']}"
    store = next((f"{k}: {errors[k]}" for k in STORE_PARTS if errors.get(k)), None)
    broken = getattr(agent, "data_plane_problem", None)
    if store and broken:
        return False, f"store unreachable ({store}) and data plane broken ({broken})"
    if store:
        return True, f"ok (store unreachable: {store}; data plane intact)"
    return True, "ok"


def ready(agent: Any) -> tuple[bool, str]:
    """(ready, reason) — /readyz: synced and the store reachable."""
    ok, why = health(agent)
    if not ok:
        return ok, why
    store = next((f"{k}: {agent.health[k]}" for k in STORE_PARTS if agent.health.get(k)), None)
    return (False, f"store unreachable ({store})") if store else (True, "ok")


class AgentMetrics:
    """The agent's registry: a custom collector reading the agent, the sync histogram,
    the error counter, and the process collector (RSS, CPU, open fds)."""

    def __init__(self, agent: Any):
        with needed("prometheus_client", "--metrics-address"):
            import prometheus_client as pc
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.agent = agent
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        self.sync_seconds = pc.Histogram("crossnet_agent_sync_duration_seconds",
                                         "Duration of the agent's full syncs (count: number of syncs)",
                                         buckets=SYNC_BUCKETS, registry=self.registry)
        self.errors = pc.Counter("crossnet_agent_errors", "Failures by component: keepalive, watch (the store), sync, peer, local (reconcile errors), "
                                 "containers (publishing), and the start-up steps retried",
                                 ["component"], registry=self.registry)
        self.repaired = pc.Counter("crossnet_agent_resources_repaired",
                                   "Kernel changes made by full syncs after the first one (drift repaired, "
                                   "missed changes caught up)", registry=self.registry)
        self.attach_seconds = pc.Histogram("crossnet_agent_attach_duration_seconds",
                                           "Duration of the container attaches the agent ran (POST /v1/attach)",
                                           ["result"], buckets=ATTACH_BUCKETS, registry=self.registry)
        self.cni_seconds = pc.Histogram("crossnet_agent_cni_duration_seconds",
                                        "Duration of the CNI calls crossnet-cni handed to the agent (POST /v1/cni)",
                                        ["command", "result"], buckets=ATTACH_BUCKETS, registry=self.registry)
        pc.ProcessCollector(registry=self.registry)
        gauge, counter = GaugeMetricFamily, CounterMetricFamily

        class Collector:
            def collect(inner) -> Any:  # reads the agent at scrape time
                yield from self._collect(gauge, counter)

        self.registry.register(Collector())

    # hooks called by the agent
    def synced(self, seconds: float, repaired: int = 0) -> None:
        self.sync_seconds.observe(seconds)
        if repaired:
            self.repaired.inc(repaired)

    def attached(self, seconds: float, ok: bool) -> None:
        self.attach_seconds.labels("ok" if ok else "error").observe(seconds)

    def cni(self, command: str, seconds: float, ok: bool) -> None:
        self.cni_seconds.labels(command, "ok" if ok else "error").observe(seconds)

    def error(self, component: str) -> None:
        self.errors.labels(component).inc()

    def _collect(self, gauge: Any, counter: Any) -> Any:
        a = self.agent
        peers = gauge("crossnet_agent_peers", "Peers by state: known (live records), valid, programmed", labels=["state"])
        peers.add_metric(["known"], len(a.book.records) + len(a.book.invalid))
        peers.add_metric(["valid"], len(a.peers))
        peers.add_metric(["programmed"], len(a.peer_res))
        yield peers
        yield gauge("crossnet_agent_synced", "1 once the first full sync succeeded", value=int(a.synced_at is not None))
        if a.synced_at is not None:
            yield gauge("crossnet_agent_last_sync_timestamp_seconds", "Time of the last full sync (Unix)", value=a.synced_at)
        ok, _ = health(a)
        yield gauge("crossnet_agent_healthy", "1 when /healthz answers 200", value=int(ok))
        up = gauge("crossnet_agent_component_up", "0 while a component reports an error (keepalive, watch, sync, containers)",
                   labels=["component"])
        for k, v in sorted(a.health.items()):
            up.add_metric([k], int(not v))
        yield up
        yield gauge("crossnet_agent_store_revision", "Store revision of the last applied change", value=a.revision)
        yield gauge("crossnet_agent_store_reachable", "0 while the store's keepalive or watch fails",
                    value=int(not any(a.health.get(k) for k in STORE_PARTS)))
        res = gauge("crossnet_agent_resources_programmed", "Kernel resources the agent owns: part local (bridge, tunnel device, "
                    "nft...) or peers (routes, FDB, neighbours, tunnel ports of every peer)",
                    labels=["part"])
        res.add_metric(["local"], len(getattr(a, "base_res", None) or []))
        res.add_metric(["peers"], sum(len(v) for v in list(a.peer_res.values())))
        yield res
        attached = _attached(a)
        if attached is not None:
            yield gauge("crossnet_agent_containers_attached", "Containers attached on this host (not stale)",
                        value=attached)
        lease = a.lease
        if lease is not None and lease.ttl:
            yield gauge("crossnet_agent_lease_ttl_seconds", "TTL of this host's subnet lease", value=lease.ttl)
            left = lease_left(a)
            if left is not None:
                yield gauge("crossnet_agent_lease_ttl_left_seconds",
                            "Seconds until the lease expires unless renewed (TTL minus time since the last renewal)",
                            value=left)
        yield counter("crossnet_agent_rejected_records", "Store records refused by validation",
                      value=a.book.rejected_total)
        yield counter("crossnet_agent_rejected_containers", "Published containers refused (outside their host's subnet)",
                      value=a.rejected_containers)
        if a.transports is not None:
            yield counter("crossnet_agent_transport_switches", "Per-peer transport switches (backend auto)",
                          value=getattr(a.transports, "switches", 0))
            yield from _per_peer(a.transports, gauge, counter)
        dns = a.dns
        stats = getattr(getattr(dns, "server", None), "stats", None)
        if isinstance(stats, dict):
            q = counter("crossnet_agent_dns_queries", "DNS queries by outcome", labels=["outcome"])
            for k, v in sorted(stats.items()):
                q.add_metric([k], v)
            yield q

    def render(self) -> tuple[bytes, str]:
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST


def _attached(agent: Any) -> int | None:
    try:
        return len(agent._local_containers())
    except (CrossnetError, OSError, ValueError, AttributeError):
        return None


def _per_peer(prober: Any, gauge: Any, counter: Any) -> Any:
    """Per peer (name) and transport: the one in use (1) and the other candidates (0),
    the last round-trip time, probes sent and answered (crossnet.transport.prober)."""
    snap = prober.snapshot() if hasattr(prober, "snapshot") else {"peers": {}}
    use = gauge("crossnet_agent_peer_transport", "1 for the transport in use to the peer, 0 for the other candidates",
                labels=["peer", "transport"])
    rtt = gauge("crossnet_agent_peer_rtt_seconds", "Last answered full-size probe's round-trip time",
                labels=["peer", "transport"])
    sent = counter("crossnet_agent_peer_probes", "Probes sent", labels=["peer", "transport"])
    answered = counter("crossnet_agent_peer_probes_answered", "Probes answered", labels=["peer", "transport"])
    for name, p in sorted(snap.get("peers", {}).items()):
        for t, c in sorted((p.get("candidates") or {}).items()):
            use.add_metric([name, t], int(t == p.get("transport")))
            if c.get("rtt_ms") is not None:
                rtt.add_metric([name, t], c["rtt_ms"] / 1000)
            sent.add_metric([name, t], c.get("probes", 0))
            answered.add_metric([name, t], c.get("answered", 0))
    yield from (use, rtt, sent, answered)


def observe(agent: Any, kind: str, seconds: float, ok: bool, command: str = "") -> None:
    """Hook for crossnet.agent.api: one attach (kind "attach") or CNI call (kind "cni")
    the agent ran; nothing without --metrics-address."""
    m = getattr(agent, "metrics", None)
    if m is None:
        return
    if kind == "attach":
        m.attached(seconds, ok)
    elif command in ("ADD", "DEL", "CHECK"):
        m.cni(command, seconds, ok)


class MetricsServer:
    """HTTP on ``(host, port)`` in a daemon thread: /metrics, /healthz, /readyz."""

    def __init__(self, agent: Any, address: tuple[str, int]):
        self.metrics = AgentMetrics(agent)
        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            server_version = "crossnet-agent"

            def setup(self) -> None:
                self.timeout = TIMEOUT  # read at call time: tests shorten it
                super().setup()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = metrics.render()
                    self._send(200, body, ctype)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (health if path == "/healthz" else ready)(metrics.agent)
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes are not log lines
                pass

        host, port = address
        cls = type("Server", (LimitedConnections, ThreadingHTTPServer),
                   {"address_family": _family(host), "daemon_threads": True,
                    "limits": lambda _self: (MAX_CONNECTIONS, MAX_PER_SOURCE, CONNECTION_DEADLINE)})
        try:
            self.httpd = cls((host, port), Handler)
        except OSError as exc:
            raise CrossnetError(f"--metrics-address: cannot listen on {_join(host, port)}: {exc.strerror or exc}") from None
        self.address = _join(host, self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics on http://%s/metrics (health: /healthz, /readyz)", self.address)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(agent: Any, text: str) -> MetricsServer:
    """Parse ``--metrics-address``, listen, hook the metrics into the agent."""
    host, port = parse_address(text)
    if ipaddress.ip_address(host).is_unspecified:
        log.warning("--metrics-address %s: metrics and health are served on every address of this host", text)
    server = MetricsServer(agent, (host, port)).start()
    agent.metrics = server.metrics
    return server
