"""Unit tests of crossnet.trace.ovs: parsing ofproto/trace, dump-ports and ovs-vsctl
output (samples recorded from OVS 3.1, userspace datapath; kernel-datapath samples
written after OVS 3.1's output format, see KERNEL_GRE_EGRESS), and the OVS step of
the hop walk with a fake Open vSwitch on both datapaths."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from crossnet.trace.model import Endpoint, HostSide, Link, Neigh, Route
from crossnet.trace.views import FakeView
from crossnet.trace.walker import Walker
from crossnet.trace.ovs import (
    OvsTracer,
    datapath_outputs,
    kernel_encap,
    parse_dump_ports,
    parse_oftrace,
    parse_set_tunnel,
    parse_tnl_push,
    parse_vsctl_tables,
    summarize_actions,
)

GRE_EGRESS = """\
Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31,nw_src=10.33.1.2,nw_dst=10.33.2.2,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,icmp_type=8,icmp_code=0

bridge("obr0")
--------------
 0. priority 0
    NORMAL
     -> forwarding to learned port
     -> output to native tunnel
     -> tunneling to 10.61.0.11 via br-phy
     -> tunneling from ee:7f:19:1b:0a:48 10.61.0.10 to f2:d2:71:57:e3:48 10.61.0.11

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=vh1,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31,nw_ecn=0,nw_frag=no
Datapath actions: tnl_push(tnl_port(gre_sys),header(size=38,type=3,eth(dst=f2:d2:71:57:e3:48,src=ee:7f:19:1b:0a:48,dl_type=0x0800),ipv4(src=10.61.0.10,dst=10.61.0.11,proto=47,tos=0,ttl=64,frag=0x4000),gre((flags=0x0,proto=0x6558))),out_port(br-phy)),eth0
"""

VXLAN_ACTIONS = ("tnl_push(tnl_port(vxlan_sys_4789),header(size=50,type=4,eth(dst=f2:d2:71:57:e3:48,"
                 "src=ee:7f:19:1b:0a:48,dl_type=0x0800),ipv4(src=10.61.0.10,dst=10.61.0.11,proto=17,tos=0,ttl=64,"
                 "frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x7)),out_port(br-phy)),eth0")

GRE_INGRESS = """\
Flow: icmp,tun_src=10.61.0.10,tun_dst=10.61.0.11,in_port="gre-h1",vlan_tci=0x0000,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31,nw_src=10.33.1.2,nw_dst=10.33.2.2

bridge("obr0")
--------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,tun_id=0,tun_src=10.61.0.10,tun_dst=10.61.0.11,in_port="gre-h1",nw_frag=no
Datapath actions: vh2
"""

EXPLICIT_RULE = """\
bridge("obr0")
--------------
 0. in_port=vh1, priority 100
    output:"gre-h2"
     -> output to native tunnel
     -> tunneling to 10.61.0.11 via br-phy

Datapath actions: tnl_push(tnl_port(gre_sys),header(size=42,type=3,eth(dst=f2:d2:71:57:e3:48,src=ee:7f:19:1b:0a:48,dl_type=0x0800),ipv4(src=10.61.0.10,dst=10.61.0.11,proto=47,tos=0,ttl=64,frag=0x4000),gre((flags=0x2000,proto=0x6558),key=0x5)),out_port(br-phy)),eth0
"""

DROP = """\
bridge("obr0")
--------------
 0. in_port="gre-h3", priority 200
    drop

Final flow: unchanged
Datapath actions: drop
"""

DUMP_PORTS = """\
OFPST_PORT reply (xid=0x2): 3 ports
  port LOCAL: rx pkts=0, bytes=0, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=0, bytes=0, drop=16, errs=0, coll=0
  port  "gre-h1": rx pkts=11, bytes=838, drop=?, errs=?, frame=?, over=?, crc=?
           tx pkts=27, bytes=2612, drop=?, errs=?, coll=?
  port  vh2: rx pkts=14, bytes=1104, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=20, bytes=1564, drop=0, errs=0, coll=0
