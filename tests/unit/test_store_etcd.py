"""etcd client and EtcdStore against a real etcd server on 127.0.0.1 (unique ports,
temporary data dir; each test uses its own key prefix)."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import threading
import time
import uuid
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.errors import ConfigError
from crossnet.store import (
    LeaseLost,
    NetworkConfig,
    NotInitialized,
    StoreError,
    StoreUnavailable,
)
from crossnet.store.etcd import EtcdStore, parse_subnet_key, subnet_key_part
from crossnet.store.etcdclient import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    parse_endpoints,
    prefix_end,
)
from crossnet.lab.etcdserver import EtcdServer, etcd_available, free_port

needs_etcd = pytest.mark.skipif(not etcd_available(), reason="etcd not installed (apt-get install etcd-server)")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    if not etcd_available():
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    srv = EtcdServer.on_free_ports(tmp_path_factory.mktemp("etcd"), name="t6unit")
    yield srv
    srv.stop()


@pytest.fixture
def prefix():
    return f"/t6-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(etcd):
    c = EtcdClient(etcd.url, timeout=3)
    yield c
    c.close()


@pytest.fixture
def store(etcd, prefix):
    s = EtcdStore(EtcdClient(etcd.url, timeout=3), prefix)
    yield s
    s.client.delete(prefix + "/", prefix=True)
    s.close()


def cfg(**kw) -> NetworkConfig:
    kw.setdefault("network", "10.32.0.0/16")
    kw.setdefault("ttl", 3)
    return NetworkConfig(**kw)


# ------------------------------------------------------------------ pure helpers


def test_parse_endpoints():
    eps = parse_endpoints("http://10.0.0.1:2379, https://etcd.example:4001,unix:///run/etcd.sock")
    assert [str(e) for e in eps] == ["http://10.0.0.1:2379", "https://etcd.example:4001", "unix:///run/etcd.sock"]
    assert parse_endpoints("http://h")[0].port == 2379


@pytest.mark.parametrize("bad", ["", "10.0.0.1:2379", "ftp://h:1", "http://:2379", "http://h:99999", "http://h:1/v3",
                                 "unix://relative"])
def test_parse_endpoints_rejects(bad):
    with pytest.raises(ConfigError, match="--etcd"):
        parse_endpoints(bad)


def test_prefix_end():
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"


def test_subnet_key_roundtrip():
    net = IPv4Network("10.32.7.0/24")
    assert parse_subnet_key(subnet_key_part(net)) == net
    assert parse_subnet_key("garbage") is None


def test_network_config_validation():
    c = cfg()
    assert NetworkConfig.from_json(json.loads(json.dumps(c.to_json()))) == c
    with pytest.raises(ConfigError, match="backend"):
        cfg(backend="bridge")
    with pytest.raises(ConfigError, match="subnet_len"):
        cfg(subnet_len=16)
    with pytest.raises(ConfigError, match="ttl"):
        cfg(ttl=1)
    with pytest.raises(ConfigError, match="network"):
        NetworkConfig.from_json({"backend": "vxlan"})
    with pytest.raises(ConfigError, match="unknown key"):
        NetworkConfig.from_json({"network": "10.0.0.0/8", "colour": "red"})


@pytest.mark.parametrize("bridge", ["cnvx1", "cnwg0", "cnv0123456789", "gre-h2", "br/0", "a b", "x" * 16, "", "-x", 5])
def test_network_config_bridge_is_a_valid_name_of_no_other_crossnet_device(bridge):
    """The store's network config goes through the same interface-name check as the
    cluster file: `bridge: cnvx1` (the VXLAN device) broke attach."""
    with pytest.raises(ConfigError, match=r"^config: bridge: "):
        cfg(bridge=bridge)
    assert cfg(bridge="cnbr7").bridge_name == "cnbr7"


def test_unreachable_endpoint_is_one_line():
    port = free_port()
    c = EtcdClient(f"http://127.0.0.1:{port}", timeout=1)
    with pytest.raises(EtcdUnavailable) as exc:
        c.range("/x")
    assert "connection refused" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(StoreUnavailable, match="cannot reach etcd"):
        EtcdStore(c, "/x").get_config()


def test_not_an_etcd_endpoint():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(EtcdError, match="not an etcd v3 endpoint"):
            EtcdClient(f"http://127.0.0.1:{srv.server_port}", timeout=2).range("/x")
    finally:
        srv.shutdown()
        srv.server_close()


def test_tls_files_missing():
    with pytest.raises(ConfigError, match="TLS"):
        EtcdClient("https://127.0.0.1:1", cert="/nonexistent.pem", key="/nonexistent.key")


# ------------------------------------------------------------------ client against etcd


@needs_etcd
def test_kv_txn_and_failover(etcd, client, prefix):
    assert client.version().startswith("3.")
    rev = client.put(f"{prefix}/a", "1")
    kvs, rev2 = client.range(prefix + "/", prefix=True)
    assert [(k.key, k.value) for k in kvs] == [(f"{prefix}/a", b"1")] and rev2 >= rev
    ok, _, _ = client.txn([client.cmp_create(f"{prefix}/a", 0)], [client.op_put(f"{prefix}/a", "2")])
    assert not ok and client.get(f"{prefix}/a").value == b"1"
    ok, _, _ = client.txn([client.cmp_create(f"{prefix}/b", 0)], [client.op_put(f"{prefix}/b", "2")])
    assert ok
    assert client.delete(prefix + "/", prefix=True) == 2
    # a dead first endpoint: the second answers
    dead = f"http://127.0.0.1:{free_port()}"
    c2 = EtcdClient(f"{dead},{etcd.url}", timeout=2)
    assert c2.get(f"{prefix}/nothing") is None
    # the unix socket endpoint works too
    assert EtcdClient(etcd.unix_url).get(f"{prefix}/nothing") is None


@needs_etcd
def test_lease_cycle(client, prefix):
    lease, ttl = client.lease_grant(5)
    assert ttl == 5 and 0 < client.lease_ttl(lease) <= 5
    client.put(f"{prefix}/leased", "x", lease=lease)
    assert client.lease_keepalive(lease) == 5
    assert client.lease_revoke(lease)
    assert client.get(f"{prefix}/leased") is None
    assert client.lease_keepalive(lease) == 0
    assert client.lease_ttl(lease) == -1
    assert not client.lease_revoke(lease)


@needs_etcd
def test_watch_stream_and_replay(client, prefix):
    start = client.put(f"{prefix}/w/0", "zero")

    def writer():
        time.sleep(0.2)
        c = EtcdClient(client.describe())
        c.put(f"{prefix}/w/1", "one")
        c.delete(f"{prefix}/w/0")

    threading.Thread(target=writer, daemon=True).start()
    seen = []
    for events, _ in client.watch(f"{prefix}/w/", start, read_timeout=5):
        seen += [(e.type, e.kv.key) for e in events]
        if len(seen) >= 3:
            break
    assert seen == [("PUT", f"{prefix}/w/0"), ("PUT", f"{prefix}/w/1"), ("DELETE", f"{prefix}/w/0")]


@needs_etcd
def test_watch_idle_timeout_ends_quietly(client, prefix):
    rev = client.put(f"{prefix}/idle", "x")
    t0 = time.monotonic()
    batches = list(client.watch(f"{prefix}/nothing/", rev + 1, read_timeout=0.5))
    assert time.monotonic() - t0 < 5
    assert all(not events for events, _ in batches)


@needs_etcd
def test_an_idle_watch_stays_open_and_its_socket_has_tcp_keepalive(client, prefix):
    """An idle watch is not re-opened every 30 s (a TLS handshake, a watch and a read on
    the etcd member each time, from every host): it waits past etcd's 10-minute progress
    notification, and the kernel's keepalive probes find a peer that is gone."""
    import socket

    from crossnet.store import etcdclient

    rev = client.put(f"{prefix}/ka", "x")
    opened = []
    stream = client.watch(f"{prefix}/ka-nothing/", rev + 1, on_open=opened.append)
    next(stream)  # the "created" message
    sock = opened[0].sock
    try:
        assert sock.gettimeout() == etcdclient.WATCH_IDLE_TIMEOUT > 600
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == etcdclient.WATCH_KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == etcdclient.WATCH_KEEPALIVE_INTERVAL
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == etcdclient.WATCH_KEEPALIVE_COUNT
    finally:
        stream.close()


