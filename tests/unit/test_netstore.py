"""Named networks under a store (docs/networks.md, "Under a store"): the store's config
carries them (validated like the cluster file's; a hostile record is refused with one
line), the peer records list each host's subnet per network (validated before the
kernel), etcd leases one subnet per host and network (real etcd), and the agent
programs every network through program_host(networks=…) on a fake kernel, follows a
network added or removed in the store, and keeps one that still has containers."""

from __future__ import annotations

import json
import uuid
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.agent.core import Agent, AgentOptions
from crossnet.errors import ConfigError
from crossnet.netstore import pin_vnis
from crossnet.plan.resources import NftTable
from crossnet.state import StateDir
from crossnet.store import HostRecord, NetworkConfig, StoreError
from crossnet.store.records import LocalView, select_records
from tests.unit.fakekernel import FakeKernel, install, machine
from tests.unit.fakestore import MemoryStore
from tests.unit.test_agent_sync import (
    start,  # the agent up to "ready" on the fake kernel
)

BLUE = {"name": "blue", "network": "10.33.0.0/16"}
RED = {"name": "red", "network": "10.34.0.0/16"}


def config(nets=(BLUE,), **kw) -> NetworkConfig:
    return NetworkConfig(**{"network": "10.32.0.0/16", "backend": "vxlan", "name": "c", "ttl": 10,
                            "networks": list(nets), **kw})


# ---------------------------------------------------------------- the config


def test_config_round_trips_and_a_config_without_networks_reads_as_before():
    cfg = config([BLUE, {**RED, "subnet_len": 26, "vni": 77, "bridge": "rednet"}])
    data = cfg.to_json()
    assert data["networks"] == [BLUE, {**RED, "subnet_len": 26, "vni": 77, "bridge": "rednet"}]
    again = NetworkConfig.from_json(json.loads(json.dumps(data)))
    assert again.to_json() == data and [again.network_vni(i) for i in (0, 1)] == [2, 77]
    assert "networks" not in config([]).to_json()


@pytest.mark.parametrize("nets,kw,field,why", [
    ([{"name": "Blue!", "network": "10.33.0.0/16"}], {}, "networks[0].name", "must match"),
    ([{"name": "default", "network": "10.33.0.0/16"}], {}, "networks[0].name", "top-level network"),
    ([{"name": "blue", "network": "10.32.128.0/17"}], {}, "networks[0].network", "overlaps network 10.32.0.0/16"),
    ([BLUE, {"name": "red", "network": "10.33.4.0/24"}], {}, "networks[1].network", "overlaps networks[0].network"),
    ([BLUE, {**RED, "name": "blue"}], {}, "networks[1].name", "duplicate network name"),
    ([{**BLUE, "vni": 1}], {}, "networks[0].vni", "VNI 1 is already vxlan.vni's"),
    ([BLUE, {**RED, "vni": 2}], {}, "networks[1].vni", "VNI 2 is already networks[0].vni's"),
    ([{**BLUE, "bridge": "cn0"}], {}, "networks[0].bridge", "bridge cn0 is already bridge"),
    ([{**BLUE, "bridge": "cnvx5"}], {}, "networks[0].bridge", "choose another bridge name"),
    ([{**BLUE, "subnet_len": 8}], {}, "networks[0].subnet_len", "must be longer"),
    ([{**BLUE, "wireguard_port": 51820}], {"backend": "wireguard"}, "networks[0].wireguard_port",
     "port 51820 is already wireguard.port's"),
    ([{**BLUE, "wireguard_port": 70000}], {"backend": "auto"}, "networks[0].wireguard_port", "out of range"),
    ([{**BLUE, "wireguard_port": 5000}], {}, "networks[0].wireguard_port", "backend vxlan makes no WireGuard"),
    ([{**BLUE, "vni": 9}], {"backend": "wireguard", "wireguard": {"device": "cnwg9"}}, "networks[0].vni",
     "WireGuard device cnwg9 (cnwg<VNI>) is already wireguard.device"),
    ([{"name": f"n{i}", "network": f"10.{100 + i}.0.0/16"} for i in range(65)], {}, "networks",
     "a store carries at most 64"),
    ([{**BLUE, "colour": 1}], {}, "networks[0].colour", "unknown key"),
])
def test_a_hostile_config_record_is_refused_with_one_line(nets, kw, field, why):
    data = {**config([]).to_json(), **kw, "networks": nets}
    with pytest.raises(ConfigError) as err:
        NetworkConfig.from_json(data, source="etcd /crossnet/config")
    msg = str(err.value)
    assert msg.startswith("etcd /crossnet/config: ") and f"{field}: " in msg and why in msg and "\n" not in msg


