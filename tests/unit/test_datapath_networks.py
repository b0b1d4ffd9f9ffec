"""`datapath: ebpf` with named networks and with backend auto (docs/datapath.md,
docs/networks.md), without a kernel: validation accepts them, every network's resources
are routed (no bridge) with ONE set of programs whose configuration holds every network
after every vxlan device, the isolation tables match routed veths, the configuration map
is written slot by slot (fake map), auto's programs leave its WireGuard devices alone, with
one network or several.
The kernel side: tests/e2e/test_datapath_networks.py."""

from __future__ import annotations

import contextlib
import ipaddress
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import datapath, netiso, networks, program
from crossnet.backends.base import HostContext
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.ebpf import build, maps
from crossnet.ebpf import host as ebpf_host
from crossnet.errors import ApplyError
from crossnet.plan.resources import Address, Bridge, Resource, Vxlan
from crossnet.store import NetworkConfig
from crossnet.wg.resources import WgDevice


from tests.unit.test_backend_resources import NoKernel, cluster_file, key, nic  # noqa: F401 - nic: autouse fixture
from crossnet.backends import get_backend
from crossnet.host import build_context

BLUE, RED = "10.40.0.0/16", "10.41.0.0/16"


@pytest.fixture
def programs(monkeypatch, tmp_path):
    """This host can run the programs (crossnet.ebpf.problem says None), from a fake object."""
    from crossnet import ebpf

    monkeypatch.setattr(ebpf, "problem", lambda: None)
    monkeypatch.setattr(datapath, "_why_not", {})
    obj = tmp_path / "crossnet_tc.o"
    obj.write_bytes(b"an object")
    monkeypatch.setattr(build, "find_object", lambda build=True: (obj, None))
    monkeypatch.setattr(ebpf_host, "loaded", lambda state_dir: False)
    return obj


def with_networks(backend: str, *nets: str, **extra):
    doc = cluster_file(backend, datapath="ebpf", **extra)
    doc["networks"] = [{"name": n, "network": cidr} for n, cidr in zip(("blue", "red"), nets)]
    cluster = parse_cluster(doc)
    b = get_backend(backend)
    ctx = build_context(cluster, "h1", NoKernel(), b, state_dir="/var/lib/crossnet-test")
    return ctx, b, networks.contexts(cluster, ctx, b)


def desired(ctx, b, nets) -> list[Resource]:
    return program.desired_resources(ctx, b, program.network_resources(ctx, b, nets))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_ebpf_with_networks_is_accepted(backend):
    doc = cluster_file(backend, datapath="ebpf", networks=[{"name": "blue", "network": BLUE}])
    assert parse_cluster(doc).datapath == "ebpf"
    cfg = NetworkConfig(network="10.32.0.0/16", backend=backend, datapath="ebpf",
                        networks=[{"name": "blue", "network": BLUE}])
    assert NetworkConfig.from_json(cfg.to_json()).datapath == "ebpf"


def test_ebpf_with_auto_is_accepted():
    doc = cluster_file("auto", datapath="ebpf")
    for i, h in enumerate(doc["hosts"]):
        h["wireguard_key"] = key(i + 1)
    assert parse_cluster(doc).datapath == "ebpf"
    assert NetworkConfig(network="10.32.0.0/16", backend="auto", datapath="ebpf").datapath == "ebpf"


