"""The bridge takeover's journal and replay logic against a small fake kernel
(crossnet.plan: NicTakeover, Bridge, reconcile, teardown, preflight). The same in
lab namespaces with the real kernel: tests/e2e/test_bridge_takeover.py.

The fake kernel keeps links, IPv4/IPv6 addresses and routes, answers pyroute2's
calls with message-like objects, and (like Linux) drops every route through a
device when its last IPv4 address goes: the reason an interrupted takeover used to
strand the host without its default route."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from crossnet.errors import ApplyError
from crossnet.host import load_previous
from crossnet.ovs import resources as ovs_resources
from crossnet.plan import nic as plan_nic
from crossnet.plan import reconciler as plan_reconciler
from crossnet.plan.env import Env
from crossnet.plan.nic import NicTakeover
from crossnet.plan.reconciler import Journal, pending, reconcile, teardown
from crossnet.plan.resources import Bridge, Resource
from crossnet.state import StateDir


class Msg(dict):
    def __init__(self, fields: dict, attrs: list[tuple[str, object]]):
        super().__init__(fields)
        self["attrs"] = attrs

    def get_attr(self, name: str):
        return next((v for k, v in self["attrs"] if k == name), None)


class FakeKernel:
    """Just enough of pyroute2.IPRoute for crossnet.plan's bridge takeover."""

    def __init__(self) -> None:
        self.links: dict[int, dict] = {1: {"name": "lo", "kind": None, "master": None, "up": True, "mac": "00:00:00:00:00:00"}}
        self.addrs: list[dict] = []  # {"index", "family", "local", "address", "prefixlen", "broadcast", "scope"}
        self.routes: list[dict] = []  # {"family", "table", "dst", "dst_len", "tos", "priority", "oif", ...}
        self.calls = 0

    # -- state as comparable data
    def state(self) -> dict:
        return json.loads(json.dumps({
            "links": sorted((l["name"], l["kind"], self._name(l["master"]), l["up"], l["mac"]) for l in self.links.values()),
            "addrs": sorted((self._name(a["index"]), a["local"], a["address"], a["prefixlen"], a.get("broadcast"),
                             a.get("scope", 0)) for a in self.addrs),
            "routes": sorted(json.dumps({**r, "oif": self._name(r.get("oif"))}, sort_keys=True) for r in self.routes),
        }))

    def _name(self, index):
        return self.links[index]["name"] if index in self.links else None

    # -- links
    def link_lookup(self, ifname: str) -> list[int]:
        return [i for i, l in self.links.items() if l["name"] == ifname]

    def _link_msg(self, i: int) -> Msg:
        l = self.links[i]
        info = Msg({}, [("IFLA_INFO_KIND", l["kind"])]) if l["kind"] else None
        attrs = [("IFLA_IFNAME", l["name"]), ("IFLA_MTU", 1500), ("IFLA_ADDRESS", l["mac"]), ("IFLA_LINKINFO", info)]
        if l["master"]:
            attrs.append(("IFLA_MASTER", l["master"]))
        return Msg({"index": i, "flags": 1 if l["up"] else 0}, attrs)

    def get_links(self) -> list[Msg]:
        return [self._link_msg(i) for i in sorted(self.links)]

    def link(self, cmd: str, **kw):
        self.calls += 1
        if cmd == "get":
            if kw["index"] not in self.links:
                raise NetlinkError(19)
            return [self._link_msg(kw["index"])]
        if cmd == "add":
            i = max(self.links) + 1
            self.links[i] = {"name": kw["ifname"], "kind": kw.get("kind"), "master": None, "up": False,
                             "mac": kw.get("address", f"02:00:00:00:00:{i:02x}")}
            return []
        if kw["index"] not in self.links:
            raise NetlinkError(19)
        if cmd == "del":
            i = kw["index"]
            del self.links[i]
            for l in self.links.values():
                if l["master"] == i:
                    l["master"] = None
            self.addrs = [a for a in self.addrs if a["index"] != i]
            self.routes = [r for r in self.routes if r.get("oif") != i]
            return []
        l = self.links[kw["index"]]
        if "master" in kw:
            l["master"] = kw["master"] or None
        if "state" in kw:
            l["up"] = kw["state"] == "up"
        if "address" in kw:
            l["mac"] = kw["address"]
        return []

    # -- addresses
    def get_addr(self, family: int = 2, index: int | None = None) -> list[Msg]:
        out = []
        for a in self.addrs:
            if a["family"] != family or (index is not None and a["index"] != index):
                continue
            attrs = [("IFA_ADDRESS", a["address"])]
            if family == 2:
                attrs.append(("IFA_LOCAL", a["local"]))
            if a.get("broadcast"):
                attrs.append(("IFA_BROADCAST", a["broadcast"]))
            out.append(Msg({"index": a["index"], "prefixlen": a["prefixlen"], "scope": a.get("scope", 0), "flags": 0x80}, attrs))
        return out

    def addr(self, cmd: str, index: int, address: str, prefixlen: int, local: str | None = None, **kw):
        self.calls += 1
        local = local or address
        match = [a for a in self.addrs if a["index"] == index and a["local"] == local and a["prefixlen"] == prefixlen]
        if cmd == "add":
            if match:
                raise NetlinkError(17)
            rec = {"index": index, "family": 2, "local": local, "address": address, "prefixlen": prefixlen,
                   "scope": kw.get("scope", 0)}
            if kw.get("broadcast"):
                rec["broadcast"] = kw["broadcast"]
            self.addrs.append(rec)
        elif cmd == "del":
            if not match:
                raise NetlinkError(99)
            self.addrs.remove(match[0])
            if not any(a["index"] == index and a["family"] == 2 for a in self.addrs):
                self.routes = [r for r in self.routes if not (r["family"] == 2 and r.get("oif") == index)]
        return []

    # -- routes
    def get_routes(self, family: int = 2, **kw) -> list[Msg]:
        out = []
        for r in self.routes:
            if r["family"] != family:
                continue
            attrs: list = [("RTA_TABLE", r["table"])]
            if r["dst_len"]:
                attrs.append(("RTA_DST", r["dst"]))
            for key, name in (("gateway", "RTA_GATEWAY"), ("oif", "RTA_OIF"), ("priority", "RTA_PRIORITY"),
                              ("prefsrc", "RTA_PREFSRC"), ("multipath", "RTA_MULTIPATH")):
                if r.get(key) is not None:
                    attrs.append((name, r[key]))
            if r.get("metrics"):
                attrs.append(("RTA_METRICS", {"attrs": [(f"RTAX_{k.upper()}", v) for k, v in r["metrics"].items()]}))
            out.append(Msg({"table": min(r["table"], 252), "dst_len": r["dst_len"], "tos": r.get("tos", 0),
                            "type": r.get("type", 1), "proto": r.get("proto", 3), "scope": r.get("scope", 0),
                            "flags": r.get("flags", 0)}, attrs))
        return out

    def route(self, cmd: str, **kw):
        self.calls += 1
        assert cmd == "replace", cmd
        rec = {"family": 2, "table": kw.get("table", 254), "dst": kw["dst"], "dst_len": kw["dst_len"],
               "tos": kw.get("tos", 0), "priority": kw.get("priority")}
        ident = {k: rec[k] for k in ("table", "dst", "dst_len", "tos", "priority")}
        oif = kw["oif"]
        if not any(a["index"] == oif and a["family"] == 2 for a in self.addrs) and not kw.get("flags"):
            if kw.get("gateway"):
                raise NetlinkError(101)  # no address on the device: gateway unreachable
        rec.update(oif=oif, gateway=kw.get("gateway"), proto=kw.get("proto", 3), scope=kw.get("scope", 0),
                   prefsrc=kw.get("prefsrc"), flags=kw.get("flags", 0), type=kw.get("type", 1))
        if kw.get("metrics"):
            rec["metrics"] = dict(kw["metrics"])
        self.routes = [r for r in self.routes if {k: r.get(k) for k in ident} != ident or r["family"] != 2]
        self.routes.append({k: v for k, v in rec.items() if v is not None})
        return []

    # -- building a host
    def add_link(self, name: str, kind: str | None = None, mac: str = "52:54:00:00:00:01") -> int:
        i = max(self.links) + 1
        self.links[i] = {"name": name, "kind": kind, "master": None, "up": True, "mac": mac}
        return i

    def add_addr(self, index: int, local: str, prefixlen: int, peer: str | None = None, family: int = 2,
                 scope: int = 0, broadcast: str | None = None) -> None:
        rec = {"index": index, "family": family, "local": local, "address": peer or local, "prefixlen": prefixlen,
               "scope": scope}
        if broadcast:
            rec["broadcast"] = broadcast
        self.addrs.append(rec)

    def add_route(self, dst: str, oif: int | None, gateway: str | None = None, table: int = 254, family: int = 2,
                  **extra) -> None:
        net = ipaddress.ip_network(dst)
        rec = {"family": family, "table": table, "dst": str(net.network_address), "dst_len": net.prefixlen,
               "tos": 0, "oif": oif, "gateway": gateway, "proto": 3, "scope": 0, "flags": 0, "type": 1, **extra}
        self.routes.append({k: v for k, v in rec.items() if v is not None})


