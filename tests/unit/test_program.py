"""crossnet.program.program_host, the one path of `crossnet apply` and the agent, on the
fake kernel (tests/unit/fakekernel.py): --dry-run changes and writes nothing; the
checks refuse before the first change; applied.json is written when something changed,
when there was no record, after an interrupted run (journal left), or always for the
agent; the journal never outlives a run."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet import program
from crossnet.backends import get_backend
from crossnet.backends.base import Peer
from crossnet.errors import ApplyError, ConfigError
from crossnet.netlink.const import RTPROT_CROSSNET
from crossnet.plan.resources import Resource
from crossnet.state import StateDir
from tests.unit.fakekernel import FakeEnv, install, machine

SOURCE = {"cluster": {"name": "c"}}


@pytest.fixture
def world(tmp_path, monkeypatch):
    k = machine()
    announced = install(monkeypatch, k, tmp_path, ip_forward="1")
    b = get_backend("host-gw")
    settings = program.Settings("c", "host-gw", IPv4Network("10.32.0.0/16"), 24, "cn0", None, False, 1, 4789, {})
    peers = [Peer(f"h{i}", IPv4Address(f"10.56.0.{i}"), IPv4Network(f"10.32.{i}.0/24")) for i in (2, 3)]
    ctx = program.context(settings, b, host="h1", address=IPv4Address("10.56.0.1"), iface="eth0",
                          subnet=IPv4Network("10.32.1.0/24"), nic=k.links["eth0"], peers=peers)
    return k, StateDir(tmp_path / "state"), ctx, b, announced


def owned(state: StateDir) -> list[Resource]:
    return [Resource.from_json(r) for r in (state.load_applied() or {}).get("resources", [])]


def test_dry_run_changes_nothing(world):
    k, state, ctx, b, announced = world
    done = program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE, dry_run=True)
    assert [c.action for c in done.changes] == ["create"] * 5 and done.owned is None
    assert k.log == [] and state.load_applied() is None and state.load_journal() is None and announced == []


def test_records_what_it_made_then_only_when_something_changes(world):
    k, state, ctx, b, announced = world
    done = program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert done.owned == done.desired == program.desired_resources(ctx, b)
    applied = state.load_applied()
    assert applied["host"] == "h1" and applied["cluster"] == {"name": "c"} and applied["context"] == ctx.to_json()
    assert owned(state) == done.owned and state.load_journal() is None and announced == ["h1"]
    stamp = state.applied_path.stat().st_mtime_ns
    again = program.program_host(state, FakeEnv(k, batch=True), ctx, b, owned(state), SOURCE)
    assert again.changes == [] and state.applied_path.stat().st_mtime_ns == stamp  # nothing to record
    program.program_host(state, FakeEnv(k, batch=True), ctx, b, owned(state), SOURCE, always_record=True)
    assert state.applied_path.stat().st_mtime_ns != stamp  # the agent always records its view
    # a journal left by an interrupted run: the record is rewritten (it supersedes the journal)
    state.save_journal({"host": "h1", "resources": []})
    program.program_host(state, FakeEnv(k, batch=True), ctx, b, owned(state), SOURCE)
    assert state.load_journal() is None and owned(state) == done.owned
    # a peer gone: its route goes, the record follows
    ctx.peers.pop()
    out = program.program_host(state, FakeEnv(k, batch=True), ctx, b, owned(state), SOURCE)
    assert [(c.action, c.resource.key()) for c in out.changes] == [("remove", "route:10.32.3.0/24")]
    assert [r.key() for r in owned(state)] == [r.key() for r in done.owned if r.key() != "route:10.32.3.0/24"]


def test_checks_refuse_before_the_first_change(world):
    k, state, ctx, b, _ = world
    k.add_link("eth1")
    k.add_addr("eth1", "10.32.200.1/24")  # this host already routes part of the container network
    with pytest.raises(ConfigError, match=r"^network: container network 10.32.0.0/16 overlaps this host's route "
                                          r"10.32.200.0/24 dev eth1$"):
        program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    ctx.peers.append(Peer("far", IPv4Address("10.56.0.77"), IPv4Network("10.32.9.0/24")))
    k.routes = [r for r in k.routes if r.dst != "10.32.200.0/24"]
    k.route_replace("10.56.0.77/32", "10.56.0.254", k.index("eth0"))  # behind a router: no L2 for host-gw
    with pytest.raises(ApplyError, match="far .* is reached via router 10.56.0.254"):
        program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert [op for op, _ in k.log] == ["route"] and state.load_applied() is None and state.load_journal() is None


def test_a_route_of_the_admins_to_a_peers_subnet_is_refused_not_replaced_then_deleted(world):
    """A route this host already has to exactly a destination crossnet would route (a
    peer's subnet) but not the same route (another gateway), and not on crossnet's record:
    it used to pass the overlap check (its destination is among the desired routes'), was
    silently replaced by crossnet's `ip route replace`, and `reset` then deleted crossnet's
    -- the admin's route gone for good. It is refused like any overlapping route, before
    anything changes; the same route made by crossnet (its protocol number) is not in
    the way, and a recorded one is crossnet's own."""
    k, state, ctx, b, _ = world
    k.route_replace("10.32.2.0/24", "10.56.0.99", k.index("eth0"))
    k.log.clear()
    with pytest.raises(ConfigError, match=r"^network: container network 10.32.0.0/16 overlaps this host's route "
                                          r"10.32.2.0/24 via 10.56.0.99 dev eth0$"):
        program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert k.log == [] and state.load_applied() is None and state.load_journal() is None
    # the same route as crossnet's, made by crossnet (e.g. its record lost): no conflict
    k.route_replace("10.32.2.0/24", "10.56.0.2", k.index("eth0"), RTPROT_CROSSNET)
    done = program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    # crossnet's on record, then changed behind its back: a repair, not a refusal
    k.route_replace("10.32.2.0/24", "10.56.0.99", k.index("eth0"))
    again = program.program_host(state, FakeEnv(k, batch=True), ctx, b, owned(state), SOURCE)
    assert [(c.action, c.resource.key()) for c in again.changes] == [("repair", "route:10.32.2.0/24")]
    assert done.owned is not None


RTPROT_BOOT = 3  # what `ip route add` gives a route


@pytest.mark.parametrize("proto", [RTPROT_BOOT, 4])  # `ip route add`; pyroute2's (or `proto static`)
def test_an_admins_route_identical_to_crossnets_is_refused_not_adopted(world, proto):
    """The very route crossnet would make to a peer's subnet (same gateway and device),
    made by the admin before the first apply: it passed the overlap check as if it were
    crossnet's, apply recorded it as crossnet's own and reset -- or the peer going away --
    deleted it. Only a route carrying crossnet's protocol number is crossnet's: this one
    is refused like any route of the admin's, before anything changes."""
    k, state, ctx, b, _ = world
    k.route_replace("10.32.2.0/24", "10.56.0.2", k.index("eth0"), proto)
    k.log.clear()
    before = list(k.routes)
    with pytest.raises(ConfigError, match=r"^network: container network 10.32.0.0/16 overlaps this host's route "
                                          r"10.32.2.0/24 via 10.56.0.2 dev eth0$"):
        program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert k.log == [] and k.routes == before and state.load_applied() is None and state.load_journal() is None
    # gone: apply goes through, and crossnet's own route carries its protocol number
    k.routes = [r for r in k.routes if r.dst != "10.32.2.0/24"]
    program.program_host(state, FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert {(r.dst, r.proto) for r in k.routes if r.dst.startswith("10.32.")} == {
        ("10.32.2.0/24", RTPROT_CROSSNET), ("10.32.3.0/24", RTPROT_CROSSNET)}


def test_a_route_to_the_whole_network_on_another_device_is_refused_for_wireguard(tmp_path, monkeypatch):
    """wireguard routes the whole container network into its device (not there yet on a
    first apply): a route of the admin's to that network through another device was
    taken over the same way."""
    k = machine()
    install(monkeypatch, k, tmp_path, ip_forward="1")
    b = get_backend("wireguard")
    settings = program.Settings("c", "wireguard", IPv4Network("10.32.0.0/16"), 24, "cn0", None, False, 1, 4789, {})
    ctx = program.context(settings, b, host="h1", address=IPv4Address("10.56.0.1"), iface="eth0",
                          subnet=IPv4Network("10.32.1.0/24"), nic=k.links["eth0"], peers=[])
    assert "route:10.32.0.0/16" in [r.key() for r in program.desired_resources(ctx, b)]
    k.route_replace("10.32.0.0/16", None, k.index("eth0"))
    k.log.clear()
    with pytest.raises(ConfigError, match=r"^network: container network 10.32.0.0/16 overlaps this host's route "
                                          r"10.32.0.0/16 dev eth0$"):
        program.program_host(StateDir(tmp_path / "state"), FakeEnv(k, batch=True), ctx, b, [], SOURCE)
    assert k.log == []