# ---------------------------------------------------------------- resources per network


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_every_network_is_routed_and_shares_one_program_set(programs, backend):
    ctx, b, nets = with_networks(backend, BLUE, RED)
    res = desired(ctx, b, nets)
    assert not [r for r in res if isinstance(r, Bridge)]
    los = [r.cidr for r in res if isinstance(r, Address) and r.dev == "lo"]
    assert los == ["10.32.0.1/32", "10.40.0.1/32", "10.41.0.1/32"]  # each network's gateway, routed
    assert len({r.key() for r in res}) == len(res)  # no resource twice
    (loads,) = [r for r in res if isinstance(r, ebpf_host.BpfPrograms)]
    (cfg,) = [r for r in res if isinstance(r, ebpf_host.BpfConfig)]
    vx = {"vxlan": ["cnvx1", "cnvx2", "cnvx3"], "host-gw": [None, None, None]}[backend]
    vnis = {"vxlan": [1, 2, 3], "host-gw": [0, 0, 0]}[backend]  # each network's vxlan device's VNI
    assert [(str(n), v, i) for n, v, i in cfg.entries()] == list(zip(["10.32.0.0/16", BLUE, RED], vx, vnis))
    # backend vxlan: the programs make and take apart VXLAN frames themselves (docs/datapath.md)
    assert (cfg.local, cfg.port) == ((str(ctx.address), 4789) if backend == "vxlan" else (None, 0))
    vteps = sorted((r.dev, r.nexthop, r.underlay) for r in res if isinstance(r, ebpf_host.BpfVtep))
    want = sorted((dev, str(p.subnet.network_address), str(p.address))
                  for dev, n in zip(("cnvx1", "cnvx2", "cnvx3"), [ctx, *nets.values()]) for p in n.peers)
    assert want and vteps == (want if backend == "vxlan" else [])  # one per peer of each network: the device's FDB + neighbour
    devices = [i for i, r in enumerate(res) if isinstance(r, Vxlan)]
    assert res.index(cfg) > max(devices, default=-1)  # every device exists before its ifindex is written
    tcs = [r for r in res if isinstance(r, ebpf_host.TcProgram)]
    # the NIC: host-gw's packets, vxlan's frames the program takes apart; each vxlan device: what it decapsulated
    assert sorted(t.dev for t in tcs) == sorted(["eth0", *(v for v in vx if v)])
    assert all(t.program == "cn_to_container" and t.pin_dir == loads.pin_dir == cfg.pin_dir for t in tcs)
    assert res.index(loads) < min(res.index(t) for t in tcs)
    assert [Resource.from_json(r.to_json()) for r in res] == res  # applied.json round trip


def test_one_network_keeps_its_resources_as_they_were(programs):
    ctx, b, nets = with_networks("vxlan")
    assert nets == {}
    res = desired(ctx, b, nets)
    (cfg,) = [r for r in res if isinstance(r, ebpf_host.BpfConfig)]
    assert cfg.more == [] and cfg.network == "10.32.0.0/16" and cfg.vxlan == "cnvx1"
    assert datapath.one_program_set(res) is res


def test_the_named_networks_records_carry_the_datapath(programs):
    _, _, nets = with_networks("host-gw", BLUE)
    blue = HostContext.from_json(nets["blue"].to_json())  # what attach --network blue reads
    assert datapath.routed(blue) and blue.state_dir == "/var/lib/crossnet-test"  # the host's one pin dir


def test_dry_run_names_every_slot(programs):
    ctx, b, nets = with_networks("vxlan", BLUE)
    (cfg,) = [r for r in desired(ctx, b, nets) if isinstance(r, ebpf_host.BpfConfig)]
    text = cfg.describe()
    assert "key hex 00 00 00 00" in text and "key hex 01 00 00 00" in text
    assert "<ifindex of cnvx2, 4 bytes little endian>" in text and f"# {BLUE}" in text


@pytest.mark.parametrize("more", [[["10.40.0.0/99", None]], [["10.40.0.0/16", "bad name!"]], [["x"]], "blue",
                                  [[BLUE, None]] * maps.MAX_NETWORKS])
def test_a_hostile_record_is_refused_before_the_map(more):
    cfg = ebpf_host.BpfConfig("/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef", "10.32.0.0/16", "eth0",
                              None, more)
    with pytest.raises(ApplyError, match="ebpf: "):
        cfg.entries()


# ---------------------------------------------------------------- the configuration map (fake)


class FakeEnv:
    ipr = None
    index_of = {"eth0": 2, "cnvx1": 5, "cnvx2": 6, "cnvx3": 7}

    def require_index(self, name: str) -> int:
        return self.index_of[name]


@pytest.fixture
def fake_map(monkeypatch):
    cells: dict[bytes, bytes] = {}

    @contextlib.contextmanager
    def pinned(path):
        yield 99

    monkeypatch.setattr(ebpf_host, "_pinned", pinned)
    monkeypatch.setattr(ebpf_host.bpfsys, "map_lookup", lambda fd, k, size: cells.get(k))
    monkeypatch.setattr(ebpf_host.bpfsys, "map_update", lambda fd, k, v: cells.__setitem__(k, v))
    monkeypatch.setattr(ebpf_host, "prune_veths", lambda ipr, d: None)
    monkeypatch.setattr(ebpf_host, "prune_vteps", lambda d, devices: None)
    return cells


