"""Named networks with backends wireguard and auto (docs/networks.md, docs/wireguard.md,
crossnet.wg.named), the pure part: each network's own WireGuard device and port, their
collisions refused with one line naming the field, the resources a named network's
context describes (cluster file and store alike), and the agent re-running the whole
path when auto's prober switches a peer. The packets: tests/e2e/test_networks_wg.py."""

from __future__ import annotations

import base64
from ipaddress import IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import netstore, networks, program
from crossnet.agent.core import Agent
from crossnet.backends import get_backend
from crossnet.errors import ConfigError
from crossnet.netmodel import NetworkConfig
from crossnet.netstore import pin_vnis
from crossnet.plan.resources import Address, Route
from crossnet.wg import named
from crossnet.wg.resources import WgDevice, WgPeer
from tests.unit.test_networks import cluster, error, host_ctx

BLUE = {"name": "blue", "network": "10.41.0.0/16"}
RED = {"name": "red", "network": "10.42.0.0/16"}


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


def contexts(backend_name: str, nets=(BLUE, RED), transports=("vxlan", "wireguard"), **top):
    c = cluster(backend=backend_name, nets=list(nets), **top)
    b = get_backend(backend_name)
    ctx = host_ctx(c, b)
    for i, p in enumerate(ctx.peers):
        p.data["wireguard_key"] = key(i + 1)
        p.transport = transports[i] if backend_name == "auto" else ""
    return c, b, ctx, networks.contexts(c, ctx, b)


def of(resources, kind, dev=None):
    return [r for r in resources if isinstance(r, kind) and (dev is None or getattr(r, "name", None) == dev
                                                              or getattr(r, "dev", None) == dev)]


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize("backend_name", ["wireguard", "auto"])
def test_default_devices_and_ports_follow_the_vni(backend_name):
    _, _, ctx, nets = contexts(backend_name, nets=[BLUE, {**RED, "vni": 40}], wireguard={"port": 6000})
    assert (ctx.wireguard["device"], ctx.wireguard["port"]) == ("cnwg0", 6000)
    assert [(n.wireguard["device"], n.wireguard["port"]) for n in nets.values()] == [("cnwg2", 6001),
                                                                                   ("cnwg40", 6039)]
    _, _, _, nets = contexts(backend_name, nets=[BLUE, {**RED, "wireguard_port": 7000}])
    assert nets["red"].wireguard["port"] == 7000 and nets["blue"].wireguard["port"] == 51821
    assert all(n.wireguard["keepalive"] == ctx.wireguard["keepalive"] for n in nets.values())
    assert named.device(16_777_215) == "cnwg16777215"  # the largest VNI still names a device (<= 15)


@pytest.mark.parametrize("backend_name, nets, top, field, why", [
    ("wireguard", [BLUE, {**RED, "wireguard_port": 51821}], {}, "networks[1].wireguard_port",
     "port 51821 is already networks[0].wireguard_port's"),
    ("wireguard", [{**BLUE, "wireguard_port": 51820}], {}, "networks[0].wireguard_port",
     "port 51820 is already wireguard.port's"),
    ("wireguard", [BLUE], {"wireguard": {"port": 65535}}, "networks[0].wireguard_port",
     "the default port 65536 (wireguard.port 65535 + VNI 2 - 1) is out of range 1..65535; set wireguard_port"),
    ("auto", [{**BLUE, "wireguard_port": 4789}], {}, "networks[0].wireguard_port", "port 4789 is already vxlan.port's"),
    ("wireguard", [{**BLUE, "wireguard_port": 0}], {}, "networks[0].wireguard_port", "out of range 1..65535"),
    ("wireguard", [BLUE], {"wireguard": {"device": "cnwg2"}}, "networks[0].vni",
     "WireGuard device cnwg2 (cnwg<VNI>) is already wireguard.device"),
    ("auto", [BLUE, {**RED, "bridge": "cnwg2"}], {}, "networks[0].vni", "cnwg2 (cnwg<VNI>) is already networks[1].bridge"),
    ("wireguard", [{**BLUE, "bridge": "eth0"}], {}, "networks[0].bridge", "bridge eth0 is already hosts[0].iface"),
    ("vxlan", [{**BLUE, "wireguard_port": 5000}], {}, "networks[0].wireguard_port", "backend vxlan makes no WireGuard"),
])
def test_port_and_device_collisions_name_the_field(backend_name, nets, top, field, why):
    msg = error(backend=backend_name, nets=nets, **top)
    assert f"{field}: " in msg and why in msg and "\n" not in msg


