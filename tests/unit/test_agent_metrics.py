"""crossnet.agent.metrics: /metrics in Prometheus text format read from an agent (a real
Agent on the fake kernel and in-memory store, and a fake agent for the health states),
/healthz and /readyz answers, the --metrics-address rules, and that the agent's start-up
does not import prometheus_client unless asked."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crossnet.agent import metrics
from crossnet.errors import ConfigError
from tests.unit.test_agent_sync import deliver, kernel, start, store_for  # noqa: F401 - kernel is a fixture


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fake_agent(**kw) -> SimpleNamespace:
    base = {"synced_at": 1.0, "health": {"keepalive": None, "watch": None, "sync": None, "containers": None},
            "data_plane_problem": None, "peers": {}, "peer_res": {}, "revision": 0, "lease": None,
            "book": SimpleNamespace(records={}, invalid={}, rejected_total=0), "rejected_containers": 0,
            "transports": None, "dns": None, "metrics": None}
    base.update(kw)
    return SimpleNamespace(**base)


def metered_agent(kernel, tmp_path):  # noqa: F811
    """A real agent (fake kernel, in-memory store, peer h2) with its metrics hooked in."""
    store = store_for("vxlan")
    store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    m = metrics.AgentMetrics(a)
    a.metrics = m
    return store, a, m


def test_metrics_of_a_real_agent_follow_its_syncs(kernel, tmp_path):  # noqa: F811
    store, a, m = metered_agent(kernel, tmp_path)
    before = samples(m.render()[0].decode())
    assert before[("crossnet_agent_peers", (("state", "programmed"),))] == 1
    assert before[("crossnet_agent_synced", ())] == 1 and before[("crossnet_agent_healthy", ())] == 1
    assert before[("crossnet_agent_sync_duration_seconds_count", ())] == 0  # the sync before the hook
    assert before[("crossnet_agent_lease_ttl_seconds", ())] == 10
    assert before[("process_resident_memory_bytes", ())] > 0
    store.join("h3", "10.56.0.3")
    deliver(a, store)
    a.full_sync(store.snapshot())  # a resync: counted and timed by the hook in full_sync
    a._report("keepalive", "etcd unreachable")  # the error hook in _report
    after = samples(m.render()[0].decode())
    assert after[("crossnet_agent_peers", (("state", "programmed"),))] == 2
    assert after[("crossnet_agent_peers", (("state", "known"),))] == 2
    assert after[("crossnet_agent_sync_duration_seconds_count", ())] == 1
    assert after[("crossnet_agent_sync_duration_seconds_sum", ())] > 0
    assert after[("crossnet_agent_errors_total", (("component", "keepalive"),))] == 1
    assert after[("crossnet_agent_component_up", (("component", "keepalive"),))] == 0
    assert after[("crossnet_agent_healthy", ())] == 1  # store down, data plane intact: still healthy


def test_rejections_transport_switches_and_dns_queries():
    a = fake_agent(book=SimpleNamespace(records={}, invalid={"x": "bad"}, rejected_total=3), rejected_containers=2,
                   transports=SimpleNamespace(switches=4),
                   dns=SimpleNamespace(server=SimpleNamespace(stats={"queries": 7, "answered": 5})))
    s = samples(metrics.AgentMetrics(a).render()[0].decode())
    assert s[("crossnet_agent_rejected_records_total", ())] == 3
    assert s[("crossnet_agent_rejected_containers_total", ())] == 2
    assert s[("crossnet_agent_transport_switches_total", ())] == 4
    assert s[("crossnet_agent_dns_queries_total", (("outcome", "queries"),))] == 7
    assert s[("crossnet_agent_peers", (("state", "known"),))] == 1


@pytest.mark.parametrize("state,ok,reason", [
    ({"synced_at": None}, False, "not synced yet"),
    ({"health": {"sync": "peer h2: no route"}}, False, "last sync failed: peer h2: no route"),
    ({"health": {"watch": "etcd down"}}, True, "ok (store unreachable: watch: etcd down; data plane intact)"),
    ({"health": {"keepalive": "etcd down"}, "data_plane_problem": "wireguard-go exited"}, False,
     "store unreachable (keepalive: etcd down) and data plane broken (wireguard-go exited)"),
    ({"data_plane_problem": "wireguard-go exited"}, True, "ok"),
    ({}, True, "ok"),
])
def test_health_states(state, ok, reason):
    got_ok, why = metrics.health(fake_agent(**state))
    assert got_ok is ok and why.startswith(reason) and "\n" not in why


def test_ready_needs_the_store():
    assert metrics.ready(fake_agent()) == (True, "ok")
    assert metrics.ready(fake_agent(health={"watch": "etcd down"}))[0] is False
    assert metrics.ready(fake_agent(synced_at=None))[0] is False


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_http_endpoints():
    a = fake_agent(synced_at=None)
    server = metrics.MetricsServer(a, ("127.0.0.1", 0)).start()
    try:
        base = f"http://{server.address}"
        code, ctype, body = get(base + "/healthz")
        assert (code, body) == (503, "not synced yet (start-up in progress)\n")
        a.synced_at = 5.0
        assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[2] == "ok\n"
        code, ctype, body = get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain") and "crossnet_agent_synced 1.0" in body
        assert get(base + "/nothing")[0] == 404
    finally:
        server.close()


@pytest.mark.parametrize("text,want", [("9100", ("127.0.0.1", 9100)), (":9100", ("127.0.0.1", 9100)),
                                       ("localhost:9100", ("127.0.0.1", 9100)), ("10.1.2.3:80", ("10.1.2.3", 80)),
                                       ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))])
def test_parse_address(text, want):
    assert metrics.parse_address(text) == want


@pytest.mark.parametrize("text", ["", "host.example:9100", "10.1.2.3", "10.1.2.3:0", "10.1.2.3:70000",
                                  "10.1.2.3:x", "224.0.0.1:9100", "1.2.3.4:9100:1"])
def test_parse_address_refuses(text):
    with pytest.raises(ConfigError, match="^--metrics-address: "):
        metrics.parse_address(text)


def test_a_port_in_use_is_one_line():
    first = metrics.MetricsServer(fake_agent(), ("127.0.0.1", 0))
    try:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(metrics.CrossnetError, match=r"^--metrics-address: cannot listen on 127\.0\.0\.1:\d+: "):
            metrics.MetricsServer(fake_agent(), ("127.0.0.1", port))
    finally:
        first.httpd.server_close()


def test_agent_start_up_does_not_import_prometheus_client():
    code = ("import sys; import crossnet.cli.agent, crossnet.agent.core; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_bad_metrics_address_is_bad_input_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "s"), "agent",
                           "-f", str(tmp_path / "none.yaml"), "--metrics-address", "example.org:9100"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("crossnet: error: --metrics-address:")
    assert not (tmp_path / "s").exists()


def test_resources_lease_left_store_and_repairs_of_a_real_agent(kernel, tmp_path):  # noqa: F811
    """Resources programmed (local + per peer), the lease's TTL left, the store reachable,
    and a full sync that catches up a change it missed counts as repaired (the hook in
    full_sync: the first sync does not count)."""
    store, a, m = metered_agent(kernel, tmp_path)
    s = samples(m.render()[0].decode())
    assert s[("crossnet_agent_resources_programmed", (("part", "peers"),))] == len(a.peer_res[next(iter(a.peer_res))])
    assert s[("crossnet_agent_resources_programmed", (("part", "local"),))] == len(a.base_res) > 0
    assert 9 <= s[("crossnet_agent_lease_ttl_left_seconds", ())] <= 10
    assert s[("crossnet_agent_store_reachable", ())] == 1
    assert s[("crossnet_agent_resources_repaired_total", ())] == 0
    assert s[("crossnet_agent_containers_attached", ())] == 0
    store.join("h3", "10.56.0.3")  # the event is missed: the next full sync programs h3
    a.full_sync(store.snapshot())
    a.lease_renewed -= 4  # 4 s without renewal
    a._report("watch", "etcd unreachable")
    s = samples(m.render()[0].decode())
    assert s[("crossnet_agent_resources_repaired_total", ())] > 0
    assert 5 <= s[("crossnet_agent_lease_ttl_left_seconds", ())] <= 6
    assert s[("crossnet_agent_store_reachable", ())] == 0


def test_lease_left_is_never_negative():
    import time

    a = fake_agent(lease=SimpleNamespace(ttl=10), lease_renewed=time.monotonic() - 60)
    assert metrics.lease_left(a) == 0
    assert metrics.lease_left(fake_agent(lease=SimpleNamespace(ttl=10))) is None  # never renewed: unknown


def test_containers_attached_reads_the_host(tmp_path):
    items = [{"id": "a"}, {"id": "b"}]
    s = samples(metrics.AgentMetrics(fake_agent(_local_containers=lambda: items)).render()[0].decode())
    assert s[("crossnet_agent_containers_attached", ())] == 2


def per_peer_prober(tmp_path):
    """A real Prober whose selector for h2 saw answers on direct and none on vxlan."""
    import threading
    from ipaddress import IPv4Network

    from crossnet.transport.prober import Prober
    from crossnet.transport.select import Selector

    p = Prober(tmp_path, lambda: None, list, lambda s: None, threading.Event())
    subnet = IPv4Network("10.32.2.0/24")
    sel = Selector(("direct", "vxlan"), 0.0)
    sel.record("direct", 0.0012, 1.0)
    sel.record("direct", 0.0008, 1.5)
    sel.record("vxlan", None, 1.5)
    p.selectors[subnet] = sel
    p.peers[subnet] = SimpleNamespace(name="h2", address="192.168.56.2")
    p.switches = 1
    return p


def test_per_peer_transport_and_rtt_from_the_prober(tmp_path):
    s = samples(metrics.AgentMetrics(fake_agent(transports=per_peer_prober(tmp_path))).render()[0].decode())
    assert s[("crossnet_agent_peer_transport", (("peer", "h2"), ("transport", "direct")))] == 1
    assert s[("crossnet_agent_peer_transport", (("peer", "h2"), ("transport", "vxlan")))] == 0
    assert s[("crossnet_agent_peer_rtt_seconds", (("peer", "h2"), ("transport", "direct")))] == pytest.approx(0.0008)
    assert ("crossnet_agent_peer_rtt_seconds", (("peer", "h2"), ("transport", "vxlan"))) not in s  # never answered
    assert s[("crossnet_agent_peer_probes_total", (("peer", "h2"), ("transport", "vxlan")))] == 1
    assert s[("crossnet_agent_peer_probes_answered_total", (("peer", "h2"), ("transport", "direct")))] == 2
    assert s[("crossnet_agent_transport_switches_total", ())] == 1


def test_attach_and_cni_latency_through_the_api(tmp_path):
    """The agent's API times the attaches and CNI calls it runs (crossnet-cni hands its
    calls to the agent): here an attach on a host not configured yet (409) and a CNI ADD
    with a bad network configuration (rc != 0), both counted as errors; a stale CNI call
    (another namespace: the plugin runs it itself) is not counted."""
    from crossnet.agent import api
    from crossnet.cni import netns_id, target_id
    from crossnet.state import StateDir

    a = fake_agent(state=StateDir(str(tmp_path / "s")), containers_changed=lambda: None)
    a.metrics = metrics.AgentMetrics(a)
    with pytest.raises(api.NotConfigured):
        api.handle(a, "POST", "/v1/attach", {"id": "c1", "netns": "/proc/self/ns/net"})
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/opt/cni/bin"}
    log = tmp_path / "cni.log"
    body = {"environ": environ, "stdin": json.dumps({"logFile": str(log)}), "netns": list(netns_id()),
            "target": list(target_id(environ))}
    status, out = api.handle(a, "POST", "/v1/cni", body)
    assert status == 200 and out["rc"] != 0, out
    line = json.loads(log.read_text())  # the network's logFile has the call, as the plugin and helper write it
    assert (line["via"], line["command"], line["level"], line["msg"]) == ("agent", "ADD", "error", "ADD failed")
    api.handle(a, "POST", "/v1/cni", {**body, "target": [0, 0]})  # stale
    s = samples(a.metrics.render()[0].decode())
    assert s[("crossnet_agent_attach_duration_seconds_count", (("result", "error"),))] == 1
    assert s[("crossnet_agent_cni_duration_seconds_count", (("command", "ADD"), ("result", "error")))] == 1
    assert s[("crossnet_agent_cni_duration_seconds_sum", (("command", "ADD"), ("result", "error")))] > 0


def test_observe_without_metrics_does_nothing():
    metrics.observe(fake_agent(), "attach", 0.1, True)  # no --metrics-address: no registry, no error
    metrics.observe(SimpleNamespace(), "cni", 0.1, True, "ADD")


def _trickle(addr, stop_after: float) -> float:
    """A request line one byte every 50 ms: seconds until the server closed the connection."""
    import socket
    import time

    from tests.unit.trickle import trickle

    t0 = time.monotonic()
    with socket.create_connection(addr, timeout=5) as s:
        return trickle(s, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 10_000, t0, stop_after)


def _server(monkeypatch, **limits):
    for k, v in limits.items():
        monkeypatch.setattr(metrics, k, v)
    server = metrics.MetricsServer(fake_agent(synced_at=5.0), ("127.0.0.1", 0)).start()
    return server, ("127.0.0.1", server.httpd.server_address[1])


def _healthz(addr, source: str) -> int:
    import http.client

    conn = http.client.HTTPConnection(*addr, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_an_idle_or_trickling_client_is_cut_at_the_deadline(monkeypatch):
    """The endpoint may listen on every address: a client that sends nothing, or one byte
    at a time, had held its connection and thread for as long as it liked."""
    import socket
    import time

    server, addr = _server(monkeypatch, TIMEOUT=1.0, CONNECTION_DEADLINE=1.5)
    try:
        assert _trickle(addr, stop_after=6.0) < 4.0
        with socket.create_connection(addr, timeout=5) as idle:
            t0 = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server after the read timeout
            assert time.monotonic() - t0 < 4.0
        assert _healthz(addr, "127.0.0.1") == 200
    finally:
        server.close()


def test_connections_beyond_the_limits_are_closed_at_once_and_one_source_cannot_hold_them_all(monkeypatch):
    """Idle connections hold at most MAX_PER_SOURCE threads per source address and
    MAX_CONNECTIONS in all: the next is closed at once; other sources are still served."""
    import socket

    server, addr = _server(monkeypatch, MAX_CONNECTIONS=4, MAX_PER_SOURCE=2)
    held = []
    try:
        held += [socket.create_connection(addr, timeout=5, source_address=("127.0.0.1", 0)) for _ in range(2)]
        _wait_held(server, 2)
        with socket.create_connection(addr, timeout=2, source_address=("127.0.0.1", 0)) as extra:
            assert extra.recv(1) == b""  # this source holds its share: closed, not left waiting
        assert _healthz(addr, "127.0.0.2") == 200  # another source is served meanwhile
        _wait_held(server, 2)  # that request's connection is gone
        held += [socket.create_connection(addr, timeout=5, source_address=("127.0.0.3", 0)) for _ in range(2)]
        _wait_held(server, 4)
        with socket.create_connection(addr, timeout=2, source_address=("127.0.0.4", 0)) as extra:
            assert extra.recv(1) == b""  # all MAX_CONNECTIONS held
    finally:
        for s in held:
            s.close()
        server.close()


def _wait_held(server, n):
    import time

    deadline = time.monotonic() + 5
    while server.httpd.open_connections() != n:
        assert time.monotonic() < deadline
        time.sleep(0.02)