CIDRS = [f"10.{a}.0.0/{p}" for a in (32, 33, 34, 35) for p in (15, 16)] + ["10.33.128.0/17"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "blue"]), st.sampled_from(CIDRS),
                          st.one_of(st.none(), st.integers(1, 6))), max_size=4))
def test_an_accepted_config_has_disjoint_networks_and_distinct_vnis(entries):
    nets = [{"name": n, "network": c, **({"vni": v} if v else {})} for n, c, v in entries]
    try:
        cfg = config(nets)
    except ConfigError as exc:
        assert "\n" not in str(exc) and "networks[" in str(exc)
        return
    cidrs = [cfg.network] + [n.network for n in cfg.networks]
    assert all(not a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:])
    vnis = [cfg.vxlan.vni] + [cfg.network_vni(i) for i in range(len(cfg.networks))]
    assert len(set(vnis)) == len(vnis) and len({n.name for n in cfg.networks}) == len(cfg.networks)
    assert NetworkConfig.from_json(cfg.to_json()).to_json() == cfg.to_json()


def test_vnis_are_written_out_and_a_network_keeps_its_own():
    first = pin_vnis(config([BLUE, RED]), None)
    assert [n.vni for n in first.networks] == [2, 3] and first.to_json()["networks"][1]["vni"] == 3
    # blue removed, green added before red: red keeps 3, green takes the lowest free
    again = pin_vnis(config([{"name": "green", "network": "10.35.0.0/16"}, RED]), first)
    assert [(n.name, n.vni) for n in again.networks] == [("green", 2), ("red", 3)]
    # a VNI given wins
    given = pin_vnis(config([{**BLUE, "vni": 9}, RED]), first)
    assert [(n.name, n.vni) for n in given.networks] == [("blue", 9), ("red", 3)]


# ---------------------------------------------------------------- the peer records


def rec(name, subnet, nets, created, address=None) -> HostRecord:
    addr = IPv4Address(address or f"192.168.9.{created + 10}")
    return HostRecord(name, addr, IPv4Network(subnet), {}, key=IPv4Network(subnet), created=created,
                      networks={k: IPv4Network(v) for k, v in nets.items()})


def view(own_blue="10.33.1.0/24") -> LocalView:
    return LocalView(IPv4Network("10.32.0.0/16"), 24, "h1", IPv4Address("192.168.9.1"), IPv4Network("10.32.1.0/24"),
                     networks={"blue": (IPv4Network("10.33.0.0/16"), 24, IPv4Network(own_blue))})


def test_record_networks_round_trip_and_hostile_values_make_the_record_unreadable():
    r = rec("h2", "10.32.2.0/24", {"blue": "10.33.2.0/24"}, 1)
    assert HostRecord.from_json(r.to_json()).networks == r.networks
    assert "networks" not in rec("h2", "10.32.2.0/24", {}, 1).to_json()  # old records unchanged
    for bad in ({"Blue": "10.33.2.0/24"}, {"blue": "nope"}, {"blue": 5}, ["blue"],
                {f"n{i}": "10.33.2.0/24" for i in range(65)}):
        with pytest.raises(StoreError, match="bad host record"):
            HostRecord.from_json({**r.to_json(), "networks": bad})