def host() -> FakeKernel:
    """A host whose NIC eth0 has a LAN address, a point-to-point address, a default
    route, a route in table 100 and an onlink route."""
    k = FakeKernel()
    eth0 = k.add_link("eth0")
    k.add_addr(eth0, "10.57.0.11", 24, broadcast="10.57.0.255")
    k.add_addr(eth0, "10.66.0.1", 32, peer="10.66.0.2")
    k.add_route("0.0.0.0/0", eth0, "10.57.0.1")
    k.add_route("10.98.0.0/24", eth0, "10.57.0.1", table=100)
    k.add_route("10.99.0.0/24", eth0, "192.0.2.1", flags=4, priority=5)
    return k


def desired() -> list[Resource]:
    return [Bridge("br0", 1500, mac="52:54:00:00:00:01"), NicTakeover("eth0", "br0")]


class Recorder(Journal):
    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel
        self.entries: list[list[dict]] | None = []
        self.kernel_at_write: list[dict] = []

    def write(self, resources: list[Resource]) -> None:
        self.entries = [r.to_json() for r in resources]
        self.kernel_at_write.append(self.kernel.state())

    def discard(self) -> None:
        self.entries = None

    def resources(self) -> list[Resource]:
        return [Resource.from_json(copy.deepcopy(r)) for r in self.entries or []]


