"""Named networks (docs/networks.md) with the ovs-gre / ovs-vxlan backends, without a
kernel or OVS: each network's own OVS bridge, tunnel ports keyed by its VNI, flows,
routes and MTU; names that never collide; the store's path; the records round-trip.
The packets: tests/e2e/test_ovs_networks.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import netstore, networks, program
from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, Peer
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.netmodel import NetworkConfig
from crossnet.ovs.resources import OvsBridge, OvsFlows, OvsPort, TunnelNeighbours
from crossnet.plan.resources import Enslave, Route

HOSTS = [{"name": f"h{i}", "address": f"192.168.9.{i}", "iface": "eth0"} for i in (1, 2, 3)]
NETS = [{"name": "blue", "network": "10.41.0.0/16"}, {"name": "red", "network": "10.42.0.0/16", "vni": 40}]


@pytest.fixture(autouse=True)
def userspace(monkeypatch):
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "netdev")


def cluster(backend: str, nets=NETS, **top):
    return parse_cluster({"name": "c", "backend": backend, "network": "10.40.0.0/16", "hosts": HOSTS,
                          "networks": list(nets), **top})


def contexts(backend_name: str):
    c = cluster(backend_name)
    b = get_backend(backend_name)
    subnets = c.host_subnets()
    peers = [Peer(h.name, h.address, subnets[h.name], b.host_data(c.name, h.name, h.address))
             for h in c.peers_of("h1")]
    ctx = program.context(program.Settings.of_cluster(c), b, host="h1", address=IPv4Address("192.168.9.1"),
                          iface="eth0", subnet=subnets["h1"], nic=networks._Nic(1500, "02:00:00:00:00:01"),
                          peers=peers)
    return b, ctx, networks.contexts(c, ctx, b)


@pytest.mark.parametrize("backend_name", ["ovs-gre", "ovs-vxlan"])
def test_each_network_has_its_own_ovs_bridge_tunnels_key_flows_and_routes(backend_name):
    b, ctx, nets = contexts(backend_name)
    gre = backend_name == "ovs-gre"
    assert [(n.net_name, n.vni) for n in nets.values()] == [("blue", 2), ("red", 40)] and ctx.net_name == ""
    # GRE's key costs 4 bytes; VXLAN always carries one
    assert all(n.mtu == ctx.mtu - (4 if gre else 0) for n in nets.values())
    desired = program.desired_resources(ctx, b, program.network_resources(ctx, b, nets))
    keys = [r.key() for r in desired]
    assert len(keys) == len(set(keys))  # the underlay (br-phy, NIC, nft) once, nothing twice
    bridges = {r.name: r for r in desired if isinstance(r, OvsBridge)}
    assert set(bridges) == {"br-phy", "cnovs0", "cnovs2", "cnovs40"}
    assert sum(isinstance(r, TunnelNeighbours) for r in desired) == 1
    ports = [r for r in desired if isinstance(r, OvsPort) and r.role == "tunnel"]
    flows = {r.bridge: r.flows for r in desired if isinstance(r, OvsFlows)}
    for name, net, ovs_br in (("default", ctx, "cnovs0"), ("blue", nets["blue"], "cnovs2"),
                              ("red", nets["red"], "cnovs40")):
        assert b.tunnel_device(net) == ovs_br
        br = bridges[ovs_br]
        assert (br.fail_mode, br.mtu, br.role) == ("secure", net.mtu, "overlay")
        assert Enslave(ovs_br, net.bridge).key() in keys  # its internal port in its own container bridge
        mine = [p for p in ports if p.bridge == ovs_br]
        assert [p.options["remote_ip"] for p in mine] == ["192.168.9.2", "192.168.9.3"]
        # the network's own key (the top-level GRE network keeps its keyless ports, as before)
        want_key = None if (gre and name == "default") else str(net.vni)
        assert {p.options.get("key") for p in mine} == {want_key}, name
        # its flows name its own tunnel ports only: nothing crosses to another network's bridge
        named = {w.split("output:")[1].split(",")[0] for f in flows[ovs_br] for w in f.split("actions=")[1:]
                 if "output:" in w} | {f.split("in_port=")[1].split(",")[0] for f in flows[ovs_br] if "in_port=" in f}
        assert named == {p.name for p in mine} | {"LOCAL"}, (name, named)
        routes = [r for r in desired if isinstance(r, Route) and r.dev == net.bridge]
        assert [r.dst for r in routes] == [str(p.subnet) for p in net.peers]
        # ports exist before the flows that name them
        assert max(desired.index(p) for p in mine) < next(i for i, r in enumerate(desired)
                                                          if isinstance(r, OvsFlows) and r.bridge == ovs_br)
    pre = "gre" if gre else "vxl"
    assert {p.name for p in ports} == {f"{pre}{v}-h{i}" for v in ("", "2", "40") for i in (2, 3)}
    # --dry-run prints the ovs-vsctl commands with the network's key
    text = "\n".join(r.describe() for r in desired)
    assert (f"ovs-vsctl --may-exist add-port cnovs2 {pre}2-h2 -- set interface {pre}2-h2 "
            f"type={'gre' if gre else 'vxlan'} options:key=2 options:remote_ip=192.168.9.2") in text
    assert "ovs-vsctl --may-exist add-br cnovs40 -- set bridge cnovs40 datapath_type=netdev fail_mode=secure" in text


def test_a_named_networks_record_gives_back_the_same_resources():
    """attach/status/reset read a network's context from its record: the OVS names must
    come back the same (not the top-level cnovs0)."""
    b, _ctx, nets = contexts("ovs-vxlan")
    again = HostContext.from_json(nets["blue"].to_json())
    assert again.net_name == "blue"
    assert [r.key() for r in b.resources(again)] == [r.key() for r in b.resources(nets["blue"])]
    # a record written before named networks existed reads as the top-level network
    old = {k: v for k, v in _ctx.to_json().items() if k != "net_name"}
    assert HostContext.from_json(old).net_name == "" and b.tunnel_device(HostContext.from_json(old)) == "cnovs0"


PEER_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(peers=st.lists(PEER_NAME, min_size=1, max_size=6, unique=True),
       vnis=st.lists(st.integers(1, 16_777_215), min_size=1, max_size=4, unique=True),
       backend_name=st.sampled_from(["ovs-gre", "ovs-vxlan"]))
def test_tunnel_port_names_never_collide_across_networks_and_are_flow_safe(peers, vnis, backend_name):
    """OVS port names are global across bridges and pasted into OpenFlow rules."""
    b = get_backend(backend_name)
    seen: dict[str, tuple] = {}
    for vni, net_name in [(vnis[0], ""), *[(v, f"n{i}") for i, v in enumerate(vnis[1:])]]:
        ctx = HostContext(cluster_name="c", backend=backend_name, host="me", address=IPv4Address("10.9.0.1"),
                          iface="eth0", subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"),
                          gateway=IPv4Address("10.32.0.1"), prefixlen=24, bridge="cn0", underlay_mtu=1500,
                          mtu=1450, masquerade=False, vni=vni, net_name=net_name)
        for p in peers:
            name = b.tunnel_port(Peer(p, IPv4Address("10.9.0.2"), IPv4Network("10.32.1.0/24")), ctx)
            assert len(name) <= 15 and all(ch.isalnum() or ch in "-_." for ch in name), name
            assert name not in seen, (name, seen[name], (vni, p))
            seen[name] = (vni, p)
        assert b.overlay_bridge(ctx) == ("cnovs0" if not net_name else f"cnovs{vni}")


@pytest.mark.parametrize("backend_name", ["ovs-gre", "ovs-vxlan"])
def test_colliding_keys_are_refused_naming_the_field(backend_name):
    """Two networks with one VNI would share a tunnel key (OVS could not tell them apart)."""
    with pytest.raises(ConfigError) as exc:
        cluster(backend_name, nets=[{"name": "blue", "network": "10.41.0.0/16", "vni": 1}])
    assert "networks[0].vni" in str(exc.value) and "VNI 1" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        cluster(backend_name, nets=[{"name": "blue", "network": "10.41.0.0/16", "vni": 9},
                                    {"name": "red", "network": "10.42.0.0/16", "vni": 9}])
    assert "networks[1].vni" in str(exc.value)


@pytest.mark.parametrize("backend_name", ["ovs-gre", "ovs-vxlan"])
def test_the_store_path_builds_the_same_named_contexts(backend_name):
    """A store's config carries named networks with the ovs backends too; the agent's
    contexts (crossnet.netstore) are the cluster file's."""
    b, ctx, nets = contexts(backend_name)
    cfg = NetworkConfig.of(cluster(backend_name))
    assert cfg.backend == backend_name and [n.name for n in cfg.networks] == ["blue", "red"]
    own = {n: c.subnet for n, c in nets.items()}
    peers = [(p, {n: next(q.subnet for q in c.peers if q.name == p.name) for n, c in nets.items()}) for p in ctx.peers]
    got = netstore.contexts(cfg, ctx, b, own, peers)
    assert {n: c.to_json() for n, c in got.items()} == {n: c.to_json() for n, c in nets.items()}


