"""crossnet.localcache: this host's list of containers (asked every second by the agent's
DNS and by `crossnet dns serve`) is read again only when ipam.json, applied.json or a
namespace path changed — with real files and the real list_containers."""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet import containers, localcache
from crossnet.backends.base import HostContext
from crossnet.state import StateDir


def _state(tmp_path, n: int = 3) -> tuple[StateDir, list[str]]:
    state = StateDir(tmp_path / "st")
    ctx = HostContext(
        cluster_name="c", backend="vxlan", host="h1", address=IPv4Address("10.9.0.10"), iface="eth0",
        subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"),
        gateway=IPv4Address("10.32.0.1"), prefixlen=24, bridge="cn0", underlay_mtu=1500, mtu=1450,
        masquerade=False, vni=7, port=4789, nic_mac="02:00:00:00:00:10", peers=[])
    state.save_applied({"context": ctx.to_json()})
    paths = []
    pool = containers.pool_for(state, ctx)
    for i in range(n):
        p = tmp_path / f"ns{i}"  # stands for a namespace file: list_containers only stats it
        p.write_text("")
        paths.append(str(p))
        pool.allocate(f"c{i}", meta={"netns": str(p), "netns_id": list(containers.netns_ident(str(p))),
                                     "host_if": f"cnv{i}x", "name": f"web{i}"})
    return state, paths


@pytest.fixture(autouse=True)
def host_links(monkeypatch) -> set[str]:
    """The host ends of the veths _state's entries stand for (each attached, not
    `incomplete`); a test removes one to let its container's veth go."""
    links = {f"cnv{i}x" for i in range(10)}
    monkeypatch.setattr(containers, "_host_links", lambda: set(links))
    return links


def test_a_tick_with_nothing_changed_does_not_read_again(tmp_path):
    state, _ = _state(tmp_path)
    reads = []
    cache = localcache.LocalContainers(state, read=lambda: reads.append(1) or containers.list_containers(state))
    first = cache.read()
    assert [e["id"] for e in first] == ["c0", "c1", "c2"] and all(e["state"] == "attached" for e in first)
    for _ in range(5):
        assert cache.read() == first
    assert len(reads) == 1


def test_each_input_change_is_read_again(tmp_path, host_links):
    state, paths = _state(tmp_path)
    host_links.add(containers.host_ifname("c9"))
    cache = localcache.LocalContainers(state)
    cache.read()
    # a new attachment (ipam.json replaced)
    ctx = HostContext.applied(state)
    (tmp_path / "ns9").write_text("")
    containers.pool_for(state, ctx).allocate("c9", meta={"netns": str(tmp_path / "ns9")})
    assert [e["id"] for e in cache.read()] == ["c0", "c1", "c2", "c9"] and cache.reads == 2
    # a container's namespace dies without a detach: stale at the next tick
    os.unlink(paths[1])
    host_links.discard("cnv1x")  # the kernel deletes the pair with the namespace
    got = {e["id"]: e["state"] for e in cache.read()}
    assert got["c1"] == "stale" and got["c0"] == "attached" and cache.reads == 3
    cache.read()
    assert cache.reads == 3  # stale stays stale: cached
    # another namespace under the same path: read again
    (tmp_path / "other").write_text("")  # created while the old one exists: another inode
    os.replace(tmp_path / "other", paths[0])
    host_links.discard("cnv0x")
    assert {e["id"]: e["state"] for e in cache.read()}["c0"] == "stale" and cache.reads == 4
    # applied.json rewritten (the agent re-programmed the host)
    state.save_applied(state.load_applied())
    cache.read()
    assert cache.reads == 5


def test_an_attached_entry_whose_path_is_gone_is_never_cached(tmp_path, monkeypatch):
    """Path gone but the host side of its veth still there (a /proc/PID path of another PID
    namespace): attached, and its state depends on the links, which are not watched."""
    state, paths = _state(tmp_path, 1)
    monkeypatch.setattr(containers, "_host_links", lambda: {"cnv0x"})
    os.unlink(paths[0])
    cache = localcache.LocalContainers(state)
    assert cache.read()[0]["state"] == "attached"
    cache.read()
    assert cache.reads == 2
    monkeypatch.setattr(containers, "_host_links", lambda: set())
    assert cache.read()[0]["state"] == "stale"


def test_an_incomplete_entry_is_never_cached(tmp_path, host_links):
    """No veth yet (an attach killed after its IPAM write, or one running): `incomplete`,
    and its state depends on the links, which are not watched: read every tick, and
    `attached` as soon as the veth is there."""
    state, _ = _state(tmp_path, 1)
    host_links.discard("cnv0x")
    cache = localcache.LocalContainers(state)
    assert cache.read()[0]["state"] == "incomplete"
    host_links.add("cnv0x")
    assert cache.read()[0]["state"] == "attached" and cache.reads == 2
    cache.read()
    assert cache.reads == 2  # whole again: cached


def test_a_full_read_at_least_every_max_age(tmp_path, monkeypatch):
    state, _ = _state(tmp_path, 1)
    cache = localcache.LocalContainers(state)
    cache.read()
    cache.read()
    assert cache.reads == 1
    monkeypatch.setattr(localcache, "MAX_AGE", 0.0)
    cache.read()
    assert cache.reads == 2


@pytest.mark.parametrize("n", [10])
def test_the_cached_tick_is_cheaper_than_a_read(tmp_path, n):
    """Not a timing goal (those are in `crossnet bench`): the measurement docs/mesh.md quotes,
    printed with -s; only checks that both paths give the same answer."""
    state, _ = _state(tmp_path, n)
    cache = localcache.LocalContainers(state)
    first = cache.read()
    t0 = time.perf_counter()
    for _ in range(200):
        full = containers.list_containers(state)
    t1 = time.perf_counter()
    for _ in range(200):
        cached = cache.read()
    t2 = time.perf_counter()
    assert full == cached == first
    print(f"\n{n} containers: full read {(t1 - t0) / 200 * 1e6:.0f} µs, cached tick {(t2 - t1) / 200 * 1e6:.0f} µs")


def test_readers_keep_one_cache_per_state_dir_and_dns_serve_reads_through_it(tmp_path, monkeypatch):
    from crossnet.dns import service

    one, _ = _state(tmp_path / "a")
    two, _ = _state(tmp_path / "b", n=1)
    reads: list[str] = []
    real = containers.list_containers
    monkeypatch.setattr(containers, "list_containers", lambda st: reads.append(str(st.root)) or real(st))
    readers = localcache.Readers()
    for _ in range(4):  # `crossnet dns serve`'s table re-read, every LOCAL_POLL seconds
        table_one = service.local_containers(one, readers.read)
        table_two = service.local_containers(two, readers.read)
    assert [c["id"] for c in table_one[""]] == ["c0", "c1", "c2"]
    assert [c["id"] for c in table_two[""]] == ["c0"]
    assert sorted(reads) == sorted([str(one.root), str(two.root)])  # each state dir read once
