"""The agent driven by an in-memory store (tests/unit/fakestore.py) on a fake kernel
(tests/unit/fakekernel.py), without root or etcd: it joins (lease, one full sync
through crossnet.program, applied.json), follows other hosts joining and leaving one
peer at a time (the fast path touches only that peer's objects), re-registers after
losing its lease (keeping its subnet when still free, re-programming with a new one
when another host took it), and a resync repairs drift and catches up what the watch
missed. The same in real namespaces with etcd: tests/e2e/test_agent*.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.agent.core import Agent, AgentOptions
from crossnet.state import StateDir
from crossnet.store import NetworkConfig
from tests.unit.fakekernel import FakeEnv, FakeKernel, install, machine
from tests.unit.fakestore import MemoryStore


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> FakeKernel:
    k = machine()
    install(monkeypatch, k, tmp_path)
    return k


def store_for(backend: str) -> MemoryStore:
    return MemoryStore(NetworkConfig(network=IPv4Network("10.32.0.0/16"), backend=backend, name="c", ttl=10))


def start(store: MemoryStore, kernel: FakeKernel, root) -> Agent:
    """What Agent._run does up to "ready", on the fake kernel."""
    a = Agent(store, StateDir(root / "state"), AgentOptions(name="h1", api=False))
    a.name, a.address, a.iface = "h1", IPv4Address("10.56.0.1"), "eth0"
    a._env = lambda: FakeEnv(kernel)
    a._load_config()
    a._acquire(*a._previous())
    a.full_sync(store.snapshot())
    return a


def deliver(a: Agent, store: MemoryStore) -> None:
    """What the watch thread queues and the main loop handles."""
    a._handle(("events", store.events_since(a.revision)))


def routes(kernel: FakeKernel) -> dict[str, str | None]:
    return {r.dst: r.gateway for r in kernel.routes if r.proto != 2}


def recorded(a: Agent) -> tuple[list[str], set[str]]:
    applied = a.state.load_applied()
    assert a.state.load_journal() is None  # every change ended with the record
    return [p["name"] for p in applied["context"]["peers"]], {r["dst"] for r in applied["resources"] if r["kind"] == "route"}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_join_then_peers_come_and_go_one_at_a_time(backend, kernel, tmp_path):
    store = store_for(backend)
    h2 = store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    me = a.lease.subnet
    assert me == IPv4Network("10.32.1.0/24") and store.records[me].name == "h1"
    assert kernel.links["cn0"].kind == "bridge" and f"{me.network_address + 1}/24" in kernel.addrs[kernel.index("cn0")]
    assert str(h2.subnet) in routes(kernel) and (tmp_path / "ip_forward").read_text() == "1"
    assert recorded(a) == (["h2"], {str(h2.subnet)})
    applied = a.state.load_applied()
    assert applied["store"] == {"kind": "memory", "where": "memory store"} and applied["network_config"]["backend"] == backend
    # another host joins: only its objects are written
    kernel.log.clear()
    h3 = store.join("h3", "10.56.0.3")
    deliver(a, store)
    assert {op for op, _ in kernel.log} <= {"route", "fdb", "neigh"}
    assert all(what.endswith(str(h3.subnet)) or "10.56.0.3" in what or str(h3.subnet.network_address) in what
               for _, what in kernel.log), kernel.log
    assert str(h3.subnet) in routes(kernel) and recorded(a) == (["h2", "h3"], {str(h2.subnet), str(h3.subnet)})
    # h2 leaves: exactly its objects go
    kernel.log.clear()
    store.leave("h2")
    deliver(a, store)
    assert str(h2.subnet) not in routes(kernel) and str(h3.subnet) in routes(kernel)
    assert {op for op, _ in kernel.log} <= {"route-del", "fdb-del", "neigh-del"} and kernel.log
    assert recorded(a) == (["h3"], {str(h3.subnet)})
    if backend == "vxlan":
        assert not any(dst == "10.56.0.2" for _, _, dst in kernel.fdb)


def test_lease_loss_re_registers_in_the_same_subnet(kernel, tmp_path):
    store = store_for("vxlan")
    store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    old = a.lease
    store.expire("h1")
    deliver(a, store)
    assert a.queue.get_nowait() == ("lease-lost", old.lease_id)
    a._handle(("lease-lost", old.lease_id))
    assert a.reacquire_at is not None
    kernel.log.clear()
    a._reacquire()
    assert a.reacquire_at is None and a.lease.lease_id != old.lease_id and a.lease.subnet == old.subnet
    assert store.records[old.subnet].name == "h1"
    assert kernel.log == []  # the data plane was right all along


def test_lease_lost_to_another_host_renumbers_this_one(kernel, tmp_path):
    store = store_for("vxlan")
    store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    old = a.lease.subnet
    store.expire("h1")
    store.join("h9", "10.56.0.9", subnet=str(old))  # someone took it meanwhile
    a._handle(("lease-lost", a.lease.lease_id))
    a._reacquire()
    new = a.lease.subnet
    assert new != old and store.records[new].name == "h1"
    cn0 = kernel.addrs[kernel.index("cn0")]
    assert f"{new.network_address + 1}/24" in cn0 and f"{old.network_address + 1}/24" not in cn0
    assert routes(kernel)[str(old)] == str(old.network_address)  # h9's subnet is a peer's now
    assert a.state.load_applied()["context"]["subnet"] == str(new)
    assert sorted(recorded(a)[0]) == ["h2", "h9"]


def test_resync_repairs_drift_and_catches_up_what_the_watch_missed(kernel, tmp_path):
    store = store_for("host-gw")
    h2 = store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    kernel.routes = [r for r in kernel.routes if r.dst != str(h2.subnet)]  # someone deleted a route
    cn0 = kernel.links["cn0"]
    kernel.links["cn0"] = cn0.__class__(**{**cn0.__dict__, "mtu": 1400})
    h3 = store.join("h3", "10.56.0.3")  # no event delivered
    a._resync()
    assert routes(kernel)[str(h2.subnet)] == "10.56.0.2" and routes(kernel)[str(h3.subnet)] == "10.56.0.3"
    assert kernel.links["cn0"].mtu == 1500 and a.health["sync"] is None
    assert recorded(a) == (["h2", "h3"], {str(h2.subnet), str(h3.subnet)})


def test_store_down_leaves_the_data_plane_alone(kernel, tmp_path):
    store = store_for("vxlan")
    store.join("h2", "10.56.0.2")
    a = start(store, kernel, tmp_path)
    kernel.log.clear()
    store.unavailable = True
    a._resync()
    assert kernel.log == [] and "unavailable" in a.health["sync"]
    store.unavailable = False
    a._resync()
    assert a.health["sync"] is None


def test_a_restart_with_nothing_to_change_still_records_its_store(kernel, tmp_path):
    """applied.json always says where this host's settings come from now (a restarted
    agent on another endpoint of the store), even when the kernel needs no change."""
    first = MemoryStore(store_for("vxlan").cfg, where="etcd at A")
    first.join("h2", "10.56.0.2")
    start(first, kernel, tmp_path)
    moved = MemoryStore(first.cfg, where="etcd at B")
    moved.join("h2", "10.56.0.2")
    kernel.log.clear()
    a = start(moved, kernel, tmp_path)
    assert kernel.log == [] and a.lease.subnet == IPv4Network("10.32.1.0/24")
    assert a.state.load_applied()["store"]["where"] == "etcd at B"


def test_a_peer_the_backend_cannot_reach_is_skipped_not_fatal(kernel, tmp_path):
    """host-gw needs one L2 segment: a peer behind a router is logged and left out (the
    others are programmed), at the full sync and on the fast path alike."""
    kernel.route_replace("10.99.0.0/24", "10.56.0.254", kernel.index("eth0"))
    store = store_for("host-gw")
    h2 = store.join("h2", "10.56.0.2")
    far = store.join("far", "10.99.0.5")
    a = start(store, kernel, tmp_path)
    assert str(h2.subnet) in routes(kernel) and str(far.subnet) not in routes(kernel)
    assert {p["name"]: p["programmed"] for p in a.info()["peers"]} == {"h2": True, "far": False}
    assert recorded(a) == (["h2"], {str(h2.subnet)})
    far2 = store.join("far2", "10.99.0.6")
    deliver(a, store)
    assert str(far2.subnet) not in routes(kernel) and recorded(a)[0] == ["h2"]


def test_the_idle_main_loop_sleeps_until_its_next_deadline_and_is_woken_for_stop_and_resync(tmp_path):
    """The main loop's queue wait: until the next local check, resync or re-registration
    (never a fixed 0.5 s tick), at most half the systemd watchdog window; stopping and
    POST /v1/resync (resync_soon) put a wake-up item so neither waits for the timeout."""
    import time

    from crossnet.agent import core

    a = Agent(store_for("vxlan"), StateDir(tmp_path / "state"), AgentOptions(name="h1", api=False))
    now = time.monotonic()
    a.next_local_check, a.next_resync, a.reacquire_at = now + 0.8, now + 30, None
    assert 0.6 < a._idle_wait(0.0) <= 0.8
    assert 0.0 < a._idle_wait(0.5) <= 0.25  # systemd's watchdog window: the loop beats in time
    a.next_local_check = now + 60
    assert a._idle_wait(0.0) == core.LOCAL_CHECK_INTERVAL  # bounded even with every deadline far
    a.reacquire_at = now - 1
    assert a._idle_wait(0.0) == 0.0  # overdue: no sleep at all
    a.reacquire_at, a.next_resync = None, now + 30
    a.resync_soon()
    assert a.next_resync == 0.0 and a.queue.get_nowait() == ("wake",)
    a.request_stop()
    assert a.stop.is_set() and a.queue.get_nowait() == ("wake",)
    a._handle(("wake",))  # nothing to do but turn the loop


def test_the_local_check_asks_for_a_republish_when_the_dns_answers_cluster_wide(tmp_path):
    """No DNS tick thread: the main loop's local check (every second) asks the publisher,
    which republishes only when this host's list changed (a namespace died, no detach)."""
    from types import SimpleNamespace

    for scope, want in (("cluster", [0]), ("host", []), (None, [])):
        a = Agent(store_for("vxlan"), StateDir(tmp_path / "state"), AgentOptions(name="h1", api=False))
        asked: list[float] = []
        a.containers_changed = lambda wait=1.0, force=False, asked=asked: asked.append(wait)  # type: ignore[method-assign]
        a.dns = SimpleNamespace(scope=scope) if scope else None
        a._check_local()  # no lease yet: the rest of the check waits for it
        assert asked == want, scope