@pytest.mark.parametrize("backend_name", ["ovs-gre", "ovs-vxlan", "vxlan"])
def test_anti_spoofing_lets_the_networks_own_tunnel_in(backend_name):
    """With the ovs backends the tunnel is a port of the network's bridge: frames (and ARP
    for the gateways) of its containers on other hosts enter through it, so the bridge's
    source check is the network's CIDR (still never another network's address); the
    kernel backends keep this host's subnet."""
    if backend_name == "vxlan":
        b = get_backend("vxlan")
        c = cluster("vxlan")
        subnets = c.host_subnets()
        ctx = program.context(program.Settings.of_cluster(c), b, host="h1", address=IPv4Address("192.168.9.1"),
                              iface="eth0", subnet=subnets["h1"], nic=networks._Nic(1500, None), peers=[])
        nets = networks.contexts(c, ctx, b)
    else:
        b, ctx, nets = contexts(backend_name)
    tables = {r.family: r.body for r in program.isolation_resources(ctx, b, nets)}
    assert set(tables) == {"netdev", "arp"}  # the netdev layout: the bridge's own ingress chain
    src = "10.41.0.0/16" if backend_name != "vxlan" else "10.41.0.0/24"
    assert f'iifname "cn-blue" arp saddr ip != {src} counter name "blue_arp" drop' in tables["arp"]
    bridge_chain = tables["netdev"].split("chain blue_bridge {")[1].split("}")[0]
    assert 'hook ingress device "cn-blue"' in bridge_chain
    assert f'ip saddr != {src} counter name "blue_spoof" drop' in bridge_chain
    assert 'ip daddr 10.42.0.0/16 counter name "blue_cross" drop' in bridge_chain
    # OVS: no chain besides the bridges' (its tunnels are ports of them); vxlan: its device's
    chains = [line.split()[1] for line in tables["netdev"].splitlines() if line.strip().startswith("chain ")]
    kinds = ["bridge", "vxlan"] if backend_name == "vxlan" else ["bridge"]
    assert sorted(chains) == sorted(f"{n}_{k}" for n in ["default", *nets] for k in kinds)