class Killed(BaseException):
    """SIGKILL stand-in: not an Exception, so no rollback or clean-up handler runs."""


def kill_at(monkeypatch, n: int) -> list[int]:
    seen = [0]

    def crash_point() -> None:
        seen[0] += 1
        if seen[0] == n:
            raise Killed(n)

    monkeypatch.setattr(plan_reconciler, "crash_point", crash_point)
    monkeypatch.setattr(plan_nic, "crash_point", crash_point)
    monkeypatch.setattr(ovs_resources, "crash_point", crash_point)
    return seen


def clean_apply() -> tuple[FakeKernel, FakeKernel, list[Resource]]:
    """(the host before, after a clean apply, what that apply recorded)"""
    k = host()
    out = reconcile(desired(), [], Env(k), Recorder(k))
    return host(), k, out.resources


def test_journal_is_written_before_the_first_change_with_everything_to_restore():
    k = host()
    before = k.state()
    rec = Recorder(k)
    reconcile(desired(), [], Env(k), rec)
    assert rec.kernel_at_write == [before]  # one write, nothing changed yet
    take = next(r for r in rec.entries if r["kind"] == "nic-takeover")
    assert take["saved"]["addresses"] == [
        {"local": "10.57.0.11", "prefixlen": 24, "broadcast": "10.57.0.255"},
        {"local": "10.66.0.1", "prefixlen": 32, "peer": "10.66.0.2"},
    ]
    routes = {(r["dst"], r["gateway"], r["table"], r["onlink"]) for r in take["saved"]["routes"]}
    assert routes == {("0.0.0.0/0", "10.57.0.1", 254, False), ("10.98.0.0/24", "10.57.0.1", 100, False),
                      ("10.99.0.0/24", "192.0.2.1", 254, True)}