def test_peer_subnets_per_network_are_validated_and_the_older_claim_wins():
    records = {r.key: r for r in [
        rec("h2", "10.32.2.0/24", {"blue": "10.33.2.0/24"}, 1),
        rec("h3", "10.32.3.0/24", {"blue": "10.33.2.0/24"}, 2),  # h2's blue subnet: younger, refused
        rec("h4", "10.32.4.0/24", {"blue": "10.34.4.0/24"}, 3),  # outside blue
        rec("h5", "10.32.5.0/24", {"blue": "10.33.5.0/25"}, 4),  # not a /24
        rec("h6", "10.32.6.0/24", {"blue": "10.33.1.0/24"}, 5),  # this host's blue subnet
        rec("h7", "10.32.7.0/24", {"green": "10.99.0.0/24"}, 6),  # a network this host does not know (yet)
    ]}
    sel = select_records(records, view())
    assert sorted(r.name for r in sel.valid.values()) == ["h2", "h7"]
    why = {records[k].name: v for k, v in sel.rejected.items()}
    assert "networks.blue: 10.33.2.0/24 is already claimed by the older record 10.32.2.0/24" in why["h3"]
    assert "not a /24 inside network blue's 10.33.0.0/16" in why["h4"] and "not a /24" in why["h5"]
    assert "this host's subnet of network blue" in why["h6"]


# ---------------------------------------------------------------- leases (real etcd)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    from crossnet.lab.etcdserver import EtcdServer, etcd_available

    if not etcd_available():
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    srv = EtcdServer.on_free_ports(tmp_path_factory.mktemp("etcd"), name="netstore")
    yield srv
    srv.stop()


@pytest.fixture
def store(etcd):
    from crossnet.store.etcd import EtcdStore

    s = EtcdStore.connect(etcd.url, f"/ns-{uuid.uuid4().hex[:8]}", timeout=3)
    yield s
    s.close()


def test_one_lease_per_host_and_network_kept_across_restarts(store):
    cfg = config([BLUE, RED])
    store.init_config(cfg)
    a = store.acquire(cfg, "h1", IPv4Address("192.168.9.1"), {})
    b = store.acquire(cfg, "h2", IPv4Address("192.168.9.2"), {})
    assert a.record.networks == {"blue": IPv4Network("10.33.0.0/24"), "red": IPv4Network("10.34.0.0/24")}
    assert b.record.networks == {"blue": IPv4Network("10.33.1.0/24"), "red": IPv4Network("10.34.1.0/24")}
    kvs, _ = store.client.range(store.networks_prefix, prefix=True)
    assert {kv.key.removeprefix(store.networks_prefix): kv.lease for kv in kvs} == {
        "blue/10.33.0.0-24": a.lease_id, "red/10.34.0.0-24": a.lease_id,
        "blue/10.33.1.0-24": b.lease_id, "red/10.34.1.0-24": b.lease_id}  # the same TTL-bound lease
    snap = {r.name: r.networks for r in store.snapshot().hosts}
    assert snap == {"h1": a.record.networks, "h2": b.record.networks}  # in the peer records
    # a restart with the lease still alive: the same subnets, nothing rewritten
    again = store.acquire(cfg, "h1", IPv4Address("192.168.9.1"), {}, previous=a.subnet, previous_lease=a.lease_id)
    assert again.record.networks == a.record.networks and again.record.revision == a.record.revision
    # the lease expired (revoked here): back with a new lease, the same subnets (remembered)
    store.client.lease_revoke(a.lease_id)
    c = store.acquire(cfg, "h3", IPv4Address("192.168.9.3"), {})
    back = store.acquire(cfg, "h1", IPv4Address("192.168.9.1"), {})
    assert back.lease_id != a.lease_id and back.record.networks == a.record.networks
    assert c.record.networks["blue"] == IPv4Network("10.33.2.0/24")
    # a network removed from the config: its subnet key is given back
    store.acquire(config([BLUE]), "h1", IPv4Address("192.168.9.1"), {}, previous=back.subnet,
                  previous_lease=back.lease_id)
    kvs, _ = store.client.range(store.networks_prefix + "red/", prefix=True)
    assert sorted(json.loads(kv.value)["name"] for kv in kvs) == ["h2", "h3"]


