"""The resource lists of the bridge, host-gw, vxlan and wireguard backends, built the
way `crossnet apply` and the agent build them (crossnet.program: a cluster file or a
store's settings -> program.context -> desired_resources), without a kernel: what each
backend wants locally and per peer, that the two models of one network give the same
context, that a peer's resources are exactly its part of the whole list, JSON
round-trips and dry-run text. The OVS backends: tests/unit/test_ovs_backend.py; the
kernel side: tests/e2e."""

from __future__ import annotations

import base64
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.netlink import iproute as nl
from crossnet import program
from crossnet.backends import get_backend
from crossnet.backends.base import Peer, gateway_mac, stable_mac
from crossnet.config import parse_cluster
from crossnet.errors import ApplyError
from crossnet.host import build_context
from crossnet.plan.nic import NicTakeover
from crossnet.plan.resources import Address, Bridge, BridgeNetfilterOff, Fdb, Neigh, NftTable, Resource, Route, Sysctl, Vxlan
from crossnet.store import NetworkConfig
from crossnet.wg.resources import WgDevice, WgPeer

NIC = nl.LinkInfo(index=2, name="eth0", kind=None, mtu=1500, mac="52:54:00:00:00:01", up=True, master=None,
                  info_data={})


def key(i: int) -> str:
    """A WireGuard public key (base64 of 32 bytes), one per host."""
    return base64.b64encode(bytes([i]) * 32).decode()


def cluster_file(backend: str, **extra) -> dict:
    hosts = [{"name": f"h{i}", "address": f"10.56.0.{10 + i}", "iface": "eth0"} for i in (1, 2, 3)]
    doc: dict = {"name": "c", "backend": backend, "hosts": hosts, **extra}
    if backend == "bridge":
        doc["lan"] = {"cidr": "10.56.0.0/24", "gateway": "10.56.0.1", "range_len": 27}
    else:
        doc.setdefault("network", "10.32.0.0/16")
    if backend == "wireguard":
        for i, h in enumerate(hosts):
            h["wireguard_key"] = key(i + 1)
    return doc


@pytest.fixture(autouse=True)
def nic(monkeypatch):
    monkeypatch.setattr(nl, "link_info", lambda ipr, name=None, index=None: NIC if name == "eth0" else None)


class NoKernel:
    ipr = None


def ctx_of(backend: str, tmp_path=None, **extra):
    cluster = parse_cluster(cluster_file(backend, **extra))
    b = get_backend(backend)
    return build_context(cluster, "h1", NoKernel(), b, state_dir=str(tmp_path or "")), b


def test_bridge():
    ctx, b = ctx_of("bridge")
    assert (ctx.bridge, ctx.mtu, ctx.gateway, ctx.prefixlen, ctx.network) == (
        "br0", 1500, IPv4Address("10.56.0.11"), 24, IPv4Network("10.56.0.0/24"))
    assert program.desired_resources(ctx, b) == [
        Sysctl("net.ipv4.ip_forward", "1"), Bridge("br0", 1500, mac=NIC.mac), BridgeNetfilterOff(["br0"]),
        NicTakeover("eth0", "br0")]
    assert all(b.peer_resources(ctx, p) == [] for p in ctx.peers)  # one L2 segment: nothing per peer


def test_host_gw():
    ctx, b = ctx_of("host-gw")
    assert program.desired_resources(ctx, b) == [
        Sysctl("net.ipv4.ip_forward", "1"),
        Bridge("cn0", 1500, mac=gateway_mac(ctx)), BridgeNetfilterOff(["cn0"]), Address("cn0", "10.32.0.1/24"),
        Route("10.32.1.0/24", gateway="10.56.0.12", dev="eth0"),
        Route("10.32.2.0/24", gateway="10.56.0.13", dev="eth0"),
    ]


class RoutesOnly:
    """check_underlay's view of the host: eth0 (the underlay, 10.56.0.0/24) and docker0
    (172.17.0.0/16)."""

    LINKS = {2: "eth0", 3: "docker0"}

    def __init__(self):
        self._routes = [nl.RouteInfo("10.56.0.0/24", None, 2, 2, 253, "10.56.0.11", 0, None),
                        nl.RouteInfo("172.17.0.0/16", None, 3, 2, 253, "172.17.0.1", 0, None),
                        nl.RouteInfo("0.0.0.0/0", "10.56.0.1", 2, 4, 0, None, 0, None)]
        self.ipr = None

    def routes(self):
        return self._routes

    def index(self, name):
        return {v: k for k, v in self.LINKS.items()}.get(name)

    def link(self, name=None, index=None):
        return nl.LinkInfo(index, self.LINKS[index], None, 1500, "", True, None, {}) if index in self.LINKS else None


@pytest.mark.parametrize("address, why", [
    ("10.56.0.12", None),
    # on-link, but through docker0: "ip route add ... via 172.17.0.5 dev eth0" is refused by the
    # kernel, and in the agent's full sync that one route rolled back every peer's
    ("172.17.0.5", "backend host-gw: peer h9 (172.17.0.5) is on-link through docker0, not through eth0"),
])
def test_host_gw_peers_must_be_on_link_through_the_underlay_nic(address, why, monkeypatch):
    ctx, b = ctx_of("host-gw")
    # the kernel's answer for an address on docker0's network (asked when the fast path does not decide)
    monkeypatch.setattr(nl, "route_get", lambda ipr, dst: nl.RouteInfo(f"{dst}/32", None, 3, 2, 253, None, 0, None))
    peer = Peer("h9", IPv4Address(address), IPv4Network("10.32.9.0/24"), {})
    env = RoutesOnly()
    assert program.peer_usable(ctx, b, env, peer) is (why is None)
    if why:
        with pytest.raises(ApplyError) as exc:
            b.check_underlay(type(ctx)(**{**ctx.__dict__, "peers": [peer]}), env)
        assert str(exc.value) == why


