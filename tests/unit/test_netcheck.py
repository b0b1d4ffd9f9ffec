"""`crossnet check` per network (crossnet.netcheck): each network's endpoints, and which
pairs a run probes (same network: must answer; with --isolation, across: must not)."""

from __future__ import annotations

from crossnet import netcheck


def cont(i: str, addr: str, state: str = "attached") -> dict:
    return {"id": i, "netns": f"/run/netns/{i}", "address": f"{addr}/24", "state": state, "name": None}


PEERS_D = [{"name": "h2", "address": "192.168.9.2", "subnet": "10.40.1.0/24"}]
PEERS_B = [{"name": "h2", "address": "192.168.9.2", "subnet": "10.41.1.0/24"}]


def plans():
    d = netcheck.plan("default", "h1", "vxlan", [cont("a", "10.40.0.2"), cont("s", "10.40.0.9", "stale")], PEERS_D,
                      None)
    b = netcheck.plan("blue", "h1", "vxlan", [cont("x", "10.41.0.2"), cont("y", "10.41.0.3")], PEERS_B, None)
    return d, b


def test_each_network_has_its_own_endpoints_and_peer_gateways():
    d, b = plans()
    assert [e.name for e, _, _ in d.local] == ["a"] and [s["id"] for s in d.stale] == ["s"]
    assert [(e.name, e.address, h, k) for e, h, k in d.dsts] == [
        ("a", "10.40.0.2", "h1", "container"), ("h2 (gateway)", "10.40.1.1", "h2", "gateway")]
    assert [(e.name, e.address) for e, _, _ in b.dsts] == [
        ("blue:x", "10.41.0.2"), ("blue:y", "10.41.0.3"), ("blue:h2 (gateway)", "10.41.1.1")]


def test_published_containers_replace_the_gateway():
    d = netcheck.plan("default", "h1", "vxlan", [cont("a", "10.40.0.2")], PEERS_D,
                      {"h1": [{"id": "a", "address": "10.40.0.2"}], "h2": [{"id": "c", "address": "10.40.1.2"}]})
    assert [(e.name, k) for e, _, k in d.dsts] == [("a", "container"), ("h2/c", "container")]


def test_pairs_stay_in_their_network_unless_isolation_is_asked():
    d, b = plans()
    same, cross = netcheck.jobs([d, b])
    assert cross == []
    got = sorted((s.name, dst.name, sn, dn) for s, (dst, _, _), sn, dn in same)
    assert got == [("a", "h2 (gateway)", "default", "default"),
                   ("blue:x", "blue:h2 (gateway)", "blue", "blue"), ("blue:x", "blue:y", "blue", "blue"),
                   ("blue:y", "blue:h2 (gateway)", "blue", "blue"), ("blue:y", "blue:x", "blue", "blue")]
    _, cross = netcheck.jobs([d, b], isolation=True)
    pairs = {(s.name, dst.name) for s, (dst, _, _), sn, dn in cross}
    assert all(sn != dn for *_, sn, dn in cross)
    assert ("a", "blue:x") in pairs and ("blue:x", "a") in pairs and ("blue:y", "h2 (gateway)") in pairs
    assert len(cross) == 1 * 3 + 2 * 2  # every local container x every destination of the other network
    assert netcheck.jobs([b], isolation=True)[1] == []  # one network: nothing across
    same, cross = netcheck.jobs([d, b], isolation=True, only="blue")  # --network blue --isolation
    assert {sn for *_, sn, _ in same + cross} == {"blue"} and len(same) == 4 and len(cross) == 2 * 2


def test_network_status_reads_the_named_network():
    st = {"containers": [cont("a", "10.40.0.2")], "peers": PEERS_D,
          "networks": {"blue": {"containers": [cont("x", "10.41.0.2")]}}}
    assert netcheck.network_status(st, "default", []) == (st["containers"], PEERS_D)
    assert netcheck.network_status(st, "blue", PEERS_B) == ([cont("x", "10.41.0.2")], PEERS_B)
    assert netcheck.network_status(st, "red", PEERS_B) == ([], PEERS_B)


def test_incomplete_containers_are_listed_not_probed():
    """An attach killed before its veth (status: `incomplete`) used to be a probe source and
    destination: every pair of it failed, blamed on the network."""
    half = {**cont("h", "10.40.0.5", "incomplete"), "complete": "crossnet attach h (or crossnet detach h to remove it)"}
    d = netcheck.plan("default", "h1", "vxlan", [cont("a", "10.40.0.2"), half], PEERS_D, None)
    assert [e.name for e, _, _ in d.local] == ["a"] and [e.name for e, _, _ in d.dsts] == ["a", "h2 (gateway)"]
    assert d.incomplete == [{"id": "h", "address": "10.40.0.5/24", "netns": "/run/netns/h",
                             "complete": "crossnet attach h (or crossnet detach h to remove it)"}]
    same, _ = netcheck.jobs([d])
    assert {(s.name, dst.name) for s, (dst, _, _), _, _ in same} == {("a", "h2 (gateway)")}