def read_slots(cells) -> list[maps.Config]:
    out = []
    for slot in range(maps.MAX_NETWORKS):
        raw = cells.get(maps.config_key(slot))
        if raw is None or raw == maps.EMPTY_CONFIG:
            break
        out.append(maps.Config.unpack(raw))
    return out


PIN = "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef"


def test_config_holds_every_network_and_ends_the_list_when_one_goes(fake_map):
    env = FakeEnv()
    three = ebpf_host.BpfConfig(PIN, "10.32.0.0/16", "eth0", "cnvx1", [[BLUE, "cnvx2"], [RED, "cnvx3"]])
    assert not three.check(env)
    three.ensure(env)
    assert three.check(env)
    assert read_slots(fake_map) == [maps.Config(IPv4Network("10.32.0.0/16"), 2, 5), maps.Config(IPv4Network(BLUE), 2, 6),
                                    maps.Config(IPv4Network(RED), 2, 7)]
    two = ebpf_host.BpfConfig(PIN, "10.32.0.0/16", "eth0", "cnvx1", [[RED, "cnvx3"]])  # blue removed
    assert not two.check(env)
    two.ensure(env)
    assert two.check(env) and not three.check(env)
    assert [c.network for c in read_slots(fake_map)] == [IPv4Network("10.32.0.0/16"), IPv4Network(RED)]
    assert fake_map[maps.config_key(2)] == maps.EMPTY_CONFIG  # the program's loop stops there


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=1, max_size=8, unique=True))
def test_network_of_a_destination_as_the_program_finds_it(seconds):
    """The program's lookup (network_of in crossnet_tc.c: the first slot containing the
    destination, up to the first empty one), replayed on the packed slots: every
    container address maps to its own network only."""
    nets = [IPv4Network(f"10.{i}.0.0/16") for i in seconds]
    slots = [maps.Config(n, 2, 0).pack() for n in nets] + [maps.EMPTY_CONFIG]

    def network_of(addr: IPv4Address):
        for raw in slots:
            c = maps.Config.unpack(raw) if raw != maps.EMPTY_CONFIG else None
            if c is None:
                return None
            if addr in c.network:
                return c.network
        return None

    for n in nets:
        assert network_of(n.network_address + 5) == n
    assert network_of(ipaddress.IPv4Address("192.168.1.1")) is None


# ---------------------------------------------------------------- isolation with routed veths


def test_isolation_matches_routed_veths(programs):
    ctx, b, nets = with_networks("vxlan", BLUE)
    inet, arp = program.isolation_resources(ctx, b, nets)
    assert "cn0" not in inet.body and "cn-blue" not in inet.body  # no bridge to name
    spoof = 'iifname "cnv*" fib saddr . iif oif missing counter name "spoof" drop'
    forward, inp = inet.body.split("chain input")
    assert spoof in forward and spoof in inp  # a routed container sends only from its own /32
    assert f"ip saddr vmap {{ 10.32.0.0/16 : jump default_forward, {BLUE} : jump blue_forward }}" in forward
    assert f"ip saddr vmap {{ 10.32.0.0/16 : jump default_input, {BLUE} : jump blue_input }}" in inp
    chains = {c.split(" {")[0]: c.split("{", 1)[1].split("}")[0] for c in inet.body.split("chain ")[1:]}
    assert f'ip daddr {BLUE} counter name "default_cross" drop' in chains["default_forward"]
    assert 'ip daddr 10.32.0.0/16 counter name "blue_cross" drop' in chains["blue_forward"]
    assert 'ip daddr 10.32.0.0/16 counter name "blue_gateway" drop' in chains["blue_input"]
    assert "blue_bridge" not in chains and "vmap {" not in chains["forward"].split("ip saddr vmap")[0]
    assert f'iifname "cnv*" arp operation request arp saddr ip {BLUE} arp daddr ip 10.32.0.0/16 counter name "blue_arp" drop' in arp.body
    assert 'udp dport 4789 counter name "blue_tunnel" drop' in chains["blue_input"]  # vxlan: no VXLAN from a container
    assert netiso.counter_names({"default": ctx, **nets}) == [
        "spoof", "default_cross", "default_gateway", "default_tunnel", "blue_cross", "blue_gateway", "blue_tunnel"]
    for name in netiso.counter_names({"default": ctx, **nets}):
        assert f"counter {name} {{" in inet.body


