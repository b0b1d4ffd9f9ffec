"""Validation of peers' store records (crossnet.store.records): what a record may claim
before the agent programs anything from it, which of two conflicting records wins,
and how the live set reacts when records come and go (PeerBook)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.backends.base import stable_mac
from crossnet.store import HostRecord, Snapshot
from crossnet.store.etcd import EtcdStore
from crossnet.store.records import LocalView, PeerBook, check_mac, check_record, filter_containers, select_records

NET = IPv4Network("10.32.0.0/16")
UNDERLAY = IPv4Network("10.56.0.0/20")
VIEW = LocalView(
    network=NET, subnet_len=24, name="h1", address=IPv4Address("10.56.0.1"), subnet=IPv4Network("10.32.1.0/24"),
    macs=frozenset({stable_mac("c", "h1", "vxlan")}),
    foreign=(IPv4Network("0.0.0.0/0"), UNDERLAY, IPv4Network("10.32.99.0/24")),
    connected=(UNDERLAY,),
)


def rec(name="h2", address="10.56.0.2", subnet="10.32.2.0/24", key=None, created=5, mac=None, **data):
    sub = IPv4Network(subnet)
    d = {"vtep_mac": mac or stable_mac("c", name, "vxlan"), **data}
    return HostRecord(name, IPv4Address(address), sub, d, key=IPv4Network(key) if key else sub, created=created)


def check(r: HostRecord, view: LocalView = VIEW) -> str | None:
    return check_record(r.key, r, view)


def test_a_good_record_passes():
    assert check(rec()) is None


@pytest.mark.parametrize("kw, field", [
    # the reproduced attack: the underlay /20 under a cluster subnet key
    ({"subnet": "10.56.0.0/20", "key": "10.32.202.0/24", "address": "10.57.9.9"}, "subnet"),
    ({"subnet": "10.32.3.0/24", "key": "10.32.2.0/24"}, "subnet"),  # another host's subnet under another key
    ({"subnet": "10.33.2.0/24"}, "subnet"),  # outside the cluster network
    ({"subnet": "10.32.2.0/25"}, "subnet"),  # not the configured length
    ({"subnet": "10.32.0.0/23"}, "subnet"),
    ({"subnet": "10.32.1.0/24"}, "subnet"),  # this host's own subnet
    ({"subnet": "10.32.99.0/24"}, "subnet"),  # a route of this host crossnet does not own
    ({"address": "0.0.0.0"}, "address"),
    ({"address": "255.255.255.255"}, "address"),
    ({"address": "224.0.0.1"}, "address"),
    ({"address": "127.0.0.1"}, "address"),
    ({"address": "169.254.1.1"}, "address"),
    ({"address": "240.0.0.1"}, "address"),
    ({"address": "10.32.7.7"}, "address"),  # inside the cluster network
    ({"address": "10.56.0.1"}, "address"),  # this host's own underlay address
    ({"address": "10.56.15.255"}, "address"),  # the underlay's broadcast address
    ({"address": "10.56.0.0"}, "address"),  # the underlay's network address
    ({"mac": "ff:ff:ff:ff:ff:ff"}, "data.vtep_mac"),
    ({"mac": "01:00:5e:00:00:01"}, "data.vtep_mac"),
    ({"mac": "00:00:00:00:00:00"}, "data.vtep_mac"),
    ({"mac": "02:AA:BB:CC:DD:EE"}, "data.vtep_mac"),  # not canonical: would never match the kernel's
    ({"mac": "zz"}, "data.vtep_mac"),
    ({"mac": stable_mac("c", "h1", "vxlan")}, "data.vtep_mac"),  # this host's own VTEP MAC
    ({"gw_mac": "ff:ff:ff:ff:ff:ff"}, "data.gw_mac"),
    ({"name": "h1"}, "name"),  # this host's name
    ({"name": "bad name;"}, "name"),
    ({"name": "-x"}, "name"),
    # "$" also matches before a trailing newline: these passed (this host's own name and MAC
    # among them), and pyroute2 cannot encode "..:ee\n" as a neighbour's lladdr: that one
    # peer's failure rolled back the agent's whole full sync (every peer)
    ({"name": "h1\n"}, "name"),  # this host's name, spelt with a newline
    ({"name": "h2\n"}, "name"),
    ({"mac": stable_mac("c", "h1", "vxlan") + "\n"}, "data.vtep_mac"),
    ({"mac": "02:00:00:00:00:01\n"}, "data.vtep_mac"),
    ({"gw_mac": "02:00:00:00:00:01\n"}, "data.gw_mac"),
])
def test_hostile_records_are_rejected_naming_the_field(kw, field):
    why = check(rec(**kw))
    assert why is not None and why.startswith(field + ":"), why


def test_a_key_that_names_no_subnet_is_rejected():
    assert check_record(None, rec(), VIEW).startswith("key:")


@pytest.mark.parametrize("mac, ok", [("02:00:00:00:00:01", True), ("00:16:3e:00:00:01", True),
                                     ("03:00:00:00:00:01", False), ("", False), (5, False), (None, False),
                                     ("02:00:00:00:00:01\n", False)])
def test_check_mac(mac, ok):
    assert (check_mac(mac) is None) == ok


def test_the_older_record_wins_a_conflict_and_the_younger_is_ignored():
    old = rec("h2", subnet="10.32.2.0/24", created=10)
    same_name = rec("h2", subnet="10.32.3.0/24", created=11, mac="02:00:00:00:00:33")
    same_mac = rec("h4", subnet="10.32.4.0/24", created=12, mac=old.data["vtep_mac"])
    sel = select_records({r.key: r for r in (same_mac, same_name, old)}, VIEW)
    assert list(sel.valid) == [old.key]
    assert sel.rejected[same_name.key].startswith("name:")
    assert sel.rejected[same_mac.key].startswith("data:")
    # the older one gone: the next oldest claimant of the name is valid; the MAC one too
    sel = select_records({r.key: r for r in (same_mac, same_name)}, VIEW)
    assert set(sel.valid) == {same_name.key, same_mac.key}


def test_age_decides_not_the_order_of_the_mapping():
    a = rec("h2", subnet="10.32.2.0/24", created=20)
    b = rec("h2", subnet="10.32.3.0/24", created=3, mac="02:00:00:00:00:33")
    assert list(select_records({a.key: a, b.key: b}, VIEW).valid) == [b.key]
    assert list(select_records({b.key: b, a.key: a}, VIEW).valid) == [b.key]


# ---- property tests --------------------------------------------------------------------
octet = st.integers(0, 255)
addresses = st.one_of(
    st.builds(lambda a, b, c, d: IPv4Address(f"{a}.{b}.{c}.{d}"), octet, octet, octet, octet),
    st.sampled_from([IPv4Address(a) for a in ("0.0.0.0", "255.255.255.255", "10.56.0.1", "10.56.15.255",
                                              "127.0.0.1", "224.1.1.1", "10.32.5.5", "10.56.3.4")]),
)
subnets = st.one_of(
    st.builds(lambda b, c, p: IPv4Network(f"10.{b}.{c}.0/{p}", strict=False), st.sampled_from([32, 33, 56]),
              octet, st.sampled_from([16, 20, 23, 24, 25, 28])),
    st.builds(lambda c: IPv4Network(f"10.32.{c}.0/24"), st.integers(0, 12)),
)
macs = st.one_of(
    st.sampled_from(["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01", "02:AA:00:00:00:01",
                     stable_mac("c", "h1", "vxlan")]),
    st.builds(lambda n: f"02:00:00:00:00:{n:02x}", st.integers(0, 8)),
)
records = st.builds(
    lambda name, addr, sub, key, mac, created, same_key: HostRecord(
        name, addr, sub, {"vtep_mac": mac}, key=sub if same_key else key, created=created),
    st.sampled_from(["h1", "h2", "h3", "h4", "evil", "bad name"]), addresses, subnets, subnets, macs,
    st.integers(0, 50), st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=12))
def test_no_selection_ever_contains_a_record_that_could_hurt(recs):
    by_key = {r.key: r for r in recs}
    sel = select_records(by_key, VIEW)
    assert set(sel.valid) | set(sel.rejected) == set(by_key)
    assert not set(sel.valid) & set(sel.rejected)
    valid = list(sel.valid.items())
    for key, r in valid:
        assert r.subnet == key and r.subnet.prefixlen == 24 and r.subnet.subnet_of(NET)
        assert not r.subnet.overlaps(VIEW.subnet) and not r.subnet.overlaps(UNDERLAY)
        assert not r.subnet.overlaps(IPv4Network("10.32.99.0/24"))
        a = r.address
        assert not (a.is_multicast or a.is_loopback or a.is_link_local or a.is_unspecified or a.is_reserved)
        assert a not in NET and a != VIEW.address and a not in (IPv4Address("10.56.0.0"), IPv4Address("10.56.15.255"))
        m = r.data["vtep_mac"]
        assert check_mac(m) is None and m not in VIEW.macs
        assert r.name != "h1"
    for i, (k1, r1) in enumerate(valid):
        for k2, r2 in valid[i + 1:]:
            assert not r1.subnet.overlaps(r2.subnet)
            assert r1.name != r2.name and r1.data["vtep_mac"] != r2.data["vtep_mac"]
    # every rejected record that passes on its own lost to a valid claimant at least as old
    for key, why in sel.rejected.items():
        if "older record" in why:
            r = by_key[key]
            rivals = [v for v in sel.valid.values() if v.subnet.overlaps(r.subnet) or v.name == r.name
                      or v.data["vtep_mac"] == r.data["vtep_mac"]]
            assert any((v.created or 1 << 62) <= (r.created or 1 << 62) for v in rivals)


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=10), st.randoms())
def test_the_selection_does_not_depend_on_arrival_order(recs, rnd):
    by_key = {r.key: r for r in recs}
    items = list(by_key.items())
    rnd.shuffle(items)
    assert select_records(dict(items), VIEW).valid.keys() == select_records(by_key, VIEW).valid.keys()


# ---- PeerBook: the live set as records come and go ----------------------------------------
def test_deleting_a_rejected_duplicate_keeps_the_valid_record_and_a_younger_claimant_takes_over():
    book = PeerBook()
    good = rec("h2", subnet="10.32.2.0/24", created=10)
    dup = rec("h2", subnet="10.32.3.0/24", created=20, mac="02:00:00:00:00:33")
    book.load([good])
    assert set(book.select(VIEW)) == {good.key}
    book.put(dup.key, dup)
    assert set(book.select(VIEW)) == {good.key} and book.rejected_total == 1
    book.delete(dup.key)
    assert set(book.select(VIEW)) == {good.key}
    book.put(dup.key, dup)
    book.select(VIEW)
    book.delete(good.key)  # the older one goes: the younger claimant becomes valid
    assert set(book.select(VIEW)) == {dup.key} and not book.rejected


def test_a_rejection_is_logged_and_counted_once(caplog):
    book = PeerBook()
    bad = rec("evil", address="10.57.9.9", subnet="10.56.0.0/20", key="10.32.202.0/24")
    book.load([bad])
    with caplog.at_level("WARNING", logger="crossnet.agent"):
        for _ in range(3):  # resyncs
            assert book.select(VIEW) == {}
    lines = [r.getMessage() for r in caplog.records if "rejected store record" in r.getMessage()]
    assert len(lines) == 1 and "10.32.202.0/24" in lines[0] and "subnet:" in lines[0]
    assert book.rejected_total == 1
    assert book.rejected_json() == [{"key": "10.32.202.0-24", "name": "evil",
                                     "reason": "subnet: 10.56.0.0/20 does not match its key 10.32.202.0/24"}]
    book.put(bad.key, None, "value: not valid JSON")  # changed: counted again
    assert book.select(VIEW) == {} and book.rejected_total == 2


def test_unreadable_values_are_rejected_not_dropped():
    book = PeerBook()
    key = IPv4Network("10.32.5.0/24")
    book.load([], {key: "value: bad"})
    assert book.select(VIEW) == {} and book.rejected == {key: "value: bad"}


# ---- the etcd store keeps the key apart from the value --------------------------------------
class FakeKV:
    def __init__(self, key, value, create_revision=1, mod_revision=1, lease=0):
        self.key, self.value = key, value
        self.create_revision, self.mod_revision, self.lease = create_revision, mod_revision, lease


class FakeClient:
    def __init__(self, kvs):
        self.kvs = kvs

    def range(self, key, prefix=False, **kw):
        return [kv for kv in self.kvs if kv.key.startswith(key)], 42

    def describe(self):
        return "fake"


def test_etcd_snapshot_files_records_under_their_key():
    evil = json.dumps({"name": "evil", "address": "10.57.9.9", "subnet": "10.56.0.0/20", "data": {}})
    good = json.dumps({"name": "h2", "address": "10.56.0.2", "subnet": "10.32.2.0/24", "data": {}})
    store = EtcdStore(FakeClient([
        FakeKV("/crossnet/subnets/10.32.202.0-24", evil.encode(), create_revision=7),
        FakeKV("/crossnet/subnets/10.32.2.0-24", good.encode(), create_revision=3),
        FakeKV("/crossnet/subnets/10.32.9.0-24", b"{not json", create_revision=9),
        FakeKV("/crossnet/subnets/garbage", good.encode()),
        FakeKV("/crossnet/subnets/10.32.8.0-24", json.dumps({"name": 5, "address": "x", "subnet": []}).encode()),
    ]))
    snap = store.snapshot()
    assert isinstance(snap, Snapshot)
    keys = {str(r.key): (r.name, str(r.subnet), r.created) for r in snap.hosts}
    assert keys == {"10.32.202.0/24": ("evil", "10.56.0.0/20", 7), "10.32.2.0/24": ("h2", "10.32.2.0/24", 3)}
    assert set(map(str, snap.invalid)) == {"10.32.9.0/24", "10.32.8.0/24"}
    book = PeerBook()
    book.load(snap.hosts, snap.invalid)
    assert list(book.select(VIEW)) == [IPv4Network("10.32.2.0/24")]
    assert len(book.rejected) == 3


# ---- published containers ---------------------------------------------------------------
def test_published_containers_are_kept_only_inside_their_hosts_valid_subnet():
    published = {
        "h2": [{"id": "a", "address": "10.32.2.5"}, {"id": "b", "address": "10.56.0.1"},
               {"id": "c", "address": "10.32.2.1"}, {"id": "d", "address": "10.32.2.255"}],
        "evil": [{"id": "x", "address": "10.32.202.5"}],
    }
    kept, dropped = filter_containers(published, {"h2": IPv4Network("10.32.2.0/24")})
    assert kept == {"h2": [{"id": "a", "address": "10.32.2.5"}]}
    assert dropped == 4


# ---- the static store's records take the same path ----------------------------------------
def test_static_store_records_are_filed_under_their_subnet_and_pass_the_validator(tmp_path):
    from crossnet.store.static import StaticStore

    f = tmp_path / "c.yaml"
    f.write_text("name: t7\nbackend: vxlan\nnetwork: 10.32.0.0/16\nhosts:\n"
                 "  - {name: a, address: 192.0.2.1}\n  - {name: b, address: 192.0.2.2}\n"
                 "  - {name: c, address: 192.0.2.3}\n  - {name: d, address: 192.0.2.255}\n")
    store = StaticStore(f)
    cfg = store.get_config()
    lease = store.acquire(cfg, "a", IPv4Address("192.0.2.1"), {})
    snap = store.snapshot()
    assert [(r.name, r.key, r.created) for r in snap.hosts] == [
        (r.name, r.subnet, i + 1) for i, r in enumerate(snap.hosts)]
    view = LocalView(cfg.network, cfg.subnet_len, "a", IPv4Address("192.0.2.1"), lease.subnet,
                     connected=(IPv4Network("192.0.2.0/24"),))
    book = PeerBook()
    book.load([r for r in snap.hosts if r.key != lease.subnet])
    assert sorted(r.name for r in book.select(view).values()) == ["b", "c"]
    assert [why for why in book.rejected.values()] == ["address: 192.0.2.255 is the broadcast address of 192.0.2.0/24"]


# ---- WireGuard public keys in a record's data (backend wireguard) ----------------------------
WG_A = "x" * 42 + "0="  # 32 bytes in base64 (44 characters)
WG_B = "y" * 42 + "0="


@pytest.mark.parametrize("bad", ["", "abc", "x" * 44, "!" * 43 + "=", 5, None, "x" * 40 + "0=="])
def test_a_malformed_wireguard_key_is_rejected(bad):
    assert check(rec(wireguard_key=bad)).startswith("data.wireguard_key ")


def test_a_good_wireguard_key_passes_and_a_second_claim_of_it_loses():
    assert check(rec(wireguard_key=WG_A)) is None
    old = rec("h2", subnet="10.32.2.0/24", created=3, wireguard_key=WG_A)
    young = rec("h3", address="10.56.0.3", subnet="10.32.3.0/24", created=9, wireguard_key=WG_A)
    other = rec("h4", address="10.56.0.4", subnet="10.32.4.0/24", created=11, wireguard_key=WG_B)
    sel = select_records({r.key: r for r in (young, other, old)}, VIEW)
    assert sorted(sel.valid) == [old.key, other.key]
    assert sel.rejected[young.key].startswith("data.wireguard_key: already claimed by the older record 10.32.2.0/24")


def test_what_the_backend_says_a_peer_takes_is_kept_by_the_older_record():
    # e.g. OVS: "worker-node-0001"'s tunnel port is gre-<8 hex of its sha1>, the port of a
    # peer named with those 8 hex digits: one port, and the younger host would get the traffic
    view = LocalView(**{**VIEW.__dict__, "claims": lambda r: ["port gre-x"] if r.name in ("h2", "h3") else []})
    old = rec("h2", subnet="10.32.2.0/24", created=3)
    young = rec("h3", address="10.56.0.3", subnet="10.32.3.0/24", created=9)
    other = rec("h4", address="10.56.0.4", subnet="10.32.4.0/24", created=11)
    for order in ((young, other, old), (old, young, other)):
        sel = select_records({r.key: r for r in order}, view)
        assert sorted(sel.valid) == [old.key, other.key]
        assert sel.rejected == {young.key: "name: h3 needs the port gre-x, already claimed by the older record 10.32.2.0/24"}


def test_another_spelling_of_an_older_records_wireguard_key_loses_too():
    # "x...x1=" decodes to the same 32 bytes as WG_A ("x...x0="): the same WireGuard peer in
    # the kernel, so the younger record would take over the older host's traffic
    alias = WG_A[:42] + "1="
    old = rec("h2", subnet="10.32.2.0/24", created=3, wireguard_key=WG_A)
    young = rec("h3", address="10.56.0.3", subnet="10.32.3.0/24", created=9, wireguard_key=alias)
    sel = select_records({r.key: r for r in (young, old)}, VIEW)
    assert sorted(sel.valid) == [old.key]
    assert sel.rejected[young.key] == ("data.wireguard_key is not the canonical base64 of its 32 bytes "
                                       "(as `crossnet keygen` prints it)")


def test_a_record_with_this_hosts_own_wireguard_key_is_rejected():
    # the kernel ignores a peer with the interface's own public key: the record's subnet
    # would never be reachable and the peer would read back as drift on every sync
    view = LocalView(**{**VIEW.__dict__, "macs": VIEW.macs | {WG_A}})
    assert check(rec(wireguard_key=WG_A), view) == "data.wireguard_key: this host's own WireGuard public key"
    assert check(rec(wireguard_key=WG_B), view) is None


def test_unknown_keys_of_a_records_data_are_dropped_when_it_is_read():
    """A record's `data` keeps only what crossnet reads (DATA_KEYS): anything else a store
    writer adds never reaches the agent's peers, applied.json or its status."""
    from crossnet.store import DATA_KEYS

    mac = stable_mac("c", "h2", "vxlan")
    raw = {"name": "h2", "address": "10.56.0.2", "subnet": "10.32.2.0/24",
           "data": {"vtep_mac": mac, "junk": "x" * 4096, "nested": {"a": [1, 2]}, "gw_mac": "02:00:00:00:00:09"}}
    rec = HostRecord.from_json(raw)
    assert rec.data == {"vtep_mac": mac, "gw_mac": "02:00:00:00:00:09"}
    assert rec.to_json()["data"] == rec.data
    assert set(DATA_KEYS) == {"vtep_mac", "gw_mac", "wireguard_key"}


@pytest.mark.parametrize("name", ["bridge", "host-gw", "vxlan", "ovs-gre", "ovs-vxlan", "wireguard", "auto"])
def test_every_key_a_backend_publishes_is_a_data_key(name, tmp_path):
    """What a backend publishes (host_data, local_data) survives the reading of its record."""
    from crossnet.backends import get_backend
    from crossnet.store import DATA_KEYS

    b = get_backend(name)
    published = {**b.host_data("c", "h1", IPv4Address("10.56.0.1")), **b.local_data(str(tmp_path), create=True)}
    assert set(published) <= set(DATA_KEYS)
    rec = HostRecord.from_json({"name": "h1", "address": "10.56.0.1", "subnet": "10.32.1.0/24", "data": published})
    assert rec.data == published
