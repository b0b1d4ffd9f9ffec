"""Unit tests of `crossnet trace` with backend auto (docs/transport.md): the walk follows
the route of the peer's transport (direct / vxlan / wireguard on the WireGuard device
auto keeps next to its VXLAN device), the result names that transport and the one
crossnet records for the peer (transport.json of the prober, else applied.json's
context), and says so when the two differ. Fake namespaces (FakeView), no kernel."""

from __future__ import annotations

import base64
import json
import time
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest

from crossnet.backends.base import HostContext, Peer
from crossnet.cli.trace import render_text
from crossnet.trace import walker as walker_mod
from crossnet.trace.model import Endpoint, FdbEntry, HostSide, Link, Neigh, Route
from crossnet.trace.run import recorded_transport, trace
from crossnet.trace.views import FakeView

PERM, REACH = 0x80, 0x02
LINK_SCOPE = 253
KEYS = {1: base64.b64encode(bytes([1]) * 32).decode(), 2: base64.b64encode(bytes([2]) * 32).decode()}
NIC = {1: "0e:00:00:00:00:11", 2: "0e:00:00:00:00:12"}
VTEP = {1: "02:00:00:00:00:a1", 2: "02:00:00:00:00:a2"}


def _ctx(k: int, peer: int, transport: str, state_dir: str = "", encrypt: bool = False) -> HostContext:
    return HostContext(
        cluster_name="t", backend="auto", host=f"h{k}", address=IPv4Address(f"10.0.0.1{k}"), iface="eth0",
        subnet=IPv4Network(f"10.32.{k - 1}.0/24"), network=IPv4Network("10.32.0.0/16"),
        gateway=IPv4Address(f"10.32.{k - 1}.1"), prefixlen=24, bridge="cn0", underlay_mtu=1500, mtu=1440,
        masquerade=False, state_dir=state_dir, auto={"encrypt": True} if encrypt else {},
        peers=[Peer(f"h{peer}", IPv4Address(f"10.0.0.1{peer}"), IPv4Network(f"10.32.{peer - 1}.0/24"),
                    data={"wireguard_key": KEYS[peer], "vtep_mac": VTEP[peer]}, transport=transport)])


def _host_view(k: int, peer: int, transport: str) -> FakeView:
    """Host hK as backend auto programs it: cn0, cnvx1, cnwg0 (wireguard-go: a tun
    device); the peer's subnet routed over `transport`."""
    sub, psub = f"10.32.{k - 1}", f"10.32.{peer - 1}"
    br_mac, c_mac = f"0a:00:00:00:0{k}:01", f"0a:00:00:00:0{k}:02"
    links = [
        Link(1, "lo", None, "00:00:00:00:00:00", addresses=("127.0.0.1/8",)),
        Link(2, "eth0", None, NIC[k], addresses=(f"10.0.0.1{k}/24",)),
        Link(3, "cn0", "bridge", br_mac, addresses=(f"{sub}.1/24",)),
        Link(4, "cnvx1", "vxlan", VTEP[k], info={"IFLA_VXLAN_ID": 1, "IFLA_VXLAN_PORT": 4789,
                                                 "IFLA_VXLAN_LOCAL": f"10.0.0.1{k}", "IFLA_VXLAN_LINK": 2},
             addresses=(f"{sub}.0/32",)),
        Link(5, f"cnvc{k}", "veth", br_mac, master=3),
        Link(6, "cnwg0", "tun", None, addresses=(f"198.18.0.{k}/32",)),
    ]
    routes = [Route("10.0.0.0/24", oif=2, scope=LINK_SCOPE, proto=2),
              Route(f"{sub}.0/24", oif=3, scope=LINK_SCOPE, proto=2),
              Route(f"{psub}.0/32", oif=4, scope=LINK_SCOPE, proto=4),
              Route(f"198.18.0.{peer}/32", oif=6, scope=LINK_SCOPE, proto=4)]
    if transport == "direct":
        routes.append(Route(f"{psub}.0/24", gateway=f"10.0.0.1{peer}", oif=2, proto=4))
    elif transport == "vxlan":
        routes.append(Route(f"{psub}.0/24", gateway=f"{psub}.0", oif=4, flags=0x4, proto=4))
    else:
        routes.append(Route(f"{psub}.0/24", oif=6, scope=LINK_SCOPE, proto=4))
    neighs = [(2, Neigh(f"10.0.0.1{peer}", NIC[peer], REACH)), (3, Neigh(f"{sub}.2", c_mac, REACH)),
              (4, Neigh(f"{psub}.0", VTEP[peer], PERM))]
    fdb = [FdbEntry(br_mac, 5, master=3, state=PERM), FdbEntry(c_mac, 5, master=3, state=REACH),
           FdbEntry(VTEP[peer], 4, dst=f"10.0.0.1{peer}", state=PERM)]
    return FakeView(f"host:h{k}", links, routes, neighs, fdb)


def _container_view(k: int) -> FakeView:
    sub = f"10.32.{k - 1}"
    links = [Link(1, "lo", None), Link(2, "eth0", "veth", f"0a:00:00:00:0{k}:02", addresses=(f"{sub}.2/24",))]
    routes = [Route("0.0.0.0/0", gateway=f"{sub}.1", oif=2), Route(f"{sub}.0/24", oif=2, scope=LINK_SCOPE, proto=2)]
    return FakeView(f"ctr:c{k}", links, routes, [(2, Neigh(f"{sub}.1", f"0a:00:00:00:0{k}:01", REACH))])