"""

VSCTL = """\
{"data":[["br-phy",["set",[["uuid","p1"],["uuid","p2"]]]],["obr0",["set",[["uuid","p3"],["uuid","p4"]]]]],"headings":["name","ports"]}
{"data":[[["uuid","p1"],"br-phy",["uuid","i1"]],[["uuid","p4"],"gre-h2",["uuid","i2"]],[["uuid","p3"],"obr0",["uuid","i3"]],[["uuid","p2"],"eth0",["uuid","i4"]]],"headings":["_uuid","name","interfaces"]}
{"data":[[["uuid","i2"],"gre-h2","gre",["map",[["remote_ip","10.61.0.11"]]],1,"7e:36:dc:eb:74:be"]],"headings":["_uuid","name","type","options","ofport","mac_in_use"]}
"""


def test_parse_gre_egress():
    t = parse_oftrace(GRE_EGRESS)
    assert t.tunnel_remote == "10.61.0.11" and t.tunnel_via == "br-phy"
    assert t.encap == {"local": "10.61.0.10", "remote": "10.61.0.11", "type": "gre", "proto": "0x6558",
                       "out_port": "br-phy"}
    assert t.dp_outputs == ["eth0"] and not t.dropped and t.error is None
    assert t.rules[0].startswith("obr0: table 0 priority 0; NORMAL; -> forwarding to learned port")
    assert summarize_actions(t.datapath_actions) == "tnl_push[gre 10.61.0.10→10.61.0.11 out br-phy],eth0"


def test_parse_vxlan_push_and_outputs():
    enc = parse_tnl_push(VXLAN_ACTIONS)
    assert enc["type"] == "vxlan" and enc["vni"] == 7 and enc["port"] == 4789 and enc["remote"] == "10.61.0.11"
    assert datapath_outputs(VXLAN_ACTIONS) == ["eth0"]
    assert datapath_outputs("vh2") == ["vh2"]
    assert datapath_outputs("set(tunnel(tun_id=0x5)),vh2,vh3") == ["vh2", "vh3"]
    assert datapath_outputs("drop") == []


def test_parse_explicit_rule_key_ingress_and_drop():
    t = parse_oftrace(EXPLICIT_RULE)
    assert t.outputs == ["gre-h2"] and t.encap["key"] == 5 and t.encap["type"] == "gre"
    t = parse_oftrace(GRE_INGRESS)
    assert t.encap is None and t.dp_outputs == ["vh2"]
    t = parse_oftrace(DROP)
    assert t.dropped and t.dp_outputs == []
    t = parse_oftrace("ovs-appctl: cannot connect to \"/x/ovs-vswitchd.ctl\"\n")
    assert t.error and not t.datapath_actions


def test_parse_dump_ports_and_vsctl():
    assert parse_dump_ports(DUMP_PORTS) == {"LOCAL": (0, 0), "gre-h1": (27, 11), "vh2": (20, 14)}
    bridges, ports, ifaces = parse_vsctl_tables(VSCTL)
    assert [b["name"] for b in bridges] == ["br-phy", "obr0"]
    assert ifaces[0]["type"] == "gre"


# ---- the walk with a fake Open vSwitch ------------------------------------------------------
class FakeOvs:
    def __init__(self, bridges, ifaces, traces, stats=None):
        self.bridges = bridges
        self.port_bridge = {p: b for b, ps in bridges.items() for p in ps}
        self.ifaces = ifaces
        self.traces = traces  # in_port -> ofproto/trace text
        self.stats = stats or {}
        self.flows = []

    def oftrace(self, bridge, flow):
        self.flows.append((bridge, flow))
        in_port = flow.split(",")[0].split("=")[1]
        return parse_oftrace(self.traces[in_port])

    def port_stats(self):
        return self.stats

    def tunnels(self):
        return {n: i for n, i in self.ifaces.items() if i["type"] in ("gre", "vxlan")}

    def tunnel_to(self, remote, kind=None):
        return next((n for n, i in self.tunnels().items() if i["options"].get("remote_ip") == remote), None)


def _ovs_world():
    eps = {k: Endpoint(id=f"c{k}", address=f"10.33.{k}.2", host=f"h{k}", netns=f"/run/netns/c{k}", host_if=f"vh{k}",
                       mac=m) for k, m in ((1, "d2:dd:1b:68:5a:da"), (2, "06:55:e5:4c:ba:31"))}
    hosts, cviews = {}, {}
    for k in (1, 2):
        links = [Link(1, "lo", None), Link(2, "eth0", "veth", f"72:00:00:00:00:0{k}"),
                 Link(3, "br-phy", "tun", f"ee:00:00:00:00:0{k}", addresses=(f"10.61.0.1{k - 1}/20",)),
                 Link(4, "obr0", "tun", f"3e:00:00:00:00:0{k}"), Link(5, f"vh{k}", "veth", f"86:00:00:00:00:0{k}")]
        ctx = SimpleNamespace(host=f"h{k}", address=ipaddress.ip_address(f"10.61.0.1{k - 1}"), iface="eth0",
                              backend="ovs-gre", port=4789, subnet=ipaddress.ip_network(f"10.33.{k}.0/24"), peers=[])
        hosts[f"h{k}"] = HostSide(f"h{k}", ctx, None, FakeView(f"host:h{k}", links, [], [], []), containers=[eps[k]])
        cviews[f"c{k}"] = FakeView(f"ctr:c{k}", [Link(2, "eth0", "veth", eps[k].mac, addresses=(f"10.33.{k}.2/16",))],
                                   [Route("10.33.0.0/16", oif=2, scope=253)],
                                   [(2, Neigh("10.33.2.2", eps[2].mac, 2))] if k == 1 else [])
    tracer = OvsTracer.__new__(OvsTracer)
    tracer.missing = {}
    tracer.ovs = {
        "h1": FakeOvs({"obr0": ["obr0", "vh1", "gre-h2"], "br-phy": ["br-phy", "eth0"]},
                      {"gre-h2": {"type": "gre", "options": {"remote_ip": "10.61.0.11"}}}, {"vh1": GRE_EGRESS}),
        "h2": FakeOvs({"obr0": ["obr0", "vh2", "gre-h1"], "br-phy": ["br-phy", "eth0"]},
                      {"gre-h1": {"type": "gre", "options": {"remote_ip": "10.61.0.10"}}}, {"gre-h1": GRE_INGRESS}),
    }
    return eps, hosts, cviews, tracer


def test_walk_through_ovs_gre():
    eps, hosts, cviews, tracer = _ovs_world()
    w = Walker(eps[1], eps[2], hosts, cviews, tracer)
    w.run()
    got = [(h.host, h.device, h.kind) for h in w.hops]
    assert got == [
        ("h1", "eth0", "route"), ("h1", "eth0", "veth"), ("h1", "vh1", "veth"), ("h1", "obr0", "ovs"),
        ("h1", "gre-h2", "ovs-tunnel"), ("h1", "eth0", "nic"), ("h2", "eth0", "nic"), ("h2", "gre-h1", "ovs-tunnel"),
        ("h2", "obr0", "ovs"), ("h2", "vh2", "veth"), ("h2", "eth0", "veth"),
    ]
    assert w.complete and w.tunnel == "gre-h2"
    assert "port of OVS bridge obr0" in w.hops[2].detail
    tx = w.hops[4]
    assert tx.detail.startswith("encap gre 10.61.0.10 → 10.61.0.11 via br-phy") and tx.expect == "tx"
    assert tx.counter == ("ovs:h1", "obr0:gre-h2")
    assert w.hops[7].counter == ("ovs:h2", "obr0:gre-h1") and w.hops[7].expect == "rx"
    # the flows asked of OVS: the container's frame on h1, the tunnelled frame on h2
    (br, flow), = tracer.ovs["h1"].flows
    assert br == "obr0" and flow.startswith("in_port=vh1,icmp,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31")
    (br, flow), = tracer.ovs["h2"].flows
    assert flow.startswith("in_port=gre-h1,tun_src=10.61.0.10,tun_dst=10.61.0.11,icmp")


def test_ovs_drop_is_reported():
    eps, hosts, cviews, tracer = _ovs_world()
    tracer.ovs["h1"].traces["vh1"] = DROP
    w = Walker(eps[1], eps[2], hosts, cviews, tracer)
    w.run()
    assert w.hops[-1].kind == "ovs" and w.hops[-1].note == "dropped by OVS" and not w.complete


# ---- kernel datapath: set(tunnel(...)),<vport> instead of tnl_push ----------------------------
# What ofproto/trace prints with datapath_type=system (OVS 3.1): the OpenFlow part is the
# same, the tunnel is "output to kernel tunnel", and the datapath action sets the tunnel
# metadata and outputs to the flow-based vport that encapsulates (gre_sys, vxlan_sys_4789);
# the kernel then routes the outer packet. tun_id/src/tp_dst appear only when non-zero.
KERNEL_GRE_EGRESS = """\
Flow: icmp,in_port=LOCAL,vlan_tci=0x0000,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31,nw_src=10.33.1.2,nw_dst=10.33.2.2,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,icmp_type=8,icmp_code=0