# ---------------------------------------------------------------- backend auto


def auto_doc(**extra) -> dict:
    doc = cluster_file("auto", datapath="ebpf", **extra)
    for i, h in enumerate(doc["hosts"]):
        h["wireguard_key"] = key(i + 1)
    return doc


def auto_ctx(**auto):
    cluster = parse_cluster(auto_doc(auto=auto))
    b = get_backend("auto")
    ctx = build_context(cluster, "h1", NoKernel(), b, state_dir="/var/lib/crossnet-test")
    return ctx, b


def test_auto_is_routed_with_programs_on_the_nic_and_vxlan_but_not_wireguard(programs):
    ctx, b = auto_ctx()
    local = b.local_resources(ctx)
    assert not [r for r in local if isinstance(r, Bridge)] and local[0] == Address("lo", "10.32.0.1/32")
    tcs = [r for r in local if isinstance(r, ebpf_host.TcProgram)]
    assert sorted(t.dev for t in tcs) == ["cnvx1", "eth0"]  # cnwg0: the stack (docs/datapath.md)
    (cfg,) = [r for r in local if isinstance(r, ebpf_host.BpfConfig)]
    assert cfg.vxlan == "cnvx1"
    kinds = [type(r) for r in local]
    assert local.index(cfg) > max(kinds.index(Vxlan), kinds.index(WgDevice))


def test_auto_encrypt_has_no_vxlan_target(programs):
    ctx, b = auto_ctx(encrypt=True)
    local = b.local_resources(ctx)
    assert not [r for r in local if isinstance(r, (Bridge, Vxlan))]
    (cfg,) = [r for r in local if isinstance(r, ebpf_host.BpfConfig)]
    assert cfg.vxlan is None
    assert [r.dev for r in local if isinstance(r, ebpf_host.TcProgram)] == ["eth0"]


def test_auto_kernel_datapath_keeps_its_bridge():
    doc = cluster_file("auto")
    for i, h in enumerate(doc["hosts"]):
        h["wireguard_key"] = key(i + 1)
    cluster = parse_cluster(doc)
    b = get_backend("auto")
    ctx = build_context(cluster, "h1", NoKernel(), b)
    local = b.local_resources(ctx)
    assert isinstance(local[0], Bridge) and local[1] == Address("cn0", "10.32.0.1/24")


def test_ebpf_with_auto_and_networks_is_accepted_by_either_model():
    """auto carries named networks (crossnet.wg.named) and runs ebpf: both together too,
    from the cluster file and from a store's config (and its JSON round trip)."""
    cluster = parse_cluster(auto_doc(networks=[{"name": "blue", "network": BLUE}]))
    assert cluster.datapath == "ebpf" and [n.name for n in cluster.networks] == ["blue"]
    cfg = NetworkConfig(network="10.32.0.0/16", backend="auto", datapath="ebpf",
                        networks=[{"name": "blue", "network": BLUE}])
    again = NetworkConfig.from_json(cfg.to_json())
    assert again.datapath == "ebpf" and again.backend == "auto" and [n.name for n in again.networks] == ["blue"]


def test_ebpf_with_a_backend_that_cannot_route_and_networks_is_still_refused():
    doc = cluster_file("wireguard", datapath="ebpf", networks=[{"name": "blue", "network": BLUE}])
    for i, h in enumerate(doc["hosts"]):
        h["wireguard_key"] = key(i + 1)
    with pytest.raises(ConfigError, match=r"datapath: datapath ebpf is supported with backends host-gw, vxlan, auto only"):
        parse_cluster(doc)


def auto_with_networks(**auto):
    cluster = parse_cluster(auto_doc(auto=auto, networks=[{"name": "blue", "network": BLUE},
                                                          {"name": "red", "network": RED}]))
    b = get_backend("auto")
    ctx = build_context(cluster, "h1", NoKernel(), b, state_dir="/var/lib/crossnet-test")
    return ctx, b, networks.contexts(cluster, ctx, b)