def test_takeover_moves_everything_faithfully_and_teardown_gives_it_back():
    original, k, recorded = clean_apply()
    s = k.state()
    assert ("br0", "10.66.0.1", "10.66.0.2", 32, None, 0) in [tuple(a) for a in s["addrs"]]  # not the peer as local
    assert not [a for a in s["addrs"] if a[0] == "eth0"]
    on_br0 = [json.loads(r) for r in s["routes"]]
    assert {(r["dst"], r["table"]) for r in on_br0 if r["oif"] == "br0"} == {("0.0.0.0", 254), ("10.98.0.0", 100),
                                                                             ("10.99.0.0", 254)}
    recorded = [Resource.from_json(json.loads(json.dumps(r.to_json()))) for r in recorded]  # as applied.json
    rec = Recorder(k)
    assert reconcile(desired(), recorded, Env(k), rec).changes == []  # up to date: no journal entry
    assert rec.kernel_at_write == []
    teardown(recorded, Env(k))
    assert k.state() == original.state()


def _steps(monkeypatch) -> int:
    seen = kill_at(monkeypatch, 0)
    k = host()
    reconcile(desired(), [], Env(k), Recorder(k))
    return seen[0]


def test_killed_at_every_step_then_apply_again_completes(monkeypatch):
    _, done, _ = clean_apply()
    steps = _steps(monkeypatch)
    assert steps >= 9  # journal, bridge, enslave, 2 x (add, del), 3 routes
    for n in range(1, steps + 1):
        k = host()
        rec = Recorder(k)
        kill_at(monkeypatch, n)
        with pytest.raises(Killed):
            reconcile(desired(), [], Env(k), rec)
        kill_at(monkeypatch, 0)
        # the next apply: previous = the journal (JSON round trip, as on disk)
        out = reconcile(desired(), rec.resources(), Env(k), Recorder(k))
        assert k.state() == done.state(), n
        teardown(out.resources, Env(k))
        assert k.state() == host().state(), n


def test_killed_at_every_step_then_reset_restores_the_original(monkeypatch):
    steps = _steps(monkeypatch)
    for n in range(1, steps + 1):
        k = host()
        rec = Recorder(k)
        kill_at(monkeypatch, n)
        with pytest.raises(Killed):
            reconcile(desired(), [], Env(k), rec)
        kill_at(monkeypatch, 0)
        teardown(rec.resources(), Env(k))  # reset after the kill
        assert k.state() == host().state(), n


def test_without_a_journal_the_next_apply_refuses_instead_of_recording_an_empty_takeover(monkeypatch):
    """A kill after the NIC lost its addresses (and with them the default route):
    what the old code then recorded as an empty takeover is now refused, twice over
    (the bridge is not crossnet's on record, and the NIC is enslaved with no record
    of its addresses). The journal is what lets apply/reset recover (tests above)."""
    k = host()
    kill_at(monkeypatch, 7)  # journal, bridge, enslave, add, del, add, del
    with pytest.raises(Killed):
        reconcile(desired(), [], Env(k))
    kill_at(monkeypatch, 0)
    assert not [r for r in k.routes if r.get("dst_len") == 0]  # default route lost with the NIC's addresses
    stranded = k.state()
    with pytest.raises(ApplyError, match="interface br0 already exists and was not created by crossnet"):
        reconcile(desired(), [], Env(k))
    with pytest.raises(ApplyError, match="eth0 is already a port of br0 and crossnet has no record"):
        reconcile(desired(), [Bridge("br0", 1500)], Env(k))
    assert k.state() == stranded