def test_a_hostile_config_in_etcd_is_refused_with_one_line(store):
    store.client.put(store.config_key, json.dumps({**config([]).to_json(), "networks": [BLUE, {**RED, "vni": 2}]}))
    with pytest.raises(StoreError, match=r"^etcd /ns-\w+/config: networks\[1\]\.vni: VNI 2 is already"):
        store.get_config()


# ---------------------------------------------------------------- the agent (fake kernel)


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> FakeKernel:
    k = machine()
    install(monkeypatch, k, tmp_path)
    tables: dict[str, str] = {}  # nft tables, in memory (never the machine's)
    monkeypatch.setattr(NftTable, "check", lambda self, env: tables.get(self.key()) == self.body)
    monkeypatch.setattr(NftTable, "ensure", lambda self, env: tables.__setitem__(self.key(), self.body))
    monkeypatch.setattr(NftTable, "remove", lambda self, env: tables.pop(self.key(), None))
    k.nft = tables  # type: ignore[attr-defined]
    return k


def routes(kernel: FakeKernel) -> set[str]:
    return {r.dst for r in kernel.routes if r.proto != 2}


def test_agent_programs_every_network_and_follows_the_store(kernel, tmp_path):
    store = MemoryStore(config([BLUE], backend="host-gw"))
    store.join("h2", "10.56.0.2", "10.32.2.0/24", networks={"blue": "10.33.2.0/24"})
    a = start(store, kernel, tmp_path)
    assert a.lease.record.networks == {"blue": IPv4Network("10.33.0.0/24")}
    assert {"cn0", "cn-blue"} <= set(kernel.links) and {"10.32.2.0/24", "10.33.2.0/24"} <= routes(kernel)
    assert "nft:inet:crossnet_iso" in kernel.nft and "cn-blue" in kernel.nft["nft:inet:crossnet_iso"]
    blue = StateDir(a.state.root / "networks" / "blue")
    assert json.loads(blue.applied_path.read_text())["context"]["subnet"] == "10.33.0.0/24"
    assert a.state.load_applied()["networks"]["blue"]["bridge"] == "cn-blue"  # what `status` shows
    assert a.info()["networks"]["blue"] == {"network": "10.33.0.0/16", "subnet": "10.33.0.0/24", "bridge": "cn-blue",
                                           "vni": 2, "peers": 1, "kept": False}
    # a peer joins: its subnets of both networks are routed
    store.join("h3", "10.56.0.3", "10.32.3.0/24", networks={"blue": "10.33.3.0/24"})
    a._handle(("events", store.events_since(a.revision)))
    assert {"10.32.3.0/24", "10.33.3.0/24"} <= routes(kernel)
    # a network added to the store: leased and programmed, the others untouched
    kernel.log.clear()
    store.cfg = pin_vnis(config([BLUE, RED], backend="host-gw"), store.cfg)  # what `etcd init --force` writes
    assert a.follow_config(store.cfg)
    a._resync()
    assert "cn-red" in kernel.links and a.lease.record.networks["red"] == IPv4Network("10.34.0.0/24")
    assert not [w for _, w in kernel.log if "cn0" in w or "cn-blue" in w or "10.33." in w], kernel.log
    assert (a.state.root / "networks" / "red" / "applied.json").exists()
    # blue removed while a container is attached to it: kept, and said so
    pool_path = tmp_path / "netns"
    pool_path.write_text("")
    from crossnet import containers

    ctx = a.nets["blue"]
    containers.pool_for(blue, ctx).allocate("c1", meta={"netns": str(pool_path), "host_if": "eth0"})
    store.cfg = pin_vnis(config([RED], backend="host-gw"), store.cfg)
    assert store.cfg.networks[0].vni == 3  # red keeps its VNI
    a.follow_config(store.cfg)
    a._resync()
    assert "cn-blue" in kernel.links and a.kept_networks == ["blue"] and a.info()["networks"]["blue"]["kept"]
    # once detached, the next resync removes it (devices, routes, state dir); red stays
    containers.pool_for(blue, ctx).release("c1")
    a._resync()
    assert "cn-blue" not in kernel.links and "cn-red" in kernel.links and not blue.root.exists()
    assert "10.33.3.0/24" not in routes(kernel) and a.kept_networks == []
    assert "nft:inet:crossnet_iso" in kernel.nft and "cn-blue" not in kernel.nft["nft:inet:crossnet_iso"]