def test_keep_alive_leaves_a_unix_socket_alone():
    import socket

    from crossnet.store.etcdclient import keep_alive

    a, b = socket.socketpair()
    with a, b:
        keep_alive(a)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


# ------------------------------------------------------------------ store


@needs_etcd
def test_config_init_get(store):
    with pytest.raises(NotInitialized, match="crossnet etcd init"):
        store.get_config()
    assert store.init_config(cfg()) == "created"
    assert store.init_config(cfg()) == "unchanged"
    with pytest.raises(ConfigError, match="--force"):
        store.init_config(cfg(subnet_len=26))
    assert store.init_config(cfg(subnet_len=26), force=True) == "replaced"
    assert store.get_config().subnet_len == 26
    store.client.put(store.config_key, "{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.get_config()


@needs_etcd
def test_config_init_again_with_the_same_settings_is_unchanged_however_written(store):
    """A config written without the WireGuard settings (as `lab up --store etcd` does) and
    `etcd init` with the same settings, which writes WireGuard's defaults: the same
    values in other JSON -- unchanged, not "a different network config" (no --force)."""
    plain = {k: v for k, v in cfg().to_json().items() if k != "wireguard"}
    store.client.put(store.config_key, json.dumps(plain))
    explicit = NetworkConfig.from_json({**plain, "wireguard": {"port": 51820, "keepalive": 0}})
    assert explicit.to_json() != plain  # the JSON differs, the values do not
    assert store.init_config(explicit) == "unchanged"
    assert json.loads(store.client.get(store.config_key).value) == plain  # left as it was
    with pytest.raises(ConfigError, match="--force"):  # a real difference still needs --force
        store.init_config(NetworkConfig.from_json({**plain, "wireguard": {"port": 51000}}))


@needs_etcd
def test_acquire_reuse_and_release(store):
    c = cfg()
    a = store.acquire(c, "a", IPv4Address("192.0.2.1"), {"vtep_mac": "02:00:00:00:00:0a"})
    b = store.acquire(c, "b", IPv4Address("192.0.2.2"), {})
    assert a.subnet == IPv4Network("10.32.0.0/24") and b.subnet == IPv4Network("10.32.1.0/24")
    snap = store.snapshot()
    assert {(h.name, str(h.subnet)) for h in snap.hosts} == {("a", "10.32.0.0/24"), ("b", "10.32.1.0/24")}
    assert [h.data for h in snap.hosts if h.name == "a"] == [{"vtep_mac": "02:00:00:00:00:0a"}]
    # restart with the live lease: same lease, same subnet, no write
    rev = snap.revision
    again = store.acquire(c, "a", IPv4Address("192.0.2.1"), {"vtep_mac": "02:00:00:00:00:0a"},
                          previous=a.subnet, previous_lease=a.lease_id)
    assert (again.subnet, again.lease_id) == (a.subnet, a.lease_id)
    assert store.snapshot().revision == rev
    # the same name from another address while the lease lives: refused
    with pytest.raises(StoreError, match="already registered"):
        store.acquire(c, "a", IPv4Address("192.0.2.9"), {})
    # release: key and memory gone, the subnet is free again
    store.release(b)
    assert [h.name for h in store.snapshot().hosts] == ["a"]
    assert "b" not in store.remembered()
    c2 = store.acquire(c, "c", IPv4Address("192.0.2.3"), {})
    assert c2.subnet == IPv4Network("10.32.1.0/24")
    store.renew(c2)
    store.client.lease_revoke(c2.lease_id)
    with pytest.raises(LeaseLost):
        store.renew(c2)


@needs_etcd
def test_expired_host_gets_its_subnet_back(store):
    c = cfg(ttl=2)
    a = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})
    b = store.acquire(c, "b", IPv4Address("192.0.2.2"), {})
    store.client.lease_revoke(a.lease_id)  # as if its lease expired
    # a newcomer does not take the subnet a remembers while another is free
    n = store.acquire(c, "new", IPv4Address("192.0.2.3"), {})
    assert n.subnet not in (a.subnet, b.subnet)
    back = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})  # no local state: the store remembers
    assert back.subnet == a.subnet and back.lease_id != a.lease_id


