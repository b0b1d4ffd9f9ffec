"""`crossnet status`'s named networks (crossnet.networks.status): each network's own
carrying devices, read from its recorded context through its backend's description —
the VXLAN device, the WireGuard device and port, the OVS bridge; none for host-gw."""

from __future__ import annotations

import pytest

from crossnet import networks
from crossnet.state import StateDir
from tests.unit.test_networks_wg import BLUE, RED, contexts


def status_of(tmp_path, backend_name: str, **top) -> dict:
    _, _, _, nets = contexts(backend_name, nets=[BLUE, {**RED, "vni": 40}], **top)
    applied = {"networks": {name: ctx.to_json() for name, ctx in nets.items()}}
    return networks.status(StateDir(tmp_path / "st"), applied)["networks"]


@pytest.mark.parametrize("backend_name, blue, red", [
    ("vxlan", [{"kind": "vxlan", "name": "cnvx2"}], [{"kind": "vxlan", "name": "cnvx40"}]),
    ("host-gw", [], []),
    ("wireguard", [{"kind": "wireguard-device", "name": "cnwg2", "port": 51821}],
     [{"kind": "wireguard-device", "name": "cnwg40", "port": 51859}]),
    ("ovs-vxlan", [{"kind": "ovs-bridge", "name": "cnovs2"}], [{"kind": "ovs-bridge", "name": "cnovs40"}]),
    ("auto", [{"kind": "vxlan", "name": "cnvx2"}, {"kind": "wireguard-device", "name": "cnwg2", "port": 51821}],
     [{"kind": "vxlan", "name": "cnvx40"}, {"kind": "wireguard-device", "name": "cnwg40", "port": 51859}]),
])
def test_each_network_names_the_devices_that_carry_it(tmp_path, backend_name, blue, red):
    st = status_of(tmp_path, backend_name)
    assert sorted(st["blue"]["devices"], key=str) == sorted(blue, key=str)
    assert sorted(st["red"]["devices"], key=str) == sorted(red, key=str)
    assert st["blue"]["bridge"] == "cn-blue" and st["blue"]["layout"] == "bridge" and st["red"]["vni"] == 40
    assert st["blue"]["containers"] == []


def test_a_routed_network_has_no_bridge(tmp_path):
    st = status_of(tmp_path, "vxlan", datapath="ebpf")
    assert st["blue"]["bridge"] is None and st["blue"]["layout"] == "routed"
    assert st["blue"]["devices"] == [{"kind": "vxlan", "name": "cnvx2"}]


def test_a_damaged_record_still_shows_the_rest(tmp_path):
    applied = {"networks": {"blue": {"network": "10.41.0.0/16", "subnet": "10.41.0.0/24", "backend": "nope"}}}
    st = networks.status(StateDir(tmp_path / "st"), applied)["networks"]["blue"]
    assert st["devices"] == [] and st["subnet"] == "10.41.0.0/24" and st["layout"] == "bridge"


# ---------------------------------------------------------------- each network's peers and how they are reached


@pytest.mark.parametrize("backend_name, transports, shown", [
    ("vxlan", ("", ""), ["vxlan", "vxlan"]),
    ("host-gw", ("", ""), ["direct", "direct"]),
    ("ovs-gre", ("", ""), ["gre", "gre"]),
    ("auto", ("vxlan", "wireguard"), ["vxlan", "wireguard"]),  # the choice recorded per peer
    ("auto", ("wireguard", "vxlan"), ["wireguard", "vxlan"]),  # switched: each network shows it
    ("auto", ("", "bogus"), ["vxlan", "vxlan"]),  # none (or no candidate) recorded: the best without facts
])
def test_each_network_lists_its_peers_and_their_transport(backend_name, transports, shown):
    _, _, ctx, nets = contexts(backend_name, transports=transports)
    for name, net in nets.items():
        peers = networks.peers_of(net.to_json())
        assert [p["name"] for p in peers] == [p.name for p in ctx.peers]
        assert [p["subnet"] for p in peers] == [str(p.subnet) for p in net.peers]  # the network's own subnets
        assert all(p["subnet"].startswith({"blue": "10.41.", "red": "10.42."}[name]) for p in peers)
        assert [p["address"] for p in peers] == [str(p.address) for p in ctx.peers]
        assert [p["transport"] for p in peers] == shown


def test_status_carries_the_peers_and_the_text_groups_them(tmp_path):
    st = status_of(tmp_path, "auto")
    peers = st["blue"]["peers"]
    assert [p["transport"] for p in peers] == ["vxlan", "wireguard"]
    a, b = peers
    assert networks.peers_text(peers) == (f"peers over vxlan: {a['name']} {a['subnet']}; "
                                          f"over wireguard: {b['name']} {b['subnet']}")
    both = [a, {**b, "transport": "vxlan"}]
    assert networks.peers_text(both) == f"peers over vxlan: {a['name']} {a['subnet']}, {b['name']} {b['subnet']}"
    assert networks.peers_text([]) == "no peers"


def test_a_damaged_record_lists_no_peers(tmp_path):
    assert networks.peers_of({"backend": "vxlan", "peers": [{"name": "h2"}]}) == []
    applied = {"networks": {"blue": {"network": "10.41.0.0/16", "subnet": "10.41.0.0/24", "backend": "nope"}}}
    assert networks.status(StateDir(tmp_path / "st"), applied)["networks"]["blue"]["peers"] == []