bridge("obr0")
--------------
 0. in_port=LOCAL,dl_dst=06:55:e5:4c:ba:31, priority 90, cookie 0xc055e7
    output:"gre-h2"
     -> output to kernel tunnel

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=LOCAL,dl_dst=06:55:e5:4c:ba:31,nw_ecn=0,nw_frag=no
Datapath actions: set(tunnel(dst=10.61.0.11,ttl=64,flags(df))),gre_sys
"""

KERNEL_VXLAN_EGRESS = KERNEL_GRE_EGRESS.replace('output:"gre-h2"', 'output:"vxl-h2"').replace(
    "set(tunnel(dst=10.61.0.11,ttl=64,flags(df))),gre_sys",
    "set(tunnel(tun_id=0x7,dst=10.61.0.11,ttl=64,tp_dst=4789,flags(df|key))),vxlan_sys_4789")

KERNEL_GRE_INGRESS = """\
Flow: icmp,tun_src=10.61.0.10,tun_dst=10.61.0.11,in_port="gre-h1",vlan_tci=0x0000,dl_src=d2:dd:1b:68:5a:da,dl_dst=06:55:e5:4c:ba:31,nw_src=10.33.1.2,nw_dst=10.33.2.2

bridge("obr0")
--------------
 0. in_port="gre-h1", priority 100, cookie 0xc055e7
    output:vh2

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,tun_src=10.61.0.10,tun_dst=10.61.0.11,tun_tos=0,tun_flags=-df-csum-key,in_port="gre-h1",nw_frag=no
Datapath actions: vh2
"""


def test_parse_kernel_datapath_gre_and_vxlan():
    t = parse_oftrace(KERNEL_GRE_EGRESS)
    assert t.encap == {"kernel": True, "remote": "10.61.0.11", "vport": "gre_sys", "type": "gre"}
    assert t.outputs == ["gre-h2"] and t.dp_outputs == ["gre_sys"] and not t.dropped and t.error is None
    assert t.tunnel_remote is None  # no "tunneling to" line: the kernel routes the outer packet
    assert "output to kernel tunnel" in t.rules[0]
    t = parse_oftrace(KERNEL_VXLAN_EGRESS)
    assert t.encap == {"kernel": True, "remote": "10.61.0.11", "vport": "vxlan_sys_4789", "type": "vxlan",
                       "vni": 7, "port": 4789}
    # both forms side by side: the userspace one is still tnl_push
    assert parse_oftrace(GRE_EGRESS).encap["type"] == "gre" and "kernel" not in parse_oftrace(GRE_EGRESS).encap


def test_parse_set_tunnel_variants():
    # a datapath port number instead of a name, a GRE key, an explicit local_ip
    enc = parse_set_tunnel("set(tunnel(tun_id=0x5,src=10.61.0.10,dst=10.61.0.11,ttl=64,flags(df|key))),3")
    assert enc == {"kernel": True, "remote": "10.61.0.11", "local": "10.61.0.10", "vport": "3", "type": "tunnel",
                   "key": 5}
    # the OVSDB tunnel port completes it: a vxlan port's key is the vni, the source is this host
    done = kernel_encap(enc, {"type": "vxlan", "options": {"remote_ip": "10.61.0.11", "dst_port": "8472"}}, "10.61.0.10")
    assert done["type"] == "vxlan" and done["vni"] == 5 and "key" not in done and done["port"] == 8472
    gre = kernel_encap(parse_set_tunnel("set(tunnel(dst=10.61.0.11,ttl=64,flags(df))),gre_sys"),
                       {"type": "gre", "options": {"remote_ip": "10.61.0.11"}}, "10.61.0.10")
    assert gre["local"] == "10.61.0.10" and "key" not in gre and "vni" not in gre
    # metadata without a destination (e.g. tun_id for a local port) is no encapsulation
    assert parse_set_tunnel("set(tunnel(tun_id=0x5)),vh2,vh3") is None
    assert parse_set_tunnel("vh2") is None
    # a flood: the first tunnel with a destination counts
    flood = parse_set_tunnel("set(tunnel(dst=10.61.0.12,ttl=64,flags(df))),gre_sys,"
                             "set(tunnel(dst=10.61.0.13,ttl=64,flags(df))),gre_sys")
    assert flood["remote"] == "10.61.0.12"
    assert datapath_outputs("set(tunnel(dst=10.61.0.11,ttl=64,flags(df))),gre_sys") == ["gre_sys"]
    assert datapath_outputs("set(tunnel(dst=10.61.0.11,ttl=64,flags(df))),output:4") == ["4"]


def _kernel_world(vxlan: bool = False):
    """Two hosts on the kernel datapath: the NIC keeps the underlay address (no br-phy),
    the tunnel vport exists in the kernel, the kernel routes the outer packet."""
    eps, hosts, cviews, tracer = _ovs_world()
    tport = "vxl-h{}" if vxlan else "gre-h{}"
    vport = Link(6, "vxlan_sys_4789", "vxlan", "aa:00:00:00:00:06", info={"IFLA_VXLAN_ID": 0}) if vxlan else \
        Link(6, "gre_sys", "gretap", "aa:00:00:00:00:06")
    for k in (1, 2):
        links = [Link(1, "lo", None), Link(2, "eth0", None, f"72:00:00:00:00:0{k}", addresses=(f"10.61.0.1{k - 1}/20",)),
                 Link(4, "obr0", "openvswitch", f"3e:00:00:00:00:0{k}"), Link(5, f"vh{k}", "veth", f"86:00:00:00:00:0{k}"),
                 vport]
        peer = 3 - k
        nb = [(2, Neigh(f"10.61.0.1{peer - 1}", f"72:00:00:00:00:0{peer}", 2))]
        hosts[f"h{k}"].view = FakeView(f"host:h{k}", links, [Route("10.61.0.0/20", oif=2, scope=253)], nb, [])
        egress = (KERNEL_VXLAN_EGRESS if vxlan else KERNEL_GRE_EGRESS).replace("in_port=LOCAL", "in_port=vh1")
        ingress = KERNEL_GRE_INGRESS.replace("gre-h1", "vxl-h1") if vxlan else KERNEL_GRE_INGRESS
        kind = "vxlan" if vxlan else "gre"
        opts = {"remote_ip": f"10.61.0.1{peer - 1}", **({"key": "7"} if vxlan else {})}
        tracer.ovs[f"h{k}"] = FakeOvs({"obr0": ["obr0", f"vh{k}", tport.format(peer)]},
                                      {tport.format(peer): {"type": kind, "options": opts}},
                                      {"vh1": egress} if k == 1 else {tport.format(1): ingress})
    return eps, hosts, cviews, tracer


def test_walk_through_ovs_kernel_datapath_gre():
    eps, hosts, cviews, tracer = _kernel_world()
    w = Walker(eps[1], eps[2], hosts, cviews, tracer)
    w.run()
    got = [(h.host, h.device, h.kind) for h in w.hops]
    assert got == [
        ("h1", "eth0", "route"), ("h1", "eth0", "veth"), ("h1", "vh1", "veth"), ("h1", "obr0", "ovs"),
        ("h1", "gre-h2", "ovs-tunnel"), ("h1", "eth0", "route"), ("h1", "eth0", "nic"),
        ("h2", "eth0", "nic"), ("h2", "gre-h1", "ovs-tunnel"), ("h2", "obr0", "ovs"), ("h2", "vh2", "veth"),
        ("h2", "eth0", "veth"),
    ], got
    assert w.complete and w.tunnel == "gre-h2"
    tx = w.hops[4]
    # the same tunnel hop as with tnl_push: type, outer addresses, the OVS port's counter
    assert tx.detail == "encap gre 10.61.0.10 → 10.61.0.11 via kernel vport gre_sys", tx.detail
    assert tx.expect == "tx" and tx.counter == ("ovs:h1", "obr0:gre-h2")
    assert w.hops[5].detail.startswith("underlay route 10.61.0.0/20 dev eth0")
    assert w.hops[6].detail == "underlay NIC: gre to 10.61.0.11" and w.hops[6].counter == ("host:h1", "eth0")
    assert w.hops[8].detail == "decap gre from 10.61.0.10 on obr0" and w.hops[8].counter == ("ovs:h2", "obr0:gre-h1")
    (_, flow), = tracer.ovs["h2"].flows
    assert flow.startswith("in_port=gre-h1,tun_src=10.61.0.10,tun_dst=10.61.0.11,icmp")


def test_walk_through_ovs_kernel_datapath_vxlan():
    eps, hosts, cviews, tracer = _kernel_world(vxlan=True)
    w = Walker(eps[1], eps[2], hosts, cviews, tracer)
    w.run()
    assert w.complete and w.tunnel == "vxl-h2", [(h.host, h.device, h.kind, h.detail) for h in w.hops]
    (tx,) = [h for h in w.hops if h.kind == "ovs-tunnel" and h.host == "h1"]
    assert tx.detail == "encap vxlan vni 7 10.61.0.10 → 10.61.0.11:4789 via kernel vport vxlan_sys_4789"
    (nic,) = [h for h in w.hops if h.kind == "nic" and h.host == "h1"]
    assert nic.detail == "underlay NIC: vxlan to 10.61.0.11 udp/4789"
    # the peer's metadata vxlan device (vni 0) is not mistaken for a plain vxlan device
    (rx,) = [h for h in w.hops if h.kind == "ovs-tunnel" and h.host == "h2"]
    assert rx.device == "vxl-h1" and rx.detail == "decap vxlan vni 7 from 10.61.0.10 on obr0"
    (_, flow), = tracer.ovs["h2"].flows
    assert "tun_id=7" in flow


def test_make_tracer_only_for_hosts_running_an_ovs_backend(monkeypatch):
    """trace_hosts gets the OVS step from the caller (trace_ovs.make_tracer): crossnet.trace
    does not import trace_ovs; make_tracer itself says None when no host runs OVS."""
    import shutil

    from crossnet.trace import ovs as trace_ovs

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    _, hosts, _, _ = _ovs_world()
    assert isinstance(trace_ovs.make_tracer(hosts, {}), OvsTracer)
    for h in hosts.values():
        h.ctx.backend = "vxlan"
    assert trace_ovs.make_tracer(hosts, {}) is None