@needs_etcd
def test_lost_local_state_takes_over_own_record(store):
    c = cfg()
    a = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})
    again = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})  # no previous lease id
    assert again.subnet == a.subnet and again.lease_id != a.lease_id
    assert [h.lease for h in store.snapshot().hosts] == [again.lease_id]


@needs_etcd
def test_exhaustion(store):
    c = cfg(network="10.40.0.0/29", subnet_len=30)
    store.acquire(c, "a", IPv4Address("192.0.2.1"), {})
    store.acquire(c, "b", IPv4Address("192.0.2.2"), {})
    with pytest.raises(StoreError, match="no free /30 subnet"):
        store.acquire(c, "c", IPv4Address("192.0.2.3"), {})


def _acquire_proc(url, prefix, name, barrier, out):
    s = EtcdStore(EtcdClient(url), prefix)
    barrier.wait(10)
    lease = s.acquire(cfg(ttl=30), name, IPv4Address(f"192.0.2.{int(name[1:]) + 1}"), {})
    out.put((name, str(lease.subnet)))


@needs_etcd
def test_ten_concurrent_acquires_get_distinct_subnets(etcd, store, prefix):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(10)
    out = ctx.Queue()
    procs = [ctx.Process(target=_acquire_proc, args=(etcd.url, prefix, f"h{i}", barrier, out)) for i in range(10)]
    for p in procs:
        p.start()
    try:
        results = dict(out.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()
    assert len(results) == 10
    assert len(set(results.values())) == 10
    assert {h.name for h in store.snapshot().hosts} == set(results)


@needs_etcd
def test_watch_sees_join_and_expiry(store):
    c = cfg(ttl=2)
    store.init_config(c)
    a = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})
    since = store.snapshot().revision + 1
    stop = threading.Event()
    b = store.acquire(c, "b", IPv4Address("192.0.2.2"), {})
    t0 = time.monotonic()
    kinds = []
    for batch in store.watch(since, stop, read_timeout=6):
        kinds += [(ev.kind, str(ev.subnet), ev.record.name if ev.record else None) for ev in batch]
        if ("delete", str(b.subnet), None) in kinds:
            break
    # b never renewed its 2 s lease: etcd expired it and the watch reported the delete
    assert kinds[0] == ("put", str(b.subnet), "b")
    assert time.monotonic() - t0 < 2 + 2
    assert a.subnet != b.subnet


