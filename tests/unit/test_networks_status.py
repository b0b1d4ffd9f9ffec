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