def test_a_named_networks_ovs_bridge_crossnet_did_not_create_is_refused_before_anything_changes(tmp_path):
    """apply (and --dry-run) checks every network's OVS bridges and ports, not only the
    top-level ones: a hand-made `cnovs2` is refused with one line, nothing written."""
    from crossnet.errors import ApplyError
    from crossnet.state import StateDir
    from tests.unit.test_ovs_backend import FakeDb, FakeEnv, Row

    b, ctx, nets = contexts("ovs-vxlan")
    db = FakeDb({"br-phy": Row("br-phy", {"crossnet": "underlay"}, ["br-phy"]),
                 "cnovs0": Row("cnovs0", {"crossnet": "overlay"}, ["cnovs0"]),
                 "cnovs2": Row("cnovs2", {}, ["cnovs2", "mine"])})
    b.check_underlay(ctx, FakeEnv(db))  # the top-level network alone is fine
    state = StateDir(tmp_path / "state")
    for dry_run in (True, False):
        with pytest.raises(ApplyError, match=r"^OVS bridge cnovs2 already exists and was not created by crossnet"):
            program.program_host(state, FakeEnv(db), ctx, b, [], {"cluster": "x"}, dry_run=dry_run,
                                 protect_routes=False, networks=nets)
    assert not list(tmp_path.rglob("*.json"))