@needs_etcd
def test_containers_published_next_to_the_registration(store):
    """Each host publishes its containers under <prefix>/containers/<name>, bound to its
    lease: `crossnet check` on any host reads them; they vanish with the lease."""
    c = cfg(ttl=30)
    a = store.acquire(c, "a", IPv4Address("192.0.2.1"), {})
    b = store.acquire(c, "b", IPv4Address("192.0.2.2"), {})
    assert store.containers() == {}
    rev = store.snapshot().revision
    store.publish_containers(a, [
        {"id": "c2", "address": "10.32.0.3/24", "netns": "/run/netns/c2"},  # prefix and extra keys dropped
        {"id": "c1", "address": "10.32.0.2", "name": "web"},
        {"id": "broken", "address": "not-an-address"},  # malformed entries are left out
        {"address": "10.32.0.9"},
    ])
    store.publish_containers(b, [])
    assert store.containers() == {
        "a": [{"id": "c1", "address": "10.32.0.2", "name": "web"}, {"id": "c2", "address": "10.32.0.3"}],
        "b": [],
    }
    kv = store.client.get(store.containers_key("a"))
    assert kv.lease == a.lease_id
    assert json.loads(kv.value)["subnet"] == "10.32.0.0/24"
    # the subnet keys (what peers watch) are untouched: publishing makes no peer events
    assert [h.revision for h in store.snapshot().hosts if h.revision > rev] == []
    # republishing replaces the list
    store.publish_containers(a, [{"id": "c1", "address": "10.32.0.2"}])
    assert store.containers()["a"] == [{"id": "c1", "address": "10.32.0.2"}]
    # gone with the lease (expiry or release); publishing on a dead lease says so
    store.client.lease_revoke(a.lease_id)
    assert set(store.containers()) == {"b"}
    with pytest.raises(LeaseLost):
        store.publish_containers(a, [])
    store.release(b)
    assert store.containers() == {}


