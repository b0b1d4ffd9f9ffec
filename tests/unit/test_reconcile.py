"""plan.reconcile against a fake kernel (tests/unit/fakekernel.py), without root: it
creates what is missing, repairs drift, removes what is no longer wanted, rolls back
what it created when a write fails, keeps the batch order (queued per-peer writes go
out before a write that may depend on them), and writes the journal before the first
kernel change. The real kernel side: tests/e2e (crash points, takeover, apply)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet.errors import ApplyError
from crossnet.plan.reconciler import Journal, pending, reconcile
from crossnet.plan.resources import Address, Bridge, Fdb, Neigh, Route, Sysctl
from tests.unit.fakekernel import FakeEnv, FakeKernel, machine


class RecordingJournal(Journal):
    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel
        self.writes: list[tuple[int, list[dict]]] = []  # (kernel writes before it, resources)
        self.discarded = False

    def write(self, resources):
        self.writes.append((len(self.kernel.log), [r.to_json() for r in resources]))

    def discard(self):
        self.discarded = True


def base() -> list:
    return [Bridge("cn0", 1450, mac="02:00:00:00:00:aa"), Address("cn0", "10.32.1.1/24")]


def peer(i: int) -> list:
    return [Route(f"10.32.{i}.0/24", gateway=f"10.56.0.{i}", dev="eth0")]


def test_creates_what_is_missing_then_nothing():
    k = machine()
    desired = base() + peer(2) + peer(3)
    out = reconcile(desired, [], FakeEnv(k, batch=True))
    assert [(c.action, c.resource.key()) for c in out.changes] == [("create", r.key()) for r in desired]
    assert out.resources == desired
    assert k.links["cn0"].kind == "bridge" and k.links["cn0"].mtu == 1450 and k.links["cn0"].up
    assert k.addrs[k.index("cn0")] == ["10.32.1.1/24"]
    assert k.route("10.32.2.0/24").gateway == "10.56.0.2" and k.route("10.32.3.0/24").oif == k.index("eth0")
    writes = len(k.log)
    again = reconcile(base() + peer(2) + peer(3), out.resources, FakeEnv(k, batch=True))
    assert again.changes == [] and len(k.log) == writes  # idempotent: no write at all
    assert pending(base() + peer(2) + peer(3), out.resources, FakeEnv(k)) == []


def test_checks_against_one_snapshot():
    """1,000 peers are checked against one dump per kind, not one per resource."""
    k = machine()
    desired = base() + [Route(f"10.33.{i // 256}.{i % 256}/32", gateway="10.56.0.2", dev="eth0") for i in range(1000)]
    env = FakeEnv(k, batch=True)
    reconcile(desired, [], env)
    assert k.dumps <= 12, k.dumps
    k.dumps = 0
    assert reconcile(desired, desired, FakeEnv(k, batch=True)).changes == []
    assert k.dumps <= 4, k.dumps


def test_repairs_drift_and_removes_what_is_no_longer_wanted():
    k = machine()
    first = reconcile(base() + peer(2) + peer(3) + peer(4), [], FakeEnv(k, batch=True)).resources
    # drift: someone lowered the bridge MTU, deleted the gateway address, re-pointed a route
    k.links["cn0"] = k.links["cn0"].__class__(**{**k.links["cn0"].__dict__, "mtu": 1400})
    k.addrs[k.index("cn0")].clear()
    k.route_replace("10.32.3.0/24", "10.56.0.99", k.index("eth0"))
    k.log.clear()
    env = FakeEnv(k, batch=True)
    assert [(c.action, c.resource.key()) for c in pending(base() + peer(2) + peer(3), first, env)] == [
        ("remove", "route:10.32.4.0/24"), ("repair", "link:cn0"), ("repair", "addr:cn0:10.32.1.1/24"),
        ("repair", "route:10.32.3.0/24")]
    out = reconcile(base() + peer(2) + peer(3), first, env)
    assert [(c.action, c.resource.key()) for c in out.changes] == [
        ("repair", "link:cn0"), ("repair", "addr:cn0:10.32.1.1/24"), ("repair", "route:10.32.3.0/24"),
        ("remove", "route:10.32.4.0/24")]
    assert k.links["cn0"].mtu == 1450 and k.addrs[k.index("cn0")] == ["10.32.1.1/24"]
    assert k.route("10.32.3.0/24").gateway == "10.56.0.3" and k.route("10.32.4.0/24") is None
    assert ("route", "10.32.2.0/24") not in k.log  # what matched was not touched


def test_removes_in_reverse_order():
    k = machine()
    owned = reconcile(base() + peer(2), [], FakeEnv(k)).resources
    k.log.clear()
    out = reconcile([], owned, FakeEnv(k))
    assert [c.action for c in out.changes] == ["remove"] * 3
    assert k.log == [("route-del", "10.32.2.0/24"), ("addr-del", "cn0:10.32.1.1/24"), ("link-del", "cn0")]
    assert "cn0" not in k.links and k.route("10.32.2.0/24") is None


@pytest.mark.parametrize("refused", [("route", "10.32.3.0/24"), ("addr-add", "cn0:10.32.1.1/24")])
def test_a_refused_write_rolls_back_what_this_call_created(refused):
    k = machine()
    k.route_replace("10.32.9.0/24", "10.56.0.9", k.index("eth0"))  # owned before: stays
    before = (dict(k.links), {i: list(a) for i, a in k.addrs.items()}, list(k.routes))
    previous = peer(9)
    k.refuse[refused] = errno.EINVAL
    journal = RecordingJournal(k)
    with pytest.raises(ApplyError, match=r"\(rolled back\)$") as exc:
        reconcile(base() + peer(2) + peer(3) + previous, previous, FakeEnv(k, batch=True), journal)
    assert "Invalid argument" in str(exc.value)
    assert k.links.keys() == before[0].keys()
    assert {i: a for i, a in k.addrs.items() if a} == before[1]
    assert [r.dst for r in k.routes] == [r.dst for r in before[2]]
    assert journal.discarded  # the kernel is back to the record: no journal left to replay


def test_a_batch_failure_names_the_refused_resource():
    k = machine()
    k.refuse[("route", "10.32.3.0/24")] = errno.ENETUNREACH
    with pytest.raises(ApplyError) as exc:
        reconcile(peer(2) + peer(3) + peer(4), [], FakeEnv(k, batch=True))
    assert str(exc.value).startswith("ip route replace 10.32.3.0/24 via 10.56.0.3 dev eth0 proto 151: ")
    assert k.route("10.32.2.0/24") is None and k.route("10.32.4.0/24") is None


def test_batch_order_queued_writes_go_out_before_a_write_that_may_need_them():
    """Routes, neighbours and FDB entries are queued; any other resource first sends
    the queue (it may depend on them), so the kernel sees the desired order."""
    k = machine()
    k.add_link("cnvx1", "vxlan", mtu=1450, mac="02:00:00:00:00:bb")
    desired = [*peer(2), Fdb("cnvx1", "02:00:00:00:00:02", "10.56.0.2"), Neigh("cnvx1", "10.32.2.0", "02:00:00:00:00:02"),
               *base(), *peer(3), Fdb("cnvx1", "02:00:00:00:00:03", "10.56.0.3")]
    env = FakeEnv(k, batch=True)
    reconcile(desired, [], env)
    assert [op for op, _ in k.log] == ["route", "fdb", "neigh", "link-add", "link-set", "addr-add", "route", "fdb"]
    assert env.batch.commits == [3, 2]  # one burst before the bridge, one at the end
    # without a batch (another namespace) every write goes out at once, same order
    k2 = machine()
    k2.add_link("cnvx1", "vxlan", mtu=1450, mac="02:00:00:00:00:bb")
    reconcile(desired, [], FakeEnv(k2))
    assert k2.log == k.log


def test_journal_is_written_before_the_first_change(tmp_path, monkeypatch):
    """The journal lists everything the call may own afterwards (previous ones it will
    remove, then desired), each with what undoing needs (`prepare`), and is written
    before any kernel write; a reconcile with nothing to do writes none."""
    proc = tmp_path / "ip_forward"
    proc.write_text("0\n")
    monkeypatch.setattr(Sysctl, "path", property(lambda self: proc))
    k = machine()
    old = peer(7)
    reconcile(old, [], FakeEnv(k))
    journal = RecordingJournal(k)
    desired = [Sysctl("net.ipv4.ip_forward", "1"), *base(), *peer(2)]
    k.log.clear()
    reconcile(desired, old, FakeEnv(k, batch=True), journal)
    assert len(journal.writes) == 1
    writes_before, listed = journal.writes[0]
    assert writes_before == 0 and k.log  # nothing had changed yet when it was written
    assert [r["kind"] for r in listed] == ["route", "sysctl", "bridge", "address", "route"]
    assert listed[1]["saved"] == {"previous": "0"}  # reset restores it even after a kill right after the write
    assert proc.read_text() == "1"
    quiet = RecordingJournal(k)
    assert reconcile(desired, desired, FakeEnv(k, batch=True), quiet).changes == []
    assert quiet.writes == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    want=st.sets(st.integers(2, 40), max_size=15),
    had=st.sets(st.integers(2, 40), max_size=15),
    drift=st.sets(st.integers(2, 40), max_size=5),
    batch=st.booleans(),
)
def test_property_kernel_ends_as_desired(want, had, drift, batch):
    """Whatever was owned before and whatever drifted: afterwards every desired resource
    checks, no longer wanted ones are gone (a route someone re-pointed is theirs now and
    stays), and a second reconcile changes nothing -- unless someone else's route is where
    crossnet wants one it has none: that is refused, nothing changed."""
    k = machine()
    previous = [r for i in sorted(had) for r in peer(i)]
    reconcile(previous, [], FakeEnv(k))
    for i in drift:  # re-pointed by someone else (or added where crossnet had none)
        k.route_replace(f"10.32.{i}.0/24", "10.56.0.250", k.index("eth0"))
    desired = base() + [r for i in sorted(want) for r in peer(i)]
    if (want & drift) - had:
        before, writes = list(k.routes), len(k.log)
        with pytest.raises(ApplyError, match=r"^route 10\.32\.\d+\.0/24 via 10\.56\.0\.250 dev eth0 already "
                                             r"exists and was not made by crossnet"):
            reconcile(desired, previous, FakeEnv(k, batch=batch))
        assert k.routes == before and len(k.log) == writes
        return
    out = reconcile(desired, previous, FakeEnv(k, batch=batch))
    env = FakeEnv(k)
    assert all(r.check(env) for r in desired)
    assert {r.dst for r in k.routes if r.proto != 2} == {f"10.32.{i}.0/24" for i in want | drift}
    assert reconcile(desired, out.resources, FakeEnv(k, batch=batch)).changes == []


def test_removing_crossnets_route_leaves_the_admins_routes_to_the_same_destination():
    """wireguard routes a peer's subnet into its device without a gateway. Route.remove
    deleted every non-kernel route to that destination without a gateway, on any device:
    an admin's fallback route through eth0 (metric 100) went with crossnet's when the peer
    left or on reset. It deletes only its own: through its device, without a metric."""
    from crossnet.netlink.const import RT_SCOPE_LINK, RTPROT_STATIC
    from crossnet.netlink.iproute import RouteInfo

    k = machine()
    k.add_link("cnwg0", "wireguard")
    ours = Route("10.32.2.0/24", dev="cnwg0")
    reconcile([ours], [], FakeEnv(k))
    admins = [RouteInfo("10.32.2.0/24", None, k.index("eth0"), RTPROT_STATIC, RT_SCOPE_LINK, None, 0, 100),
              RouteInfo("10.32.2.0/24", None, k.index("cnwg0"), RTPROT_STATIC, RT_SCOPE_LINK, None, 0, 200)]
    k.routes += admins
    out = reconcile([], [ours], FakeEnv(k))
    assert [(c.action, c.resource.key()) for c in out.changes] == [("remove", "route:10.32.2.0/24")]
    assert [r for r in k.routes if r.dst == "10.32.2.0/24"] == admins


RTPROT_BOOT = 3  # what `ip route add` gives a route


def test_a_route_identical_to_crossnets_but_not_made_by_it_is_never_taken_over():
    """reconcile itself (every path: apply, the agent's fast path and resyncs, expose): a
    route of the admin's identical to the one crossnet makes passed `check`, was recorded
    as crossnet's own, and the peer going away deleted it. Only a route carrying crossnet's
    protocol number, or one on its record, is crossnet's; any other is refused before
    anything changes."""
    from crossnet.netlink.const import RTPROT_CROSSNET

    k = machine()
    k.route_replace("10.32.2.0/24", "10.56.0.2", k.index("eth0"), RTPROT_BOOT)
    before, writes = list(k.routes), len(k.log)
    for batch in (False, True):
        with pytest.raises(ApplyError, match=r"^route 10.32.2.0/24 via 10.56.0.2 dev eth0 already exists and was not "
                                             r"made by crossnet; crossnet does not take over or delete routes it did "
                                             r"not make: delete it, then apply again$"):
            reconcile(peer(2), [], FakeEnv(k, batch=batch))
        with pytest.raises(ApplyError):
            pending(peer(2), [], FakeEnv(k))
    assert k.routes == before and len(k.log) == writes
    # made by crossnet (its record lost): its own
    k.route_replace("10.32.2.0/24", "10.56.0.2", k.index("eth0"), RTPROT_CROSSNET)
    assert reconcile(peer(2), [], FakeEnv(k)).changes == []


def test_an_older_crossnets_recorded_routes_are_still_its_own_and_the_admins_stay():
    """Upgrade: routes an older crossnet made carry proto static, not the marker. On the
    record they are crossnet's (no refusal, no change, removed when no longer wanted);
    new ones carry the marker; an identical route of the admin's that replaced crossnet's
    recorded one after apply (proto boot) is left when crossnet's would be removed."""
    from crossnet.netlink.const import RTPROT_CROSSNET, RTPROT_STATIC

    k = machine()
    old = peer(2) + peer(3)
    for r in old:
        k.route_replace(r.dst, r.gateway, k.index("eth0"), RTPROT_STATIC)
    out = reconcile(old + peer(4), old, FakeEnv(k, batch=True))
    assert [(c.action, c.resource.key()) for c in out.changes] == [("create", "route:10.32.4.0/24")]
    assert k.route("10.32.4.0/24").proto == RTPROT_CROSSNET and k.route("10.32.2.0/24").proto == RTPROT_STATIC
    k.route_replace("10.32.3.0/24", "10.56.0.3", k.index("eth0"), RTPROT_BOOT)  # the admin's now
    reconcile([], out.resources, FakeEnv(k))
    assert [(r.dst, r.proto) for r in k.routes if r.dst.startswith("10.32.")] == [("10.32.3.0/24", RTPROT_BOOT)]
