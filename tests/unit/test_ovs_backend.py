"""ovs-gre / ovs-vxlan backends without a kernel or OVS: desired resources, split-horizon
flows, names, JSON round-trip, dry-run text, errors when Open vSwitch is not running,
refusal of OVS bridges/ports crossnet did not create (fake OVSDB), and what can be
checked of the kernel datapath without the openvswitch module."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest

from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, Peer
from crossnet.ovs import db as ovsdb
from crossnet.ovs.resources import (
    AddressMove,
    DevIpv6Off,
    OvsBridge,
    OvsFlows,
    OvsPort,
    TunnelNeighbours,
)
from crossnet.plan.resources import Enslave, NftTable, Resource, Route


def ctx_for(backend: str, peers: int = 3, host: str = "h1", port: int = 4789, names: list[str] | None = None) -> HostContext:
    b = get_backend(backend)
    names = names or [f"h{i}" for i in range(2, peers + 2)]
    return HostContext(
        cluster_name="c", backend=backend, host=host, address=IPv4Address("10.9.0.10"), iface="eth0",
        subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"),
        gateway=IPv4Address("10.32.0.1"), prefixlen=24, bridge="cn0", underlay_mtu=1500,
        mtu=1500 - b.overhead, masquerade=False, vni=7, port=port, nic_mac="02:00:00:00:00:10",
        peers=[
            Peer(n, IPv4Address(f"10.9.0.{11 + i}"), IPv4Network(f"10.32.{i + 1}.0/24"),
                 b.host_data("c", n, IPv4Address(f"10.9.0.{11 + i}")))
            for i, n in enumerate(names)
        ],
    )


@pytest.fixture(autouse=True)
def userspace(monkeypatch):
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "netdev")


def test_overheads_and_names():
    assert get_backend("ovs-gre").overhead == 38
    assert get_backend("ovs-vxlan").overhead == 50
    assert get_backend("ovs-gre").name == "ovs-gre" and get_backend("ovs-vxlan").name == "ovs-vxlan"


@pytest.mark.parametrize("backend", ["ovs-gre", "ovs-vxlan"])
def test_resources_userspace_datapath(backend):
    b = get_backend(backend)
    ctx = ctx_for(backend)
    res = b.resources(ctx)
    keys = [r.key() for r in res]
    assert len(keys) == len(set(keys))
    # br-phy holds the NIC, the address moves there, the kernel is kept off the NIC
    assert isinstance(res[0], OvsBridge) and res[0].name == "br-phy" and res[0].hwaddr == ctx.nic_mac
    assert any(isinstance(r, OvsPort) and r.bridge == "br-phy" and r.name == "eth0" for r in res)
    assert any(isinstance(r, AddressMove) and r.nic == "eth0" and r.dev == "br-phy" for r in res)
    nft = next(r for r in res if isinstance(r, NftTable))
    assert nft.family == "netdev" and 'device "eth0"' in nft.body and "policy drop" in nft.body
    overlay = next(r for r in res if isinstance(r, OvsBridge) and r.name == "cnovs0")
    # IPv6 off on cn0 and cnovs0 before the internal port brings them up (DevIpv6Off)
    at = {r.key(): i for i, r in enumerate(res)}
    enslave = next(i for i, r in enumerate(res) if isinstance(r, Enslave) and r.dev == "cnovs0")
    for dev in ("cn0", "cnovs0"):
        off = at[f"sysctl:net.ipv6.conf.{dev}.disable_ipv6"]
        assert res[off] == DevIpv6Off(f"net.ipv6.conf.{dev}.disable_ipv6", "1") and off < enslave
    assert at["sysctl:net.ipv6.conf.cnovs0.disable_ipv6"] > res.index(overlay)
    assert overlay.datapath == "netdev" and overlay.fail_mode == "secure" and overlay.mtu == ctx.mtu
    tunnels = [r for r in res if isinstance(r, OvsPort) and r.bridge == "cnovs0"]
    assert [t.options["remote_ip"] for t in tunnels] == [str(p.address) for p in ctx.peers]
    assert {t.type for t in tunnels} == {"gre" if backend == "ovs-gre" else "vxlan"}
    flows_at = next(i for i, r in enumerate(res) if isinstance(r, OvsFlows))
    assert all(res.index(t) < flows_at for t in tunnels)  # ports exist before flows name them
    assert isinstance(res[-1], TunnelNeighbours)
    routes = [r for r in res if isinstance(r, Route)]
    assert [(r.dst, r.gateway, r.dev, r.onlink) for r in routes] == [
        (str(p.subnet), str(p.subnet.network_address + 1), "cn0", True) for p in ctx.peers
    ]


def test_kernel_datapath_keeps_the_nic_alone(monkeypatch):
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "system")
    b = get_backend("ovs-gre")
    res = b.resources(ctx_for("ovs-gre"))
    assert not any(isinstance(r, (AddressMove, NftTable, TunnelNeighbours)) for r in res)
    assert not any(isinstance(r, OvsBridge) and r.name == "br-phy" for r in res)
    assert next(r for r in res if isinstance(r, OvsBridge)).datapath == "system"


def test_split_horizon_flows():
    b = get_backend("ovs-gre")
    ctx = ctx_for("ovs-gre", peers=4)
    flows = b.flows(ctx)
    tunnels = [b.tunnel_port(p) for p in ctx.peers]
    for flow in flows:
        m = re.search(r"in_port=([\w-]+)", flow)
        outs = re.findall(r"output:([\w-]+)", flow)
        if m and m.group(1) in tunnels:
            assert outs == ["LOCAL"], flow  # from a tunnel: local only, never another tunnel
    bcast = next(f for f in flows if "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00" in f)
    assert "in_port=LOCAL" in bcast and re.findall(r"output:([\w-]+)", bcast) == tunnels
    for p, t in zip(ctx.peers, tunnels):
        assert f"in_port=LOCAL,dl_dst={p.data['gw_mac']},actions=output:{t}" in " ".join(flows)
    assert flows[-1].endswith("priority=0,actions=drop")
    assert all("cookie=0xc055e7" in f for f in flows)
    # no peers: nothing to flood to
    lonely = b.flows(ctx_for("ovs-gre", peers=0, names=[]))
    assert any("dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=drop" in f for f in lonely)


def test_vxlan_options_and_port_names():
    b = get_backend("ovs-vxlan")
    ctx = ctx_for("ovs-vxlan", port=8472, names=["a-very-long-host-name-1", "a-very-long-host-name-2", "x"])
    ports = [r for r in b.resources(ctx) if isinstance(r, OvsPort) and r.bridge == "cnovs0"]
    assert ports[0].options == {"remote_ip": "10.9.0.11", "key": "7", "dst_port": "8472"}
    names = [p.name for p in ports]
    assert all(len(n) <= 15 for n in names) and len(set(names)) == 3 and names[2] == "vxl-x"
    gre = get_backend("ovs-gre")
    assert [r.options for r in gre.resources(ctx_for("ovs-gre", peers=1)) if isinstance(r, OvsPort) and r.type] == [
        {"remote_ip": "10.9.0.11"}
    ]


def test_a_peer_named_like_another_peers_hashed_port_claims_the_same_port():
    # "worker-node-0001" is too long for "gre-<name>": its port is gre-<8 hex of its sha1>,
    # which is also the literal port of a peer named with those 8 hex digits
    import hashlib

    b = get_backend("ovs-gre")
    twin = hashlib.sha1(b"worker-node-0001").hexdigest()[:8]
    ctx = ctx_for("ovs-gre", names=["worker-node-0001", twin])
    ports = [r for r in b.resources(ctx) if isinstance(r, OvsPort) and r.type]
    assert ports[0].name == ports[1].name == f"gre-{twin}"  # one OVS port, two remote_ips: why records check it
    assert b.peer_claims([ctx], "worker-node-0001") == b.peer_claims([ctx], twin) == [f"OVS tunnel port gre-{twin}"]
    assert b.peer_claims([ctx], "h2") == ["OVS tunnel port gre-h2"]
    assert get_backend("vxlan").peer_claims([ctx], "h2") == []


def test_json_round_trip_and_dry_run_text():
    b = get_backend("ovs-gre")
    res = b.resources(ctx_for("ovs-gre"))
    for r in res:
        back = Resource.from_json(r.to_json())
        assert back == r and back.key() == r.key()
    text = "\n".join(r.describe() for r in res)
    assert "ovs-vsctl --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev" in text
    assert "ovs-vsctl --may-exist add-port br-phy eth0" in text
    assert "ovs-vsctl --may-exist add-port cnovs0 gre-h2 -- set interface gre-h2 type=gre options:remote_ip=10.9.0.11" in text
    assert "fail_mode=secure" in text and "mtu_request=1462" in text
    assert "ovs-ofctl replace-flows cnovs0 -" in text
    assert "ip link set cnovs0 master cn0" in text


def test_not_running_says_how_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path))
    with pytest.raises(ovsdb.OvsNotRunning) as exc:
        ovsdb.OvsDb()
    msg = str(exc.value)
    assert str(tmp_path / "db.sock") in msg
    assert "/usr/share/openvswitch/scripts/ovs-ctl start" in msg and "systemctl start openvswitch-switch" in msg
    (tmp_path / "db.sock").touch()
    with pytest.raises(ovsdb.OvsNotRunning, match="ovs-vswitchd is not running"):
        ovsdb.OvsDb()


def test_rundir_default_and_datapath_override(monkeypatch):
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert ovsdb.db_socket() == "/var/run/openvswitch/db.sock"
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "system")
    assert ovsdb.datapath_type() == "system"
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "netdev")
    assert ovsdb.datapath_type() == "netdev"


def test_tunnel_neighbour_staleness_is_judged_against_the_kernel(monkeypatch):
    from crossnet.ovs import resources as ovsres

    class Msg(dict):
        def get_attr(self, name):
            return self["attrs"][name]

    class FakeIpr:
        def link_lookup(self, ifname):
            return [7] if ifname == "br-phy" else []

        def get_neighbours(self, family, ifindex):
            assert ifindex == 7
            return [
                Msg(state=0x02, attrs={"NDA_DST": "10.0.0.2", "NDA_LLADDR": "aa:aa:aa:aa:aa:02"}),  # reachable
                Msg(state=0x04, attrs={"NDA_DST": "10.0.0.3", "NDA_LLADDR": "aa:aa:aa:aa:aa:03"}),  # stale: still valid
                Msg(state=0x20, attrs={"NDA_DST": "10.0.0.4", "NDA_LLADDR": None}),  # failed
            ]

    class FakeEnv:
        ipr = FakeIpr()

    res = TunnelNeighbours("br-phy")
    monkeypatch.setattr(ovsres, "tunnel_neighbours", lambda: [
        ("10.0.0.2", "aa:aa:aa:aa:aa:02", "br-phy"), ("10.0.0.4", "bb:bb:bb:bb:bb:04", "br-phy"),
    ])
    assert res.check(FakeEnv())  # agrees / kernel does not know: nothing to flush
    monkeypatch.setattr(ovsres, "tunnel_neighbours", lambda: [("10.0.0.3", "02:00:00:00:00:99", "br-phy")])
    assert not res.check(FakeEnv())
    monkeypatch.setattr(ovsres, "tunnel_neighbours", lambda: [("10.0.0.3", "02:00:00:00:00:99", "br-other")])
    assert res.check(FakeEnv())


# ---- OVS configuration crossnet did not create is never taken over ---------------------------
class Row:
    def __init__(self, name, external_ids=None, ports=()):
        self.name = name
        self.external_ids = dict(external_ids or {})
        self.ports = [Row(p) if isinstance(p, str) else p for p in ports]


class FakeDb:
    """The reads crossnet.ovs.resources makes of OVSDB; any write fails the test."""

    def __init__(self, bridges):
        self.rows = bridges  # name -> Row with .ports (Rows with external_ids)

    def bridge(self, name):
        return self.rows.get(name)

    def port(self, name):
        return next((p for b in self.rows.values() for p in b.ports if p.name == name), None)

    def bridge_of_port(self, name):
        return next((b.name for b in self.rows.values() if any(p.name == name for p in b.ports)), None)

    def ports_of(self, name):
        return sorted(p.name for p in self.rows[name].ports)

    def transaction(self):
        raise AssertionError("nothing may be written")

    @property
    def api(self):
        raise AssertionError("nothing may be written")


class FakeEnv:
    def __init__(self, db):
        self.extra = {"ovsdb": db}
        self.invalidated: list[str] = []

    def changed(self, *kinds: str) -> None:  # plan.env.Env's cache hook
        self.invalidated += kinds


def ours(role):
    return {"crossnet": role}


def test_a_bridge_crossnet_did_not_create_is_refused_before_anything_changes():
    from crossnet.errors import ApplyError
    from crossnet.ovs.resources import bridge_conflict

    db = FakeDb({"br-phy": Row("br-phy", {}, ["br-phy", "mine"])})
    msg = bridge_conflict(db, "br-phy")
    assert msg.startswith("OVS bridge br-phy already exists and was not created by crossnet")
    assert "(ports: mine)" in msg and "ovs-vsctl del-br br-phy" in msg and "\n" not in msg
    b = get_backend("ovs-gre")
    with pytest.raises(ApplyError) as exc:
        b.check_underlay(ctx_for("ovs-gre"), FakeEnv(db))
    assert str(exc.value) == msg
    # the resource itself refuses too (the agent reconciles without check_underlay)
    phy = next(r for r in b.resources(ctx_for("ovs-gre")) if isinstance(r, OvsBridge))
    with pytest.raises(ApplyError, match="was not created by crossnet"):
        phy.ensure(FakeEnv(db))
    assert not phy.check(FakeEnv(db))
    phy.remove(FakeEnv(db))  # reset: someone else's bridge stays (FakeDb refuses writes)
    # a bridge crossnet made earlier (marked) is adopted/repaired as before
    db = FakeDb({"br-phy": Row("br-phy", ours("underlay"), ["br-phy", Row("eth0", ours("nic"))]),
                 "cnovs0": Row("cnovs0", ours("overlay"), ["cnovs0"])})
    assert bridge_conflict(db, "br-phy") is None
    b.check_underlay(ctx_for("ovs-gre"), FakeEnv(db))


def test_a_nic_or_port_in_someone_elses_bridge_is_refused():
    from crossnet.errors import ApplyError
    from crossnet.ovs.resources import port_conflict

    # the tutorial's hand-made obr0 holding the NIC
    db = FakeDb({"obr0": Row("obr0", {}, ["obr0", "eth0"])})
    msg = port_conflict(db, "br-phy", "eth0", "nic")
    assert msg.startswith("interface eth0 is a port of OVS bridge obr0, which crossnet did not create")
    assert "ovs-vsctl del-port obr0 eth0" in msg and "hosts[].iface" in msg
    b = get_backend("ovs-gre")
    with pytest.raises(ApplyError, match="interface eth0 is a port of OVS bridge obr0"):
        b.check_underlay(ctx_for("ovs-gre"), FakeEnv(db))
    nic = OvsPort("br-phy", "eth0", role="nic")
    with pytest.raises(ApplyError, match="obr0"):
        nic.ensure(FakeEnv(db))
    # a hand-added port named like a tunnel on crossnet's own bridge
    db = FakeDb({"cnovs0": Row("cnovs0", ours("overlay"), ["cnovs0", "gre-h2"])})
    msg = port_conflict(db, "cnovs0", "gre-h2", "tunnel")
    assert msg.startswith("OVS port gre-h2 is a port of crossnet's bridge cnovs0 but was not created by crossnet")
    OvsPort("cnovs0", "gre-h2", "gre", role="tunnel").remove(FakeEnv(db))  # left alone
    # several conflicts: the first one, and how many more
    db = FakeDb({"br-phy": Row("br-phy", {}, ["br-phy"]), "cnovs0": Row("cnovs0", {}, ["cnovs0"])})
    with pytest.raises(ApplyError, match=r"^OVS bridge br-phy .* \(and 1 more\)$"):
        b.check_underlay(ctx_for("ovs-gre"), FakeEnv(db))
    # crossnet's own ports and moves between crossnet's bridges are fine
    db = FakeDb({"cnovs0": Row("cnovs0", ours("overlay"), ["cnovs0", Row("gre-h2", ours("tunnel"))]),
                 "br-phy": Row("br-phy", ours("underlay"), ["br-phy"])})
    assert port_conflict(db, "cnovs0", "gre-h2") is None
    assert port_conflict(db, "br-phy", "gre-h2") is None
    assert port_conflict(db, "br-phy", "eth0", "nic") is None


def test_status_when_open_vswitch_is_down(tmp_path, monkeypatch):
    """No OVS: check() says "not as desired" instead of failing, and status_info shows
    datapath unknown with the hint how to start it."""
    from crossnet.plan.env import Env

    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path))
    env = Env(None)
    b = get_backend("ovs-gre")
    ctx = ctx_for("ovs-gre")
    for r in b.resources(ctx):
        if isinstance(r, (OvsBridge, OvsPort, OvsFlows)):
            assert r.check(env) is False
    assert "no OVSDB socket" in env.extra["ovsdb_down"]
    info = b.status_info(ctx, env)["ovs"]
    assert info["running"] is False and info["datapath"] == "unknown" and info["datapath_kind"] == "ovs not running"
    assert "Open vSwitch is not running" in info["error"] and "systemctl start openvswitch-switch" in info["error"]
    assert info["tunnel"] == "gre" and info["kernel_module"] is False


# ---- kernel datapath: what can be checked without the openvswitch module ---------------------
def test_kernel_datapath_detection(monkeypatch):
    import pyroute2.netlink.generic as genl
    from pyroute2.netlink.exceptions import NetlinkError

    monkeypatch.delenv("CROSSNET_OVS_DATAPATH", raising=False)
    families = set()
    closed = []

    class FakeGenl:
        def discovery(self, name):
            if name not in families:
                raise NetlinkError(2, "No such file or directory")
            return {}

        def close(self):
            closed.append(True)

    monkeypatch.setattr(genl, "GenericNetlinkSocket", FakeGenl)
    real_isdir = ovsdb.os.path.isdir
    module = {"loaded": False}
    monkeypatch.setattr(ovsdb.os.path, "isdir",
                        lambda p: module["loaded"] if p == "/sys/module/openvswitch" else real_isdir(p))
    assert ovsdb.kernel_datapath_available() is False and ovsdb.datapath_type() == "netdev"
    families.add("ovs_datapath")  # the family resolves (module auto-loaded / built in)
    assert ovsdb.kernel_datapath_available() is True and ovsdb.datapath_type() == "system"
    families.clear()
    module["loaded"] = True
    assert ovsdb.datapath_type() == "system"
    assert closed  # the netlink socket is closed every time
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "netdev")  # the override wins
    assert ovsdb.datapath_type() == "netdev"


@pytest.mark.parametrize("backend", ["ovs-gre", "ovs-vxlan"])
def test_kernel_datapath_resources_and_dry_run(monkeypatch, backend):
    """datapath_type=system: no br-phy, no address move, no nft table, no tunnel
    neighbour flush; the NIC and its address stay; the overlay bridge, its flows and the
    tunnel ports are the same as with the userspace datapath."""
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "system")
    b = get_backend(backend)
    ctx = ctx_for(backend)
    res = b.resources(ctx)
    text = "\n".join(r.describe() for r in res)
    assert "br-phy" not in text and "eth0" not in text and "nft" not in text and "tnl/neigh" not in text
    (overlay,) = [r for r in res if isinstance(r, OvsBridge)]
    assert overlay.describe().startswith("ovs-vsctl --may-exist add-br cnovs0 -- set bridge cnovs0 datapath_type=system")
    assert overlay.fail_mode == "secure" and overlay.mtu == 1500 - b.overhead
    monkeypatch.setenv("CROSSNET_OVS_DATAPATH", "netdev")
    userspace = [r for r in get_backend(backend).resources(ctx) if isinstance(r, (OvsPort, OvsFlows, Route))]
    kernel = [r for r in res if isinstance(r, (OvsPort, OvsFlows, Route))]
    assert kernel == [r for r in userspace if not (isinstance(r, OvsPort) and r.bridge == "br-phy")]
    # status reports what the bridge in OVSDB uses, not what would be chosen now
    assert b.datapath() == "system"


def test_bridge_check_needs_the_internal_port_device_on_both_datapaths(monkeypatch):
    """The internal port is a kernel device in both datapaths (tap / `openvswitch`), and
    crossnet enslaves it to cn0 right after creating the bridge: check and ensure wait
    for it whatever the datapath (they used to skip it for datapath_type=system)."""
    from crossnet.ovs import resources as ovsres

    row = Row("cnovs0", ours("overlay"), ["cnovs0"])
    row.datapath_type, row.fail_mode, row.other_config = "system", ["secure"], {}
    db = FakeDb({"cnovs0": row})
    db.interface = lambda name: SimpleNamespace(ofport=[1], mtu_request=[1462])
    br = OvsBridge("cnovs0", "system", "secure", mtu=1462, role="overlay")
    links = {}
    monkeypatch.setattr(ovsres, "_link", lambda env, name: links.get(name))
    assert br.check(FakeEnv(db)) is False  # no kernel device yet
    links["cnovs0"] = type("L", (), {"mtu": 1462})()
    assert br.check(FakeEnv(db)) is True
    links["cnovs0"].mtu = 1500
    assert br.check(FakeEnv(db)) is False


def test_ipv6_off_is_left_on_remove_and_satisfied_without_ipv6(tmp_path, monkeypatch):
    """DevIpv6Off: remove() never turns IPv6 back on (the device goes with its network; IPv6
    coming up next to OVS loses packets, docs/ovs.md); a kernel without IPv6 has nothing to
    do (no /proc/sys/net/ipv6: satisfied, ensure writes nothing)."""
    r = DevIpv6Off.of("cnovs7")
    assert r.describe() == "sysctl -w net.ipv6.conf.cnovs7.disable_ipv6=1" and r.kind == "dev-ipv6-off"
    assert Resource.from_json(r.to_json()) == r
    written = []
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: written.append(self))
    r.saved["previous"] = "0"
    r.remove(None)
    monkeypatch.setattr(DevIpv6Off, "IPV6", tmp_path / "no-ipv6")
    assert r.check(None) is True
    r.ensure(None)
    assert written == []


def test_a_kernel_link_named_like_an_ovs_bridge_without_an_ovsdb_row_is_refused():
    """An admin's dummy/tap/bridge called cnovs0 has no OVSDB row, so bridge_conflict sees
    nothing; the bridge's preflight refuses the link unless crossnet recorded the bridge,
    or OVSDB has the bridge (the link is then its internal port, judged by the row)."""
    from crossnet.errors import ApplyError
    from crossnet.netlink.iproute import LinkInfo

    class LinkEnv(FakeEnv):
        def __init__(self, db, links):
            super().__init__(db)
            self._links = links

        def link(self, name=None, index=None):
            return self._links.get(name)

        def links(self):
            return dict(self._links)

        def addresses(self, index):
            return ["192.0.2.77/28"] if index == 9 else []

    tap = {"cnovs0": LinkInfo(9, "cnovs0", "tun", 1500, None, True, None, {})}
    br = OvsBridge("cnovs0", "netdev", "secure", mtu=1450, role="overlay")
    with pytest.raises(ApplyError) as exc:
        br.preflight(LinkEnv(FakeDb({}), tap), set())
    assert str(exc.value) == (
        "interface cnovs0 already exists and was not created by crossnet (tun link; addresses: 192.0.2.77/28); "
        "crossnet does not take over or delete links it did not create: remove or rename it (crossnet's OVS "
        "bridge names are fixed), then apply again")
    br.preflight(LinkEnv(FakeDb({}), tap), {br.key()})  # recorded as crossnet's
    br.preflight(LinkEnv(FakeDb({"cnovs0": Row("cnovs0", ours("overlay"), ["cnovs0"])}), tap), set())
    br.preflight(LinkEnv(FakeDb({}), {}), set())  # nothing there
