"""Unit tests of crossnet.trace: the hop walk over fake namespaces (no kernel), the
probe-frame classifier, counter deltas and the text rendering."""

from __future__ import annotations

import ipaddress
import socket
import struct
from types import SimpleNamespace

import pytest

from crossnet.cli.trace import render_text
from crossnet.trace.model import (
    Endpoint,
    FdbEntry,
    HostSide,
    Hop,
    Link,
    Neigh,
    Route,
    fmt_route,
    lpm,
    matching_route,
)
from crossnet.trace.run import find_container, owner_of, resolve_dst
from crossnet.trace.verify import apply_deltas, classify_frame
from crossnet.trace.views import FakeView
from crossnet.trace.walker import Walker

PERM, REACH = 0x80, 0x02
LINK_SCOPE = 253


# ---- fake worlds -------------------------------------------------------------------------
def _ctx(name, address, subnet, backend, peers=()):
    return SimpleNamespace(host=name, address=ipaddress.ip_address(address), iface="eth0", backend=backend, port=4789,
                           subnet=ipaddress.ip_network(subnet),
                           peers=[SimpleNamespace(name=n, subnet=ipaddress.ip_network(s)) for n, s in peers])


def _host_view(k: int, backend: str, peer: int, nic_macs: dict, vtep: dict, missing_fdb=False, extra_routes=()):
    """Host hK (underlay 10.0.0.1K, subnet 10.32.(K-1).0/24) with one container cK."""
    sub = f"10.32.{k - 1}"
    psub = f"10.32.{peer - 1}"
    br_mac, c_mac = f"0a:00:00:00:0{k}:01", f"0a:00:00:00:0{k}:02"
    links = [
        Link(1, "lo", None, "00:00:00:00:00:00", addresses=("127.0.0.1/8",)),
        Link(2, "eth0", None, nic_macs[k], addresses=(f"10.0.0.1{k}/24",)),
        Link(3, "cn0", "bridge", br_mac, addresses=(f"{sub}.1/24",)),
        Link(5, f"cnvc{k}", "veth", br_mac, master=3),
    ]
    routes = [Route("10.0.0.0/24", oif=2, scope=LINK_SCOPE, proto=2), Route(f"{sub}.0/24", oif=3, scope=LINK_SCOPE, proto=2)]
    neighs = [(2, Neigh(f"10.0.0.1{peer}", nic_macs[peer], REACH)), (3, Neigh(f"{sub}.2", c_mac, REACH))]
    fdb = [FdbEntry(br_mac, 5, master=3, state=PERM), FdbEntry(c_mac, 5, master=3, state=REACH)]
    if backend == "vxlan":
        links.append(Link(4, "cnvx1", "vxlan", vtep[k], info={"IFLA_VXLAN_ID": 1, "IFLA_VXLAN_PORT": 4789,
                                                              "IFLA_VXLAN_LOCAL": f"10.0.0.1{k}", "IFLA_VXLAN_LINK": 2},
                          addresses=(f"{sub}.0/32",)))
        routes.append(Route(f"{psub}.0/24", gateway=f"{psub}.0", oif=4, flags=0x4, proto=4))
        neighs.append((4, Neigh(f"{psub}.0", vtep[peer], PERM)))
        if not missing_fdb:
            fdb.append(FdbEntry(vtep[peer], 4, dst=f"10.0.0.1{peer}", state=PERM))
    else:  # host-gw
        routes.append(Route(f"{psub}.0/24", gateway=f"10.0.0.1{peer}", oif=2, proto=4))
    routes.extend(extra_routes)
    return FakeView(f"host:h{k}", links, routes, neighs, fdb)


def _container_view(k: int):
    sub = f"10.32.{k - 1}"
    links = [Link(1, "lo", None), Link(2, "eth0", "veth", f"0a:00:00:00:0{k}:02", addresses=(f"{sub}.2/24",))]
    routes = [Route("0.0.0.0/0", gateway=f"{sub}.1", oif=2), Route(f"{sub}.0/24", oif=2, scope=LINK_SCOPE, proto=2)]
    neighs = [(2, Neigh(f"{sub}.1", f"0a:00:00:00:0{k}:01", REACH))]
    return FakeView(f"ctr:c{k}", links, routes, neighs)