def test_auto_with_networks_every_network_routed_one_program_set_on_each_vxlan_device(programs):
    """Each network routed (its gateway on lo, no bridge), its own cnvx<vni> and
    cnwg<vni>; ONE set of programs: the to-container program on the NIC (direct peers)
    and on every network's vxlan device (vxlan peers), none on a WireGuard device; the one
    configuration holds every network with its own vxlan device, written after them all."""
    ctx, b, nets = auto_with_networks()
    assert all(n.datapath == "ebpf" and n.backend == "auto" for n in nets.values())
    res = desired(ctx, b, nets)
    assert not [r for r in res if isinstance(r, Bridge)]
    assert [r.cidr for r in res if isinstance(r, Address) and r.dev == "lo"] == ["10.32.0.1/32", "10.40.0.1/32",
                                                                                 "10.41.0.1/32"]
    assert len({r.key() for r in res}) == len(res)
    assert sorted(r.name for r in res if isinstance(r, Vxlan)) == ["cnvx1", "cnvx2", "cnvx3"]
    assert sorted(r.name for r in res if isinstance(r, WgDevice)) == ["cnwg0", "cnwg2", "cnwg3"]
    (loads,) = [r for r in res if isinstance(r, ebpf_host.BpfPrograms)]
    (cfg,) = [r for r in res if isinstance(r, ebpf_host.BpfConfig)]
    assert [(str(n), v) for n, v, _ in cfg.entries()] == [("10.32.0.0/16", "cnvx1"), (BLUE, "cnvx2"), (RED, "cnvx3")]
    assert cfg.port == 0  # auto: its vxlan devices encapsulate (the programs only redirect)
    kinds = [i for i, r in enumerate(res) if isinstance(r, (Vxlan, WgDevice))]
    assert res.index(cfg) > max(kinds)
    tcs = [r for r in res if isinstance(r, ebpf_host.TcProgram)]
    assert sorted(t.dev for t in tcs) == ["cnvx1", "cnvx2", "cnvx3", "eth0"]
    assert all(t.pin_dir == loads.pin_dir == cfg.pin_dir for t in tcs)
    assert [Resource.from_json(r.to_json()) for r in res] == res


def test_auto_with_networks_peers_over_the_top_level_choice(programs):
    """A named network's peers take the transport the top-level network chose for them:
    direct (the NIC: the programs there), vxlan (its own cnvx<vni>), WireGuard (its own
    cnwg<vni>, the stack)."""
    _, b, nets = auto_with_networks()
    blue = nets["blue"]
    for transport, dev in (("direct", "eth0"), ("vxlan", "cnvx2"), ("wireguard", "cnwg2")):
        peer = blue.peers[0]
        peer.transport = transport
        routes = [r for r in b.peer_resources(blue, peer) if getattr(r, "dst", None) == str(peer.subnet)]
        assert [r.dev for r in routes] == [dev], (transport, routes)


def test_auto_encrypt_with_networks_has_no_vxlan_target(programs):
    ctx, b, nets = auto_with_networks(encrypt=True)
    res = desired(ctx, b, nets)
    assert not [r for r in res if isinstance(r, (Bridge, Vxlan))]
    (cfg,) = [r for r in res if isinstance(r, ebpf_host.BpfConfig)]
    assert [v for _, v, _ in cfg.entries()] == [None, None, None]
    assert [r.dev for r in res if isinstance(r, ebpf_host.TcProgram)] == ["eth0"]


def test_auto_with_networks_isolation_matches_routed_veths(programs):
    ctx, b, nets = auto_with_networks()
    tables = program.isolation_resources(ctx, b, nets)
    inet = next(t for t in tables if t.family == "inet")
    assert 'iifname "cnv*" fib saddr . iif oif missing counter name "spoof" drop' in inet.body
    assert f"{BLUE} : jump blue_forward" in inet.body
    assert 'ip daddr 10.32.0.0/16 counter name "blue_cross" drop' in inet.body.split("chain blue_forward {")[1]
    assert "cn-blue" not in inet.body  # no bridge to name