@pytest.mark.parametrize("name", ["br0"])
def test_a_bridge_crossnet_did_not_create_is_refused_and_left_alone(name):
    k = host()
    foreign = k.add_link(name, "bridge", mac="02:11:11:11:11:11")
    port = k.add_link("veth9")
    k.links[port]["master"] = foreign
    k.add_addr(foreign, "10.123.0.1", 24)
    before = k.state()
    rec = Recorder(k)
    with pytest.raises(ApplyError, match=rf"interface {name} already exists and was not created by crossnet "
                                         r"\(bridge link; ports: veth9; addresses: 10.123.0.1/24\)"):
        reconcile(desired(), [], Env(k), rec)
    with pytest.raises(ApplyError, match="not created by crossnet"):
        pending(desired(), [], Env(k))
    assert k.state() == before and rec.kernel_at_write == []
    # recorded as crossnet's (applied.json or a journal): it is crossnet's to repair
    reconcile(desired(), [Bridge(name, 1500)], Env(k))


def test_teardown_never_deletes_a_link_of_another_kind():
    k = FakeKernel()
    k.add_link("br0", "veth")
    teardown([Bridge("br0", 1500)], Env(k))
    assert k.link_lookup("br0")


@pytest.mark.parametrize("what,setup", [
    ("multipath route 10.96.0.0/24", lambda k, i: k.add_route("10.96.0.0/24", None, multipath=[
        {"oif": i, "attrs": [("RTA_GATEWAY", "10.57.0.1")]}, {"oif": i, "attrs": [("RTA_GATEWAY", "10.57.0.2")]}])),
    ("IPv6 address fd00::1/64", lambda k, i: k.add_addr(i, "fd00::1", 64, family=10)),
    ("IPv6 route fd00:1::/64 via fe80::1", lambda k, i: k.add_route("fd00:1::/64", i, "fe80::1", family=10)),
])
def test_what_cannot_be_moved_is_refused_before_anything_changes(what, setup):
    k = host()
    k.add_addr(1, "fe80::1", 64, family=10, scope=253)  # link-local: fine, the bridge gets its own
    setup(k, k.link_lookup("eth0")[0])
    before = k.state()
    rec = Recorder(k)
    with pytest.raises(ApplyError) as exc:
        reconcile(desired(), [], Env(k), rec)
    assert what in str(exc.value) and "nothing was changed" in str(exc.value)
    assert k.state() == before and rec.kernel_at_write == []


def test_link_local_ipv6_alone_is_no_obstacle():
    k = host()
    k.add_addr(k.link_lookup("eth0")[0], "fe80::5054:ff:fe00:1", 64, family=10, scope=253)
    reconcile(desired(), [], Env(k))


def test_a_failed_apply_that_rolled_back_discards_its_journal(monkeypatch):
    k = host()
    rec = Recorder(k)
    real = k.route

    def refuse(cmd, **kw):
        if kw.get("table") == 100 and kw["oif"] != k.link_lookup("eth0")[0]:
            raise NetlinkError(22, "injected")
        return real(cmd, **kw)

    k.route = refuse
    with pytest.raises(ApplyError, match="rolled back"):
        reconcile(desired(), [], Env(k), rec)
    assert rec.entries is None
    assert k.state() == host().state()


def test_records_from_before_point_to_point_support_still_restore():
    k = FakeKernel()
    eth0 = k.add_link("eth0")
    k.add_addr(eth0, "10.57.0.11", 24)
    k.add_route("0.0.0.0/0", eth0, "10.57.0.1")
    legacy = NicTakeover("eth0", "br0")  # as an older crossnet recorded it
    legacy.saved = {"addresses": ["10.57.0.11/24"],
                    "routes": [{"dst": "0.0.0.0/0", "gateway": "10.57.0.1", "metric": None, "proto": 3, "scope": 0,
                                "prefsrc": None, "onlink": False}]}
    before = k.state()
    reconcile([Bridge("br0", 1500), legacy], [], Env(k))
    assert k.links[eth0]["master"] and not [a for a in k.addrs if a["index"] == eth0]
    assert legacy.check(Env(k))
    teardown([Bridge("br0", 1500), legacy], Env(k))
    assert k.state() == before