def world(backend="vxlan", with_peer=True, missing_fdb=False):
    nic = {1: "0e:00:00:00:00:11", 2: "0e:00:00:00:00:12"}
    vtep = {1: "02:00:00:00:00:a1", 2: "02:00:00:00:00:a2"}
    eps = {k: Endpoint(id=f"c{k}", address=f"10.32.{k - 1}.2", host=f"h{k}", netns=f"/run/netns/c{k}",
                       host_if=f"cnvc{k}", mac=f"0a:00:00:00:0{k}:02") for k in (1, 2)}
    hosts = {}
    for k, peer in ((1, 2), (2, 1)):
        if k == 2 and not with_peer:
            continue
        ctx = _ctx(f"h{k}", f"10.0.0.1{k}", f"10.32.{k - 1}.0/24", backend, [(f"h{peer}", f"10.32.{peer - 1}.0/24")])
        hosts[f"h{k}"] = HostSide(f"h{k}", ctx, None, _host_view(k, backend, peer, nic, vtep, missing_fdb),
                                  containers=[eps[k]])
    cviews = {"c1": _container_view(1)}
    if with_peer:
        cviews["c2"] = _container_view(2)
    return eps[1], eps[2], hosts, cviews


def walk(backend="vxlan", **kw):
    src, dst, hosts, cviews = world(backend, **kw)
    w = Walker(src, dst, hosts, cviews)
    w.run()
    return w


# ---- the walk --------------------------------------------------------------------------------
def test_vxlan_path_hop_by_hop():
    w = walk("vxlan")
    kinds = [(h.host, h.device, h.kind) for h in w.hops]
    assert kinds == [
        ("h1", "eth0", "route"), ("h1", "eth0", "veth"), ("h1", "cnvc1", "veth"), ("h1", "cn0", "bridge"),
        ("h1", "cnvx1", "route"), ("h1", "cnvx1", "vxlan"), ("h1", "eth0", "route"), ("h1", "eth0", "nic"),
        ("h2", "eth0", "nic"), ("h2", "cnvx1", "vxlan"), ("h2", "cn0", "route"), ("h2", "cn0", "bridge"),
        ("h2", "cnvc2", "veth"), ("h2", "eth0", "veth"),
    ]
    assert w.complete and w.tunnel == "cnvx1" and w.handoff is None
    d = [h.detail for h in w.hops]
    assert d[0].startswith("route default via 10.32.0.1 dev eth0; neighbour 10.32.0.1 lladdr 0a:00:00:00:01:01")
    assert "is cn0's own address" in d[3]
    assert d[4] == "route 10.32.1.0/24 via 10.32.1.0 dev cnvx1 onlink"
    assert "fdb 02:00:00:00:00:a2 dst 10.0.0.12" in d[5]
    assert "encap vxlan vni 1 → 10.0.0.12:4789" in d[5]
    assert "decap vxlan vni 1" in d[9]
    assert "fdb 0a:00:00:00:02:02 → port cnvc2" in d[11]
    # the hops that carry the probe and in which direction their counters must move
    expect = [(h.device, h.expect) for h in w.hops if h.expect]
    assert expect == [("eth0", "tx"), ("cnvc1", "rx"), ("cn0", "rx"), ("cnvx1", "tx"), ("eth0", "tx"),
                      ("eth0", "rx"), ("cnvx1", "rx"), ("cn0", "tx"), ("cnvc2", "tx"), ("eth0", "rx")]
    # container hops are tagged with the container, counters read from its view
    assert w.hops[1].netns == "c1" and w.hops[1].counter == ("ctr:c1", "eth0")
    assert w.hops[-1].counter == ("ctr:c2", "eth0")


def test_host_gw_plain_route_via_peer_underlay_no_tunnel():
    w = walk("host-gw")
    assert w.tunnel is None and w.complete
    assert not any(h.kind == "vxlan" for h in w.hops)
    route = next(h for h in w.hops if h.kind == "route" and h.host == "h1" and h.netns is None)
    assert route.detail == "route 10.32.1.0/24 via 10.0.0.12 dev eth0"
    nic = next(h for h in w.hops if h.kind == "nic" and h.host == "h1")
    assert nic.device == "eth0" and "plain IP, no tunnel" in nic.detail and "0e:00:00:00:00:12" in nic.detail
    assert [(h.host, h.kind) for h in w.hops][-6:] == [("h1", "nic"), ("h2", "nic"), ("h2", "route"),
                                                       ("h2", "bridge"), ("h2", "veth"), ("h2", "veth")]
    assert w.hops[-1].detail == "c2 receives (10.32.1.2)"


def test_missing_vxlan_fdb_entry_is_reported_as_drop():
    w = walk("vxlan", missing_fdb=True)
    vx = next(h for h in w.hops if h.kind == "vxlan")
    assert "no fdb entry" in vx.detail and "dropped" in vx.note
    assert not w.complete


