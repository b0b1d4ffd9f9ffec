"""How the agent reacts to hostile records arriving by watch events and snapshots
(its record intake, crossnet.agent.core.Agent.apply_events/_view): which peers it
(re)programs and removes. The kernel side is recorded, not touched: the programming
itself is what tests/e2e/test_agent_records.py checks in real namespaces."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet.agent.core import Agent, AgentOptions
from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, stable_mac
from crossnet.netlink.iproute import RouteInfo
from crossnet.state import StateDir
from crossnet.store import HostRecord, NetworkConfig, PeerEvent, SubnetLease

NET = "10.32.0.0/16"


class StubStore:
    kind = "etcd"

    def describe(self):
        return "stub"

    def containers(self):
        return {
            "h2": [{"id": "a", "address": "10.32.2.7"}, {"id": "b", "address": "10.56.0.9"}],
            "evil": [{"id": "x", "address": "10.32.9.2"}],
        }


class RecordingEnv:
    """The two things the intake asks the kernel: routes of the main table, and indexes."""

    def __init__(self):
        self._routes = [
            RouteInfo("0.0.0.0/0", "10.56.0.254", 2, 4, 0, None, 0, None),
            RouteInfo("10.56.0.0/20", None, 2, 2, 253, "10.56.0.1", 0, None),
            RouteInfo("10.32.77.0/24", "10.56.0.99", 2, 4, 0, None, 0, None),  # an operator's route
        ]

    def routes(self):
        return self._routes

    def index(self, name):
        return None


def make_agent(root) -> Agent:
    a = Agent(StubStore(), StateDir(root), AgentOptions(api=False))
    a.cfg = NetworkConfig(network=NET, ttl=5, name="c")
    a.backend = get_backend("vxlan")
    a.name, a.address, a.iface = "h1", IPv4Address("10.56.0.1"), "eth0"
    own = HostRecord("h1", a.address, IPv4Network("10.32.1.0/24"), a.backend.host_data("c", "h1", a.address))
    a.lease = SubnetLease(own, 7, 5)
    a.ctx = HostContext("c", "vxlan", "h1", a.address, "eth0", own.subnet, IPv4Network(NET),
                        IPv4Address("10.32.1.1"), 24, "cn0", 1500, 1450, False)
    a.programmed = []
    env = RecordingEnv()
    # the kernel is not touched here: programming a peer records it and takes its resources
    a._env = lambda: env
    a._save_applied = lambda: None
    a._program_base = lambda env: None

    def program(env, subnet):
        rec = a.peers.get(subnet)
        a.programmed.append((str(subnet), rec.name if rec else None))
        if rec is None:
            a.peer_res.pop(subnet, None)
        else:
            a.peer_res[subnet] = a.backend.peer_resources(a.ctx, a._peer(rec))

    a._program_peer = program
    a.state.lock = contextlib.nullcontext
    return a


@pytest.fixture
def agent(tmp_path):
    return make_agent(tmp_path)


REV = iter(range(100, 10_000))


def put(key, name, address, subnet=None, mac=None, created=None):
    k = IPv4Network(key)
    rec = HostRecord(name, IPv4Address(address), IPv4Network(subnet or key),
                     {"vtep_mac": mac or stable_mac("c", name, "vxlan")}, key=k)
    rev = next(REV)
    rec.created = created or rev
    return PeerEvent("put", k, rec, rev)


def delete(key):
    return PeerEvent("delete", IPv4Network(key), None, next(REV))


def owned_keys(agent) -> set[str]:
    return {r.key() for res in agent.peer_res.values() for r in res}


def test_a_record_claiming_the_underlay_is_never_programmed(agent):
    agent.apply_events([put("10.32.202.0/24", "evil", "10.57.9.9", subnet="10.56.0.0/20")])
    assert agent.programmed == [] and agent.peers == {}
    assert agent.info()["rejected_records"] == 1
    assert agent.info()["rejected"][0]["reason"].startswith("subnet:")
    agent.apply_events([delete("10.32.202.0/24")])
    assert agent.programmed == [] and agent.info()["rejected"] == []


def test_a_duplicate_of_a_hosts_subnet_changes_nothing_and_its_removal_neither(agent):
    agent.apply_events([put("10.32.2.0/24", "h2", "10.56.0.2")])
    assert agent.programmed == [("10.32.2.0/24", "h2")]
    before = owned_keys(agent)
    assert any(k.startswith("neigh:") for k in before) and any(k.startswith("fdb:") for k in before)
    # another key claiming h2's subnet, with the attacker's MAC: rejected (key/value differ)
    agent.apply_events([put("10.32.9.0/24", "evil", "10.57.9.9", subnet="10.32.2.0/24", mac="02:66:66:66:66:66")])
    # a younger record with h2's name under its own key: rejected (the older one wins)
    agent.apply_events([put("10.32.8.0/24", "h2", "10.57.9.9", mac="02:66:66:66:66:67")])
    agent.apply_events([delete("10.32.9.0/24"), delete("10.32.8.0/24")])
    assert agent.programmed == [("10.32.2.0/24", "h2")]
    assert owned_keys(agent) == before
    assert agent.info()["rejected_records"] == 2


def test_the_younger_claimant_takes_over_when_the_older_goes(agent):
    agent.apply_events([put("10.32.2.0/24", "h2", "10.56.0.2"), put("10.32.3.0/24", "h2", "10.56.0.3",
                                                                     mac="02:00:00:00:00:03")])
    assert agent.programmed == [("10.32.2.0/24", "h2")]
    agent.apply_events([delete("10.32.2.0/24")])
    assert sorted(agent.programmed[1:]) == [("10.32.2.0/24", None), ("10.32.3.0/24", "h2")]
    assert set(agent.peer_res) == {IPv4Network("10.32.3.0/24")}


def test_an_operator_route_and_this_hosts_own_identity_are_protected(agent):
    agent.apply_events([
        put("10.32.77.0/24", "h7", "10.56.0.7"),  # overlaps the host's own route 10.32.77.0/24
        put("10.32.5.0/24", "h5", "10.56.0.1"),  # this host's underlay address
        put("10.32.6.0/24", "h6", "10.56.0.6", mac=stable_mac("c", "h1", "vxlan")),  # this host's VTEP MAC
        put("10.32.4.0/24", "h1", "10.56.0.4"),  # this host's name
        put("10.32.3.0/24", "h3", "10.56.15.255"),  # the underlay's broadcast address
    ])
    assert agent.programmed == [] and len(agent.info()["rejected"]) == 5


def test_a_snapshot_goes_through_the_same_validation(agent):
    from crossnet.store import Snapshot

    good = put("10.32.2.0/24", "h2", "10.56.0.2").record
    evil = put("10.32.202.0/24", "evil", "10.57.9.9", subnet="10.56.0.0/20").record
    twin = put("10.32.3.0/24", "h2", "10.56.0.3", mac="02:00:00:00:00:03").record  # younger: h2's name
    snap = Snapshot([agent.lease.record, twin, evil, good], 500, {IPv4Network("10.32.9.0/24"): "value: bad"})
    agent._take_snapshot(snap, agent._env(), [])
    assert list(agent.peers) == [IPv4Network("10.32.2.0/24")]
    assert {r["key"] for r in agent.info()["rejected"]} == {"10.32.202.0-24", "10.32.9.0-24", "10.32.3.0-24"}
    # the routes crossnet owns are not "this host's routes": a peer whose route we made stays valid
    snap = Snapshot([agent.lease.record, good], 501)
    agent._env()._routes.append(RouteInfo("10.32.2.0/24", "10.32.2.0", 9, 4, 0, None, 0, None))
    agent._take_snapshot(snap, agent._env(), [])
    assert list(agent.peers) == []  # a route crossnet does not own overlaps it
    from crossnet.plan.resources import Route

    agent._take_snapshot(snap, agent._env(), [Route("10.32.2.0/24", gateway="10.32.2.0", dev="cnvx1", onlink=True)])
    assert list(agent.peers) == [IPv4Network("10.32.2.0/24")]


def test_published_containers_are_filtered_by_the_valid_records(agent):
    agent.apply_events([put("10.32.2.0/24", "h2", "10.56.0.2")])
    got = agent.cluster_containers()
    assert got["hosts"] == {"h2": [{"id": "a", "address": "10.32.2.7"}]}
    assert agent.info()["rejected_containers"] == 2


# ---- property: whatever arrives in whatever order, what is programmed is exactly the valid set
POOL = [
    ("10.32.2.0/24", "h2", "10.56.0.2", None, None),
    ("10.32.3.0/24", "h3", "10.56.0.3", None, None),
    ("10.32.4.0/24", "h2", "10.56.0.4", None, "02:00:00:00:00:04"),  # h2's name again
    ("10.32.5.0/24", "h5", "10.56.0.5", None, stable_mac("c", "h3", "vxlan")),  # h3's MAC
    ("10.32.6.0/24", "evil", "10.57.9.9", "10.32.2.0/24", "02:66:66:66:66:66"),  # h2's subnet
    ("10.32.7.0/24", "evil", "10.57.9.9", "10.56.0.0/20", "02:66:66:66:66:67"),  # the underlay
    ("10.32.8.0/24", "h8", "0.0.0.0", None, None),
    ("10.32.9.0/24", "h9", "10.56.0.9", None, "ff:ff:ff:ff:ff:ff"),
    ("10.32.10.0/24", "h3", "10.56.0.10", None, "02:00:00:00:00:0a"),  # h3's name again
]
steps = st.lists(st.lists(st.tuples(st.sampled_from(range(len(POOL))), st.booleans()), min_size=1, max_size=4),
                 max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_programmed_peers_are_always_exactly_the_valid_records(tmp_path_factory, batches):
    from crossnet.store.records import select_records

    a = make_agent(tmp_path_factory.mktemp("a"))
    live: dict[IPv4Network, HostRecord] = {}
    for batch in batches:
        events = []
        for i, present in batch:
            key, name, address, subnet, mac = POOL[i]
            if present:
                ev = put(key, name, address, subnet=subnet, mac=mac)
                if ev.subnet in live:  # etcd: a key put again keeps its create_revision
                    ev.record.created = live[ev.subnet].created
                live[ev.subnet] = ev.record
            else:
                ev = delete(key)
                live.pop(ev.subnet, None)
            events.append(ev)
        a.apply_events(events)
        expected = select_records(live, a._view(a._env(), a._owned())).valid
        assert set(a.peers) == set(expected) == set(a.peer_res)
        for s, res in a.peer_res.items():  # each valid peer owns exactly its own resources
            assert [r.key() for r in res] == [r.key() for r in a.backend.peer_resources(a.ctx, a._peer(expected[s]))]
        keys = [r.key() for res in a.peer_res.values() for r in res]
        assert len(keys) == len(set(keys))  # no resource belongs to two peers


def test_a_record_with_this_hosts_own_wireguard_key_is_rejected(agent):
    """The key _acquire published (the backend's local_data) counts as this host's own, like
    its MACs: the kernel ignores a WireGuard peer with the interface's own public key."""
    from crossnet.wg import keys

    agent.backend = get_backend("wireguard")
    mine = keys.ensure_key(str(agent.state.root))[0]
    k = IPv4Network("10.32.2.0/24")
    rec = HostRecord("h2", IPv4Address("10.56.0.2"), k, {"wireguard_key": mine}, key=k)
    rec.created = next(REV)
    agent.apply_events([PeerEvent("put", k, rec, rec.created)])
    assert agent.programmed == [] and agent.peers == {}
    assert [r["reason"] for r in agent.info()["rejected"]] == ["data.wireguard_key: this host's own WireGuard public key"]


def test_a_named_networks_tunnel_port_is_claimed_before_the_network_is_followed(agent, monkeypatch):
    """OVS: a peer's tunnel port in a named network is claimed (the older record keeps it)
    from the first selection on, not only once the agent follows that network: the full
    sync that first follows it programs the peers selected with the networks known then."""
    from crossnet.netmodel import NetworkConfig as Model
    from crossnet.netstore import pin_vnis

    agent.backend = get_backend("ovs-vxlan")
    agent.cfg = pin_vnis(Model(network=NET, backend="ovs-vxlan", name="c",
                               networks=[{"name": "blue", "network": "10.41.0.0/16"}]),
                         None)
    agent.lease.record.networks = {"blue": IPv4Network("10.41.1.0/24")}
    assert agent.nets == {}  # not followed yet (the first full sync does)
    real = agent.backend._port_name
    # two peers whose tunnel ports in blue are one port (a hash collision, made here)
    monkeypatch.setattr(agent.backend, "_port_name",
                        lambda peer, ctx: "grexcollision" if ctx is not None and ctx.net_name else real(peer, ctx))
    older, younger = put("10.32.2.0/24", "h2", "10.56.0.2").record, put("10.32.3.0/24", "h3", "10.56.0.3").record
    older.networks = {"blue": IPv4Network("10.41.2.0/24")}
    younger.networks = {"blue": IPv4Network("10.41.3.0/24")}
    view = agent._view(agent._env(), [])
    assert "OVS tunnel port grexcollision" in view.claims(younger)
    from crossnet.store.records import select_records

    sel = select_records({older.key: older, younger.key: younger}, view)
    assert list(sel.valid) == [older.key]
    assert sel.rejected == {younger.key: "name: h3 needs the OVS tunnel port grexcollision, already claimed by "
                                         "the older record 10.32.2.0/24"}


def test_unknown_data_keys_of_a_record_never_reach_the_peer(agent):
    """The peer programmed (and written to applied.json with its data) carries only the
    data keys crossnet reads; the rest of a store writer's record is dropped on reading."""
    raw = {"name": "h2", "address": "10.56.0.2", "subnet": "10.32.2.0/24",
           "data": {"vtep_mac": stable_mac("c", "h2", "vxlan"), "junk": {"big": "x" * 4096}}}
    k = IPv4Network("10.32.2.0/24")
    rec = HostRecord.from_json(raw, key=k, created=next(REV))
    agent.apply_events([PeerEvent("put", k, rec, rec.created)])
    assert agent.programmed == [("10.32.2.0/24", "h2")]
    agent._sync_ctx_peers()
    assert [p["data"] for p in agent.ctx.to_json()["peers"]] == [{"vtep_mac": stable_mac("c", "h2", "vxlan")}]