def test_new_store_endpoints_are_used_and_recorded_so_a_restart_keeps_the_lease(kernel, tmp_path):
    """`crossnet launch` hands its running agent the new voters (Agent.set_store_endpoints)
    instead of restarting it; agent.json then names the new servers, so the agent started
    on them after a restart reuses its lease rather than taking a new one."""
    store = MemoryStore(NetworkConfig(network=IPv4Network("10.32.0.0/16"), backend="vxlan", name="c", ttl=10),
                        where="https://10.0.0.1:2379")
    a = start(store, kernel, tmp_path)
    lease = a.lease.lease_id
    assert a._previous() == (a.lease.subnet, lease)
    store.where = "https://10.0.0.1:2379,https://10.0.0.2:2379"  # what the restarted agent will be given
    assert a._previous() == (a.lease.subnet, 0)  # agent.json names the old servers: the lease would be lost
    a.set_store_endpoints(["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
    assert store.describe() == "https://10.0.0.1:2379,https://10.0.0.2:2379"
    assert a._previous() == (a.lease.subnet, lease)


def test_an_admins_route_identical_to_a_new_peers_is_never_taken_over(kernel, tmp_path, caplog):
    """Regression (the agent already held): an admin's route to a new peer's subnet, the very
    one crossnet would make (same gateway and device, `ip route`'s proto boot). The agent
    validates the peer's record against the routes it does not own and rejects it (one
    line), so the fast path never reaches the route (Route.preflight would refuse it
    there too: test_reconcile.py); the route is never recorded and stays when the peer
    leaves."""
    store = store_for("host-gw")
    a = start(store, kernel, tmp_path)
    kernel.route_replace("10.32.2.0/24", "10.56.0.2", kernel.index("eth0"), 3)  # the admin's (proto boot)
    admins = kernel.route("10.32.2.0/24")
    h2 = store.join("h2", "10.56.0.2", subnet="10.32.2.0/24")
    deliver(a, store)
    assert ("rejected store record 10.32.2.0/24 (name='h2' address=10.56.0.2 subnet=10.32.2.0/24): subnet: "
            "10.32.2.0/24 overlaps this host's route 10.32.2.0/24") in caplog.text
    assert kernel.route(str(h2.subnet)) == admins and recorded(a)[1] == set()
    store.leave("h2")
    deliver(a, store)
    assert kernel.route(str(h2.subnet)) == admins and recorded(a)[1] == set()