def test_without_peer_view_the_walk_hands_off():
    w = walk("vxlan", with_peer=False)
    assert not w.complete and w.handoff == "h2"
    last = w.hops[-1]
    assert last.host == "h2" and "not visible" in last.detail and last.expect is None


def test_same_host_destination_is_bridged():
    src, _dst, hosts, cviews = world("vxlan")
    h1 = hosts["h1"]
    # a second container on h1
    c3 = Endpoint(id="c3", address="10.32.0.3", host="h1", netns="/run/netns/c3", host_if="cnvc3", mac="0a:00:00:00:01:03")
    h1.containers.append(c3)
    h1.view._links.append(Link(6, "cnvc3", "veth", "0a:00:00:00:01:01", master=3))
    h1.view._fdb.append(FdbEntry("0a:00:00:00:01:03", 6, master=3, state=REACH))
    cviews["c1"]._neighs.append((2, Neigh("10.32.0.3", "0a:00:00:00:01:03", REACH)))
    w = Walker(src, c3, hosts, cviews)
    w.run()
    assert [(h.device, h.kind) for h in w.hops] == [("eth0", "route"), ("eth0", "veth"), ("cnvc1", "veth"),
                                                    ("cn0", "bridge"), ("cnvc3", "veth")]
    assert w.hops[3].detail == "fdb 0a:00:00:00:01:03 → port cnvc3" and w.hops[3].expect is None
    assert w.complete  # delivered to c3's port (no view of c3's namespace here)


def test_unresolved_neighbour_uses_crossnets_record():
    src, dst, hosts, cviews = world("vxlan")
    hv = hosts["h2"].view
    hv._neighs = [n for n in hv._neighs if n[1].ip != "10.32.1.2"]
    hv._fdb = [e for e in hv._fdb if e.mac != "0a:00:00:00:02:02"]
    w = Walker(src, dst, hosts, cviews)
    w.run()
    br = [h for h in w.hops if h.kind == "bridge"][-1]
    assert "its MAC per crossnet is 0a:00:00:00:02:02" in br.detail and "flooded" in br.detail
    assert w.complete


def test_no_route_in_container():
    src, dst, hosts, cviews = world("vxlan")
    cviews["c1"]._routes = []
    w = Walker(src, dst, hosts, cviews)
    w.run()
    assert len(w.hops) == 1 and "no route" in w.hops[0].detail and not w.complete


# ---- routes --------------------------------------------------------------------------------
def test_lpm_and_matching_route_and_format():
    routes = [Route("0.0.0.0/0", gateway="10.0.0.1", oif=2), Route("10.32.0.0/16", oif=3),
              Route("10.32.1.0/24", gateway="10.32.1.0", oif=4, flags=0x4)]
    assert lpm(routes, "10.32.1.7").dst == "10.32.1.0/24"
    assert lpm(routes, "8.8.8.8").dst == "0.0.0.0/0"
    got = Route("10.32.1.7/32", gateway="10.32.1.0", oif=4)
    m = matching_route(routes, "10.32.1.7", got)
    names = {2: "eth0", 3: "cn0", 4: "cnvx1"}
    assert fmt_route(m, names.get) == "10.32.1.0/24 via 10.32.1.0 dev cnvx1 onlink"
    assert fmt_route(routes[0], names.get) == "default via 10.0.0.1 dev eth0"
    # a route get answer with no table entry behind it is shown as a /32
    assert matching_route(routes, "10.32.1.7", Route("x/32", gateway="9.9.9.9", oif=2)).dst == "10.32.1.7/32"


# ---- probe frames ----------------------------------------------------------------------------
def _eth(payload: bytes, etype=0x0800) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + payload


def _ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def _icmp(typ=8) -> bytes:
    return struct.pack("!BBHHH", typ, 0, 0, 1, 1) + b"x" * 16


PROBE = _eth(_ip("10.32.0.2", "10.32.1.2", 1, _icmp()))