def test_containers_of_an_unreachable_store_are_unavailable():
    s = EtcdStore(EtcdClient(f"http://127.0.0.1:{free_port()}", timeout=1), "/x")
    with pytest.raises(StoreUnavailable):
        s.containers()


def test_set_endpoints_moves_the_next_request_and_drops_kept_alive_connections(etcd):
    """The mesh's supervisor changes its running agent's endpoints when the voters change
    (the agent is not restarted): the next request goes to the new list, a connection kept
    alive to an old endpoint is not reused, a bad URL leaves the list as it was."""
    dead = f"http://127.0.0.1:{free_port()}"
    c = EtcdClient(dead, timeout=1)
    with pytest.raises(EtcdUnavailable):
        c.range("/x")
    c.set_endpoints([dead, etcd.url])
    assert c.range("/x")[0] == []  # the second endpoint answers
    c.set_endpoints([etcd.url])
    c.range("/x")  # a kept-alive connection to etcd now
    c.set_endpoints([dead])
    with pytest.raises(EtcdUnavailable, match="connection refused"):
        c.range("/x")  # not sent on the connection kept alive to etcd
    for bad in (["ftp://h:1"], []):
        with pytest.raises(ConfigError, match="--etcd"):
            c.set_endpoints(bad)
    assert c.describe() == dead
    c.close()


def test_set_endpoints_from_another_thread_reaches_every_threads_next_call(etcd):
    """Each thread keeps its own connections: a thread that talked to etcd before the
    change drops them at its next call."""
    c = EtcdClient(etcd.url, timeout=1)
    first, go, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[object] = []

    def worker():
        c.range("/x")  # this thread's connection to etcd
        first.set()
        go.wait(5)
        try:
            c.range("/x")
            seen.append("answered")
        except EtcdUnavailable as exc:
            seen.append(exc)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    assert first.wait(10)
    c.set_endpoints([f"http://127.0.0.1:{free_port()}"])
    go.set()
    assert done.wait(10)
    t.join(5)
    assert len(seen) == 1 and isinstance(seen[0], EtcdUnavailable)
    c.close()


def test_only_a_store_with_servers_changes_them(tmp_path):
    from crossnet.store import StoreError
    from crossnet.store.static import StaticStore

    with pytest.raises(StoreError, match="no servers to change"):
        StaticStore(tmp_path / "cluster.yaml").set_endpoints(["http://127.0.0.1:2379"])


def test_a_local_etcd_whose_port_was_taken_starts_again_on_other_ports(tmp_path, monkeypatch):
    """Test fixtures start etcd on ports free_port() found; another process can take one
    before etcd binds it (tests run in parallel): etcd exits, and on_free_ports starts it
    again on new ports instead of failing the fixture."""
    import socket

    from crossnet.lab import etcdserver

    if not etcd_available():
        pytest.skip("etcd not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = etcdserver.free_port
        monkeypatch.setattr(etcdserver, "free_port", lambda: next(ports, None) or real())
        srv = EtcdServer.on_free_ports(tmp_path, name="retry")
        try:
            assert srv.run_dir == tmp_path / "try2" and srv.port != taken.getsockname()[1]
            assert "address already in use" in (tmp_path / "try1" / "etcd.log").read_text()
            srv.client().put("/retry", "1")
            assert srv.client().get("/retry").value == b"1"
        finally:
            srv.stop()


def test_retry_port_races_tries_again_only_while_etcd_exited():
    """The one retry of the tests' local etcds (crossnet.lab.etcdserver.retry_port_races):
    None (etcd exited while starting) → again with new ports; a result ends it; an error
    of start() is not retried; after the last attempt one error naming what failed."""
    from crossnet.errors import CrossnetError
    from crossnet.lab.etcdserver import retry_port_races

    seen = []
    assert retry_port_races(lambda a: seen.append(a) or ("up" if a == 2 else None)) == "up" and seen == [1, 2]
    with pytest.raises(CrossnetError, match=r"etcd m1 exited while starting, 3 times"):
        retry_port_races(lambda a: None, what="etcd m1")

    def boom(attempt):
        seen.append(attempt)
        raise TimeoutError("etcd did not answer")

    seen.clear()
    with pytest.raises(TimeoutError):
        retry_port_races(boom)
    assert seen == [1]
