"""ovs-gre / ovs-vxlan backends without a kernel or OVS: desired resources, split-horizon
flows, names, JSON round-trip, dry-run text, errors when Open vSwitch is not running."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, Peer
from crossnet.ovs import db as ovsdb
from crossnet.ovs.resources import (
    AddressMove,
    OvsBridge,
    OvsFlows,
    OvsPort,
    TunnelNeighbours,
)
from crossnet.plan import NftTable, Resource, Route


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