def fake_wireguard_peer(host, dev, ip):
    """What the UAPI socket of the peer's cnwg0 would say: the peer whose allowed-ips
    hold `ip` (auto: its subnet and its probe /32)."""
    for p in host.ctx.peers:
        if IPv4Address(ip) in p.subnet:
            peer = SimpleNamespace(public_key=p.data["wireguard_key"], endpoint=f"{p.address}:51820",
                                   allowed_ips=[str(p.subnet)], rx_bytes=10, tx_bytes=20, last_handshake=None)
            return peer, SimpleNamespace(peers={peer.public_key: peer})
    return None, SimpleNamespace(peers={})


@pytest.fixture(autouse=True)
def _wg(monkeypatch):
    monkeypatch.setattr(walker_mod, "wireguard_peer", fake_wireguard_peer)


def world(routed: str, recorded: str | None = None, state_dirs: dict | None = None):
    """h1 and h2, each routing the other's subnet over `routed`; applied.json's context
    records `recorded` (default: the same)."""
    eps = {k: Endpoint(id=f"c{k}", address=f"10.32.{k - 1}.2", host=f"h{k}", netns=f"/run/netns/c{k}",
                       host_if=f"cnvc{k}", mac=f"0a:00:00:00:0{k}:02") for k in (1, 2)}
    hosts = {}
    for k, peer in ((1, 2), (2, 1)):
        sd = (state_dirs or {}).get(k, "")
        hosts[f"h{k}"] = HostSide(f"h{k}", _ctx(k, peer, recorded or routed, sd), None,
                                  _host_view(k, peer, routed), containers=[eps[k]], state_dir=sd or None)
    return eps[1], eps[2], hosts, {"c1": _container_view(1), "c2": _container_view(2)}


@pytest.mark.parametrize("transport,tunnel,devices", [
    ("direct", None, []),
    ("vxlan", "cnvx1", [("h1", "cnvx1", "vxlan"), ("h2", "cnvx1", "vxlan")]),
    ("wireguard", "cnwg0", [("h1", "cnwg0", "wireguard"), ("h2", "cnwg0", "wireguard")]),
])
def test_the_walk_follows_each_transport(transport, tunnel, devices):
    src, dst, hosts, cviews = world(transport)
    res = trace(src, dst, hosts, cviews)
    assert res.complete and not res.warnings, res.warnings
    assert res.backend == "auto" and res.transport == transport and res.tunnel == tunnel
    assert (res.peer, res.recorded_transport) == ("h2", transport)
    tunnel_hops = [(h.host, h.device, h.kind) for h in res.hops if h.kind in ("vxlan", "wireguard")]
    assert tunnel_hops == devices
    nic = next(h for h in res.hops if h.kind == "nic" and h.host == "h1")
    if transport == "direct":
        assert "plain IP, no tunnel" in nic.detail
    else:
        assert nic.detail.startswith(f"underlay NIC: {transport} to 10.0.0.12")
    if transport == "wireguard":  # the peer named from the key, decrypted on h2's cnwg0 (not cnvx1)
        enc = next(h for h in res.hops if h.kind == "wireguard" and h.host == "h1")
        assert enc.extra["peer"] == "h2" and enc.extra["transport"] == "wireguard" and enc.expect == "tx"
        dec = next(h for h in res.hops if h.kind == "wireguard" and h.host == "h2")
        assert dec.expect == "rx" and dec.counter == ("host:h2", "cnwg0")
    j = res.to_json()
    assert j["transport"] == transport and j["recorded_transport"] == transport and j["peer"] == "h2"
    head = render_text(j).splitlines()[0]
    assert f"backend auto, transport {transport} (recorded for peer h2: {transport})" in head


def test_a_route_that_disagrees_with_the_record_is_a_warning():
    """applied.json says wireguard, the kernel still routes over vxlan: the trace shows the
    packet's real way and names the difference."""
    src, dst, hosts, cviews = world("vxlan", recorded="wireguard")
    res = trace(src, dst, hosts, cviews)
    assert res.transport == "vxlan" and res.recorded_transport == "wireguard"
    assert res.warnings == ["peer h2: crossnet records transport wireguard, but the kernel's routes send this "
                            "packet over vxlan"]


def test_the_probers_choice_wins_over_applied_json(tmp_path):
    """With a running agent the prober's transport.json is the record (as in `status`)."""
    (tmp_path / "transport.json").write_text(json.dumps({
        "updated": time.time(), "peers": {"h2": {"transport": "wireguard", "state": "established"}}}))
    src, dst, hosts, cviews = world("wireguard", recorded="vxlan", state_dirs={1: str(tmp_path)})
    assert recorded_transport(hosts["h1"], "10.32.1.7") == ("h2", "wireguard")
    assert recorded_transport(hosts["h1"], "10.32.0.7") is None  # h1's own subnet: no peer
    res = trace(src, dst, hosts, cviews)
    assert res.transport == res.recorded_transport == "wireguard" and not res.warnings


def test_other_backends_record_nothing():
    src, dst, hosts, cviews = world("vxlan")
    for h in hosts.values():
        h.ctx.backend = "vxlan"
    res = trace(src, dst, hosts, cviews)
    assert res.transport == "vxlan" and res.peer is None and "recorded_transport" not in res.to_json()


def test_wireguard_counters_read_autos_wireguard_device(monkeypatch):
    """--verify's WireGuard byte counters: auto's cnwg0, not its tunnel device cnvx1."""
    from crossnet.trace import verify

    seen = []

    def fake(host, dev, ip):
        seen.append(dev.name)
        return fake_wireguard_peer(host, dev, "10.32.1.1")

    monkeypatch.setattr(verify, "wireguard_peer", fake)
    _src, _dst, hosts, _cv = world("wireguard")
    assert verify.wireguard_counters(hosts["h1"]) == {KEYS[2]: (20, 10)} and seen == ["cnwg0"]