def test_the_store_takes_the_same_rules_and_keeps_the_port():
    cfg = NetworkConfig(network="10.32.0.0/16", backend="wireguard", name="c",
                        networks=[BLUE, {**RED, "wireguard_port": 7000}])
    again = NetworkConfig.from_json(cfg.to_json())
    assert again.networks[1].wireguard_port == 7000 and again.to_json() == cfg.to_json()
    with pytest.raises(ConfigError) as exc:
        NetworkConfig.from_json({**cfg.to_json(), "networks": [{**BLUE, "wireguard_port": "x"}]}, "etcd /c/config")
    assert str(exc.value).startswith("etcd /c/config: networks[0].wireguard_port: ")


def test_a_pinned_vni_keeps_a_networks_port_when_another_goes():
    """Under a store the VNIs are written out once (netstore.pin_vnis); a port derived
    from the VNI stays with it: removing the first network moves no device of the second."""
    first = pin_vnis(NetworkConfig(network="10.32.0.0/16", backend="wireguard", name="c", networks=[BLUE, RED]), None)
    later = pin_vnis(NetworkConfig(network="10.32.0.0/16", backend="wireguard", name="c",
                                   networks=[{"name": "red", "network": "10.42.0.0/16"}]), first)
    def port(cfg, i):
        return named.port(cfg.wireguard.port, cfg.vni, cfg.network_vni(i), cfg.networks[i].wireguard_port)

    assert port(first, 1) == port(later, 0) == 51822


@settings(max_examples=150, deadline=None)
@given(top_port=st.integers(1, 65535), top_vni=st.integers(1, 100),
       nets=st.lists(st.tuples(st.integers(1, 200), st.one_of(st.none(), st.integers(1, 65535))), max_size=6),
       auto=st.booleans())
def test_no_problem_means_distinct_ports_and_devices_in_range(top_port, top_vni, nets, auto):
    vnis = [v for v, _ in nets]
    if len(set(vnis)) != len(vnis) or top_vni in vnis:
        return  # distinct VNIs: named_network_problems' own rule
    listed = [(i, v, own) for i, (v, own) in enumerate(nets)]
    found = list(named.problems("auto" if auto else "wireguard", top_port, "cnwg0", 4789, top_vni, listed, {"cn0": "bridge"}))
    ports = [named.port(top_port, top_vni, v, own) for _, v, own in listed]
    ok = (all(1 <= p <= 65535 for p in ports) and len(set(ports + [top_port])) == len(ports) + 1
          and not (auto and 4789 in ports))
    assert (not found) == ok, (found, ports)
    for loc, msg in found:
        assert loc[0] == "networks" and loc[2] in ("wireguard_port", "vni") and "\n" not in msg
    wg, au = named.settings({"port": top_port, "device": "cnwg0"}, {"encrypt": False} if auto else {}, top_vni,
                            vnis[0] if vnis else top_vni + 1, None)
    assert wg["device"].startswith("cnwg") and (au.get("named") is True) == auto


# ---------------------------------------------------------------- the resources


def test_wireguard_each_network_has_its_own_device_peers_and_routes():
    c, b, ctx, nets = contexts("wireguard")
    desired = program.desired_resources(ctx, b, program.network_resources(ctx, b, nets))
    keys = [r.key() for r in desired]
    assert len(keys) == len(set(keys))
    devs = {r.name: r for r in of(desired, WgDevice)}
    assert {n: d.port for n, d in devs.items()} == {"cnwg0": 51820, "cnwg2": 51821, "cnwg3": 51822}
    assert len({d.key_file for d in devs.values()}) == 1  # one host key for every device (docs/wireguard.md)
    for name, dev, subnets in (("default", "cnwg0", c.host_subnets()), ("blue", "cnwg2", c.network_subnets(0)),
                               ("red", "cnwg3", c.network_subnets(1))):
        port = devs[dev].port
        peers = of(desired, WgPeer, dev)
        assert sorted((p.endpoint, tuple(p.allowed_ips)) for p in peers) == sorted(
            (f"192.168.9.{i}:{port}", (str(subnets[f"h{i}"]),)) for i in (2, 3)), name
        routes = {r.dst for r in of(desired, Route) if r.dev == dev}
        net = ctx.network if name == "default" else nets[name].network
        assert routes == {str(net), str(subnets["h2"]), str(subnets["h3"])}, name
    assert backend_tunnels(b, nets) == {"blue": "cnwg2", "red": "cnwg3"}