def test_load_previous_prefers_the_journal_and_save_applied_supersedes_it(tmp_path):
    state = StateDir(tmp_path)
    ctx = {"backend": "bridge"}
    state.save_applied({"host": "h1", "context": ctx, "resources": [Bridge("br0", 1500).to_json()]})
    state.save_journal({"host": "h1", "context": ctx,
                        "resources": [Bridge("br0", 1500).to_json(), NicTakeover("eth0", "br0").to_json()]})
    applied, previous = load_previous(state)
    assert [r.key() for r in previous] == ["link:br0", "takeover:eth0"]
    state.save_applied({"host": "h1", "context": ctx, "resources": []})
    assert not state.journal_path.exists()
    assert load_previous(state)[1] == []
    state.save_journal({"host": "h1", "context": ctx, "resources": [Bridge("br0", 1500).to_json()]})
    state.clear()
    assert not state.journal_path.exists()


OCTET = st.integers(min_value=1, max_value=254)


@settings(max_examples=40, deadline=None)
@given(
    extra=st.lists(st.tuples(OCTET, OCTET, st.sampled_from([24, 28, 32]), st.booleans()), max_size=3,
                   unique_by=lambda t: (t[0], t[1])),
    routes=st.lists(st.tuples(OCTET, st.sampled_from([254, 100, 1000]), st.sampled_from([None, 5, 100])), max_size=4,
                    unique_by=lambda t: (t[0], t[1], t[2])),
    kill=st.integers(min_value=1, max_value=40),
)
def test_property_kill_anywhere_then_reset_or_apply(extra, routes, kill):
    """Any mix of plain and point-to-point addresses and routes in several tables:
    a kill at any step, then reset, gives the original back; then apply again gives
    what a clean apply gives."""
    def build() -> FakeKernel:
        k = host()
        eth0 = k.link_lookup("eth0")[0]
        for a, b, plen, ptp in extra:
            k.add_addr(eth0, f"10.70.{a}.{b}", 32 if ptp else plen, peer=f"10.71.{a}.{b}" if ptp else None)
        for n, table, metric in routes:
            k.add_route(f"10.80.{n}.0/24", eth0, "10.57.0.1", table=table, priority=metric)
        return k

    done = build()
    reconcile(desired(), [], Env(done))
    k = build()
    rec = Recorder(k)
    with pytest.MonkeyPatch.context() as mp:
        kill_at(mp, kill)
        try:
            reconcile(desired(), [], Env(k), rec)
            completed = True
        except Killed:
            completed = False
    if completed:
        assert k.state() == done.state()
        return
    teardown(rec.resources(), Env(k))
    assert k.state() == build().state()
    reconcile(desired(), rec.resources(), Env(k), Recorder(k))
    assert k.state() == done.state()


def ovs_host() -> FakeKernel:
    k = FakeKernel()
    eth0 = k.add_link("eth0")
    k.add_link("br-phy", "tun", mac="02:00:00:00:00:09")
    k.add_addr(eth0, "10.57.0.11", 24)
    k.add_route("0.0.0.0/0", eth0, "10.57.0.1")
    k.add_route("10.98.0.0/24", eth0, "10.57.0.1", table=100)
    return k