def test_classify_plain_vxlan_gre():
    assert classify_frame(PROBE, "10.32.0.2", "10.32.1.2") == "plain"
    vx = _eth(_ip("10.0.0.11", "10.0.0.12", 17, struct.pack("!HHHH", 40000, 4789, 0, 0) + b"\x08" + b"\0" * 7 + PROBE))
    assert classify_frame(vx, "10.32.0.2", "10.32.1.2") == "vxlan"
    assert classify_frame(vx, "10.32.0.2", "10.32.1.2", vxlan_ports=(8472,)) is None
    gre = _eth(_ip("10.0.0.11", "10.0.0.12", 47, struct.pack("!HH", 0x2000, 0x6558) + b"\0\0\0\x01" + PROBE))
    assert classify_frame(gre, "10.32.0.2", "10.32.1.2") == "gre"
    gre_ip = _eth(_ip("10.0.0.11", "10.0.0.12", 47, struct.pack("!HH", 0, 0x0800) + PROBE[14:]))
    assert classify_frame(gre_ip, "10.32.0.2", "10.32.1.2") == "gre"
    # a reply, another pair, ARP, truncated frames: not the probe
    assert classify_frame(_eth(_ip("10.32.1.2", "10.32.0.2", 1, _icmp(0))), "10.32.0.2", "10.32.1.2") is None
    assert classify_frame(PROBE, "10.32.0.2", "10.32.1.3") is None
    assert classify_frame(_eth(b"\0" * 28, 0x0806), "10.32.0.2", "10.32.1.2") is None
    assert classify_frame(PROBE[:20], "10.32.0.2", "10.32.1.2") is None
    vlan = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!HHH", 0x8100, 5, 0x0800) + PROBE[14:]
    assert classify_frame(vlan, "10.32.0.2", "10.32.1.2") == "plain"


# ---- counters --------------------------------------------------------------------------------
def test_apply_deltas_flags_hops_that_did_not_move():
    hops = [
        Hop("h1", "cnvx1", "vxlan", "", expect="tx", counter=("host:h1", "cnvx1")),
        Hop("h1", "eth0", "nic", "", expect="tx", counter=("host:h1", "eth0")),
        Hop("h2", "cnvx1", "vxlan", "", expect="rx", counter=("host:h2", "cnvx1")),
        Hop("h1", "cn0", "bridge", "", expect=None, counter=None),
        Hop("h2", "gone", "veth", "", expect="tx", counter=("host:h2", "gone")),
    ]
    before = {"host:h1": {"cnvx1": (100, 100), "eth0": (5, 5)}, "host:h2": {"cnvx1": (0, 0), "gone": (0, 0)}}
    after = {"host:h1": {"cnvx1": (120, 120), "eth0": (26, 6)}, "host:h2": {"cnvx1": (0, 7)}}
    apply_deltas(hops, before, after, sent=20)
    assert (hops[0].tx_delta, hops[0].rx_delta, hops[0].moved) == (20, 20, True)
    assert hops[1].moved is True
    assert hops[2].moved is False and "moved by 7 only" in hops[2].note
    assert hops[3].moved is None and hops[3].tx_delta is None
    assert hops[4].moved is None and "no counters" in hops[4].note


def test_render_text_numbered_with_counters():
    w = walk("vxlan")
    for h in w.hops:
        if h.expect:
            h.tx_delta, h.rx_delta, h.moved = 20, 20, True
    from crossnet.trace.model import TraceResult

    src, dst, _, _ = world()
    res = TraceResult(src, dst, "vxlan", w.hops, tunnel="cnvx1", complete=True, verified=True,
                      probe={"sent": 20, "received": 20})
    text = render_text(res.to_json())
    lines = text.splitlines()
    assert lines[0] == "trace c1 (10.32.0.2 on h1) → c2 (10.32.1.2 on h2): backend vxlan, transport vxlan, tunnel cnvx1"
    assert lines[1].lstrip().startswith("1. h1/c1")
    assert "counters tx +20 rx +20 (expect tx) ✓ moved" in text
    assert text.splitlines()[-1].startswith("verified:")
    data = res.to_json()
    assert set(data["hops"][0]) >= {"host", "device", "kind", "detail", "tx_delta", "rx_delta", "moved"}
    assert data["tunnel"] == "cnvx1" and data["verified"] is True


# ---- naming SRC / DST ------------------------------------------------------------------------
def test_find_and_resolve_endpoints():
    c = Endpoint(id="lab-h1-c1", address="10.32.0.2", host="h1", netns="/run/netns/lab-h1-c1", host_if="cnvx")
    assert find_container([c], "lab-h1-c1") is c
    assert find_container([c], "/run/netns/lab-h1-c1") is c
    assert find_container([c], "other") is None
    ctx = _ctx("h1", "10.0.0.11", "10.32.0.0/24", "vxlan", [("h2", "10.32.1.0/24")])
    assert owner_of("10.32.1.9", [ctx]) == "h2" and owner_of("192.0.2.1", [ctx]) is None
    assert resolve_dst("10.32.0.2", [[c]], [ctx]) is c
    ip = resolve_dst("10.32.1.1", [[c]], [ctx])
    assert ip.id == "10.32.1.1" and ip.host == "h2" and not ip.is_container
    from crossnet.errors import ConfigError

    with pytest.raises(ConfigError, match="DST"):
        resolve_dst("lab-h2-c1", [[c]], [ctx])