def backend_tunnels(b, nets):
    return {n: b.tunnel_device(c) for n, c in nets.items()}


def test_auto_named_networks_follow_the_top_level_choice_per_peer():
    """h2 on vxlan, h3 on WireGuard: every network routes h2's subnet into its own VXLAN
    device and h3's into its own WireGuard device; a named network's allowed-ips are its
    subnet only and it has no probe address."""
    c, b, ctx, nets = contexts("auto", transports=("vxlan", "wireguard"))
    desired = program.desired_resources(ctx, b, program.network_resources(ctx, b, nets))
    keys = [r.key() for r in desired]
    assert len(keys) == len(set(keys))
    for name, vx, wg, subnets in (("blue", "cnvx2", "cnwg2", c.network_subnets(0)),
                                  ("red", "cnvx3", "cnwg3", c.network_subnets(1))):
        h2, h3 = str(subnets["h2"]), str(subnets["h3"])
        routes = {r.dst: r.dev for r in of(desired, Route) if r.dst in (h2, h3)}
        assert routes == {h2: vx, h3: wg}, name
        assert sorted(tuple(p.allowed_ips) for p in of(desired, WgPeer, wg)) == [(h2,), (h3,)]
        assert not [a for a in of(desired, Address) if a.dev == wg]  # no probe address
        assert {d.port for d in of(desired, WgDevice, wg)} == {nets[name].wireguard["port"]}
    probes = [a for a in of(desired, Address) if a.dev == "cnwg0"]
    assert [a.cidr for a in probes] == ["198.18.0.1/32"]  # the top-level network keeps its probes


def test_auto_encrypt_routes_each_network_into_its_own_wireguard_device():
    _, b, ctx, nets = contexts("auto", auto={"encrypt": True})
    desired = program.network_resources(ctx, b, nets)
    assert {r.dst for r in of(desired, Route) if r.dst in ("10.41.0.0/16", "10.42.0.0/16")} == {"10.41.0.0/16",
                                                                                                "10.42.0.0/16"}
    assert {r.dev for r in of(desired, Route) if r.dst == "10.41.0.0/16"} == {"cnwg2"}
    assert not [r for r in desired if r.key().startswith("link:cnvx")]


@pytest.mark.parametrize("backend_name", ["wireguard", "auto"])
def test_the_store_path_describes_what_the_cluster_file_does(backend_name):
    c, b, ctx, nets = contexts(backend_name)
    cfg = NetworkConfig.of(c)
    own = {n: nets[n].subnet for n in nets}
    peers = [(p, {n: next(q.subnet for q in nets[n].peers if q.name == p.name) for n in nets}) for p in ctx.peers]
    stored = netstore.contexts(cfg, ctx, b, own, peers)
    for n in nets:
        assert [r.to_json() for r in b.resources(stored[n])] == [r.to_json() for r in b.resources(nets[n])], n


# ---------------------------------------------------------------- the agent


class _FakeAgent:
    """What Agent._handle reads for a transport event."""

    def __init__(self, nets):
        self.peers = {IPv4Network("10.40.1.0/24"): object()}
        self.nets = nets
        self.calls: list[str] = []

    def _resync(self):
        self.calls.append("resync")

    def _program_peer(self, env, subnet):
        self.calls.append("peer")


def test_a_switched_transport_reruns_the_whole_path_with_named_networks():
    """auto: the prober switching h2 to WireGuard must move h2's subnets of every named
    network too, which only the whole path programs (the fast path is the top-level's)."""
    agent = _FakeAgent({"blue": object()})
    Agent._handle(agent, ("transport", IPv4Network("10.40.1.0/24")))  # type: ignore[arg-type]
    assert agent.calls == ["resync"]