def test_ovs_address_move_killed_at_every_step_then_apply_or_reset(monkeypatch):
    """The OVS userspace datapath's AddressMove (NIC address onto br-phy) shares the
    route records and is journalled the same way."""
    move = lambda: [ovs_resources.AddressMove("eth0", "br-phy")]  # noqa: E731
    clean = ovs_host()
    reconcile(move(), [], Env(clean), Recorder(clean))
    assert not [a for a in clean.addrs if a["index"] == clean.link_lookup("eth0")[0]]
    assert {(r["dst"], r["table"]) for r in clean.routes if r["oif"] == clean.link_lookup("br-phy")[0]} == {
        ("0.0.0.0", 254), ("10.98.0.0", 100)}
    seen = kill_at(monkeypatch, 0)
    k = ovs_host()
    reconcile(move(), [], Env(k), Recorder(k))
    steps = seen[0]
    assert steps >= 5
    for n in range(1, steps + 1):
        for then in ("apply", "reset"):
            k = ovs_host()
            rec = Recorder(k)
            kill_at(monkeypatch, n)
            with pytest.raises(Killed):
                reconcile(move(), [], Env(k), rec)
            kill_at(monkeypatch, 0)
            if then == "apply":
                reconcile(move(), rec.resources(), Env(k), Recorder(k))
                assert k.state() == clean.state(), n
            else:
                teardown(rec.resources(), Env(k))
                assert k.state() == ovs_host().state(), n


HEADER = {"version": 1, "host": "h1", "context": {"backend": "bridge"}}


def _inject(monkeypatch, k: FakeKernel, where: str) -> None:
    """The next apply fails at `where`: inside the takeover (a route the kernel refuses)
    or after it (a later resource, here a second bridge the kernel refuses)."""
    if where == "takeover":
        real = k.route

        def refuse(cmd, **kw):
            if kw.get("table") == 100 and kw["oif"] != k.link_lookup("eth0")[0]:
                raise NetlinkError(22, "injected")
            return real(cmd, **kw)

        monkeypatch.setattr(k, "route", refuse)
    else:
        real_ensure = Bridge.ensure

        def ensure(self, env):
            if self.name == "br1":
                raise NetlinkError(95, "injected")
            return real_ensure(self, env)

        monkeypatch.setattr(Bridge, "ensure", ensure)


@pytest.mark.parametrize("where", ["takeover", "after"])
def test_killed_then_a_failed_apply_keeps_the_journal_so_reset_or_apply_still_recover(monkeypatch, tmp_path, where):
    """An apply killed half-way leaves its journal; the next apply takes it as the record
    (everything in it is `previous`), fails later on and rolls back what IT created --
    nothing, the interrupted run created it all. It used to discard the journal then: the
    bridge (and, failing after the takeover, the NIC's moved addresses and routes) were on
    no record any more, reset left them, and every later apply refused br0 as a link
    crossnet did not create. The journal must stay the record of what crossnet owns."""
    from crossnet.program import StateJournal

    later = [*desired(), Bridge("br1", 1500)]
    done = host()
    reconcile(desired(), [], Env(done))
    steps = _steps(monkeypatch)
    for n in range(1, steps + 1):
        for then in ("reset", "apply"):
            state = StateDir(tmp_path / f"{where}-{n}-{then}")
            k = host()
            kill_at(monkeypatch, n)
            with pytest.raises(Killed):
                reconcile(desired(), [], Env(k), StateJournal(state, HEADER))
            kill_at(monkeypatch, 0)
            journal = state.journal_path.read_bytes()
            todo = {c.resource.key() for c in pending(later, load_previous(state)[1], Env(k))}
            if where == "takeover" and "takeover:eth0" not in todo:
                continue  # killed after the takeover's last step: nothing of it left to fail
            with pytest.MonkeyPatch.context() as mp:
                _inject(mp, k, where)
                with pytest.raises(ApplyError, match="rolled back"):
                    reconcile(later, load_previous(state)[1], Env(k), StateJournal(state, HEADER))
            assert state.journal_path.read_bytes() == journal  # the record, as the interrupted run left it
            if where == "takeover":  # it gave the NIC back at once (not a port of br0): the host stays reachable
                now, before = k.state(), host().state()
                assert [x for x in now["links"] if x[0] == "eth0"] == [x for x in before["links"] if x[0] == "eth0"]
                assert (now["addrs"], now["routes"]) == (before["addrs"], before["routes"]), (n, then)
            previous = load_previous(state)[1]
            if then == "reset":
                teardown(previous, Env(k))
                assert k.state() == host().state(), (where, n)
            else:
                reconcile(desired(), previous, Env(k), StateJournal(state, HEADER))
                assert k.state() == done.state(), (where, n)