def test_agent_refuses_a_network_containing_its_address(kernel, tmp_path):
    store = MemoryStore(config([{"name": "blue", "network": "10.56.0.0/16"}]))
    a = Agent(store, StateDir(tmp_path / "state"), AgentOptions(name="h1", api=False))
    a.name, a.address, a.iface = "h1", IPv4Address("10.56.0.1"), "eth0"
    with pytest.raises(StoreError, match="networks: network blue 10.56.0.0/16 contains this host's underlay address"):
        a._load_config()


def test_a_config_change_beyond_its_networks_changes_nothing_but_the_networks(kernel, tmp_path):
    """Only the networks are followed live: a new cluster name (it derives the VTEP MACs)
    or VNI in the store is reported, never taken -- not at the first change, nor at the next."""
    store = MemoryStore(pin_vnis(config([BLUE]), None))
    a = start(store, kernel, tmp_path)
    data = dict(a.lease.record.data)
    for nets in ([BLUE, RED], [RED]):
        store.cfg = pin_vnis(config(nets, name="other", vxlan={"vni": 7}), store.cfg)
        assert a.follow_config(store.cfg)
        assert a.cfg.name == "c" and a.cfg.vxlan.vni == 1 and a.lease.record.data == data
        assert "only those are followed" in a.health["config"]
    assert [n.name for n in a.cfg.networks] == ["red"]


def test_a_change_of_the_networks_only_is_not_reported_as_more(kernel, tmp_path):
    """`etcd init --force` writes every WireGuard setting it has (their defaults) where
    the first config had none: the same settings, another JSON. Only the networks
    changed, so nothing is reported (health ``config`` stays clear)."""
    store = MemoryStore(pin_vnis(config([BLUE]), None))  # no "wireguard" key, like `lab up --store etcd`
    a = start(store, kernel, tmp_path)
    as_init_writes = {**config([]).to_json(), "wireguard": {"port": 51820, "keepalive": 0}, "networks": [BLUE, RED]}
    store.cfg = pin_vnis(NetworkConfig.from_json(as_init_writes), store.cfg)
    assert store.cfg.to_json()["wireguard"] != a.store_cfg.to_json().get("wireguard")  # the JSON differs
    assert a.follow_config(store.cfg)
    assert a.health["config"] is None and [n.name for n in a.cfg.networks] == ["blue", "red"]
    # a real change beyond the networks (a WireGuard port) is still reported, and not taken
    store.cfg = pin_vnis(NetworkConfig.from_json({**as_init_writes, "wireguard": {"port": 51000}}), store.cfg)
    assert not a.follow_config(store.cfg)
    assert "only those are followed" in a.health["config"] and a.cfg.wireguard.port == 51820


def test_a_hostile_config_at_run_time_changes_nothing(kernel, tmp_path):
    store = MemoryStore(pin_vnis(config([BLUE]), None))
    a = start(store, kernel, tmp_path)
    links, nets = set(kernel.links), dict(a.lease.record.networks)

    def hostile():
        raise StoreError("etcd /crossnet/config: networks[1].network: 10.33.0.0/16 overlaps networks[0].network")

    store.get_config = hostile
    a._handle(("config",))
    assert "overlaps" in a.health["config"] and set(kernel.links) == links and a.lease.record.networks == nets
    assert [n.name for n in a.cfg.networks] == ["blue"]