def test_vxlan():
    ctx, b = ctx_of("vxlan", vxlan={"vni": 42, "port": 8472}, masquerade=True)
    assert ctx.mtu == 1450
    mac = {h: stable_mac("c", h, "vxlan") for h in ("h1", "h2", "h3")}
    res = program.desired_resources(ctx, b)
    assert res[:2] == [Sysctl("net.ipv4.ip_forward", "1"), NftTable("ip", "crossnet", res[1].body)]
    assert "ip saddr 10.32.0.0/24 ip daddr != 10.32.0.0/16 masquerade" in res[1].body
    assert res[2:] == [
        Bridge("cn0", 1450, mac=gateway_mac(ctx)), BridgeNetfilterOff(["cn0"]), Address("cn0", "10.32.0.1/24"),
        Vxlan("cnvx42", 42, 8472, "10.56.0.11", "eth0", 1450, mac["h1"]), Address("cnvx42", "10.32.0.0/32"),
        Fdb("cnvx42", mac["h2"], "10.56.0.12"), Neigh("cnvx42", "10.32.1.0", mac["h2"]),
        Route("10.32.1.0/24", gateway="10.32.1.0", dev="cnvx42", onlink=True),
        Fdb("cnvx42", mac["h3"], "10.56.0.13"), Neigh("cnvx42", "10.32.2.0", mac["h3"]),
        Route("10.32.2.0/24", gateway="10.32.2.0", dev="cnvx42", onlink=True),
    ]
    # a peer that published its own VTEP MAC (a store record) is believed
    p = Peer("h9", IPv4Address("10.56.0.99"), IPv4Network("10.32.9.0/24"), {"vtep_mac": "02:11:22:33:44:55"})
    assert b.peer_resources(ctx, p)[0] == Fdb("cnvx42", "02:11:22:33:44:55", "10.56.0.99")


def test_wireguard(tmp_path):
    ctx, b = ctx_of("wireguard", tmp_path, wireguard={"port": 5555})
    assert ctx.mtu == 1420 and ctx.wireguard["port"] == 5555
    res = program.desired_resources(ctx, b)
    dev = next(r for r in res if isinstance(r, WgDevice))
    assert (dev.name, dev.port, dev.mtu) == ("cnwg0", 5555, 1420)
    assert Route("10.32.0.0/16", dev="cnwg0") in res  # unknown peers: into WireGuard (dropped), never in clear
    peers = [r for r in res if isinstance(r, WgPeer)]
    assert [(p.endpoint, p.allowed_ips) for p in peers] == [("10.56.0.12:5555", ["10.32.1.0/24"]),
                                                          ("10.56.0.13:5555", ["10.32.2.0/24"])]
    assert res[-2:] == [peers[-1], Route("10.32.2.0/24", dev="cnwg0")]


@pytest.mark.parametrize("backend", ["bridge", "host-gw", "vxlan", "wireguard"])
def test_invariants_of_every_list(backend, tmp_path):
    """Keys unique; the whole list is forwarding + local + each peer's part (what the
    agent's one-peer fast path programs); a peer gone takes exactly its part; every
    resource round-trips through applied.json and has a dry-run line."""
    ctx, b = ctx_of(backend, tmp_path, masquerade=True)
    res = program.desired_resources(ctx, b)
    assert len({r.key() for r in res}) == len(res)
    parts = [program.peer_resources(ctx, b, p) for p in ctx.peers]
    assert res == program.local_resources(ctx, b) + [r for part in parts for r in part]
    gone = ctx.peers.pop(0)
    assert program.desired_resources(ctx, b) == [r for r in res if r not in parts[0]], gone
    for r in res:
        assert Resource.from_json(r.to_json()) == r
        assert r.describe().strip()


@pytest.mark.parametrize("backend", ["host-gw", "vxlan", "wireguard"])
def test_apply_and_agent_build_the_same_context(backend, tmp_path):
    """One context builder: the cluster file (apply) and a store's settings (the agent,
    here what the static store serves for the same file) give the same HostContext."""
    doc = cluster_file(backend, masquerade=True, mtu=1400, vxlan={"vni": 7, "port": 4790}, bridge="cnx0")
    cluster = parse_cluster(doc)
    b = get_backend(backend)
    from_file = build_context(cluster, "h1", NoKernel(), b, state_dir=str(tmp_path))
    cfg = NetworkConfig.of(cluster)  # what the static store serves; etcd init writes the same JSON
    cfg = NetworkConfig.from_json(cfg.to_json())
    from_store = program.context(program.Settings.of_config(cfg), b, host="h1", address=IPv4Address("10.56.0.11"),
                                 iface="eth0", subnet=IPv4Network("10.32.0.0/24"), nic=NIC, peers=from_file.peers,
                                 state_dir=str(tmp_path))
    assert from_store == from_file
    assert (from_file.mtu, from_file.underlay_mtu, from_file.bridge) == (1400 - b.overhead, 1400, "cnx0")


def test_a_record_naming_an_unknown_resource_kind_is_one_clear_error():
    """A record of this host written by another crossnet version (a kind this one does not
    know, e.g. a newer `dev-ipv6-off` read by an older crossnet) was a KeyError, printed as
    an internal error; now a CrossnetError naming the kind (the CLI prints it as one line)."""
    with pytest.raises(ApplyError, match=r"resource kind this crossnet does not know: 'from-the-future'"):
        Resource.from_json({"kind": "from-the-future", "name": "x"})