def test_a_network_that_could_not_be_leased_is_retried_at_the_next_resync(kernel, tmp_path):
    store = MemoryStore(pin_vnis(config([BLUE]), None))
    a = start(store, kernel, tmp_path)
    new = pin_vnis(config([BLUE, RED]), store.cfg)
    store.unavailable = True  # etcd down while the change arrives
    assert not a.follow_config(new)
    assert a.config_pending is new and [n.name for n in a.cfg.networks] == ["blue"] and "retrying" in a.health["config"]
    store.unavailable = False
    store.cfg = new
    a._resync()
    assert "cn-red" in kernel.links and a.config_pending is None and a.health["config"] is None


def test_a_store_networks_masquerade_follows_its_own_field_else_the_top_level_one(kernel, tmp_path):
    """Under a store as in a cluster file (networks.named_settings, the one rule): a named
    network's `masquerade:` wins, unset it takes the top-level one."""
    store = MemoryStore(config([{**BLUE, "masquerade": True}, RED], backend="host-gw", masquerade=False))
    a = start(store, kernel, tmp_path)
    assert a.nets["blue"].masquerade is True and a.nets["red"].masquerade is False
    nat = kernel.nft.get("nft:ip:crossnet_nat", "")
    assert "10.33.0.0/24" in nat and "10.34." not in nat


# ---------------------------------------------------------------- helper mode (crossnet launch's process)
def test_the_agent_in_helper_mode_follows_networks_as_with_the_model(kernel, tmp_path, helper_mode, monkeypatch):
    """`crossnet launch`'s process validates its configs in crossnet.netconfig's helper and
    holds views: the same agent, the same kernel state (networks added, kept, removed)."""
    from crossnet import helper

    calls, real = [], helper.run

    def counted(module, request, *args, **kw):
        calls.append(request["op"])
        return real(module, request, *args, **kw)

    monkeypatch.setattr(helper, "run", counted)
    test_agent_programs_every_network_and_follows_the_store(kernel, tmp_path)
    assert "build" in calls  # the effective configs (networks followed, kept) came from the helper


def test_the_etcd_store_in_helper_mode_reads_the_same_config_and_a_failed_helper_is_retryable(
        store, helper_mode, monkeypatch):
    from crossnet import helper
    from crossnet.errors import CrossnetError
    from crossnet.netview import NetworkConfigView

    want = pin_vnis(config([BLUE, RED], wireguard={"port": 5000}), None)
    store.init_config(want)
    got = store.get_config()
    assert isinstance(got, NetworkConfigView) and got.to_json() == want.to_json()
    assert store.init_config(want) == "unchanged"

    def broken(*a, **kw):
        raise CrossnetError("network config helper failed (exit -9): ")

    monkeypatch.setattr(helper, "run", broken)
    with pytest.raises(StoreError, match=r"^etcd /ns-\w+/config: network config helper failed"):
        store.get_config()  # StoreError: the agent retries it


def test_a_failed_helper_while_following_is_reported_and_taken_at_the_next_resync(kernel, tmp_path, helper_mode,
                                                                                 monkeypatch):
    from crossnet import helper
    from crossnet.errors import CrossnetError

    store = MemoryStore(config([BLUE], backend="host-gw"))
    a = start(store, kernel, tmp_path)
    new = pin_vnis(config([BLUE, RED], backend="host-gw"), store.cfg)
    real = helper.run

    def killed(*args, **kw):
        raise CrossnetError("helper killed")

    monkeypatch.setattr(helper, "run", killed)
    assert not a.follow_config(new)
    assert a.health["config"] == "helper killed" and a.config_pending is new and "cn-red" not in kernel.links
    monkeypatch.setattr(helper, "run", real)
    a._resync()
    assert a.config_pending is None and a.health["config"] is None and "cn-red" in kernel.links
