"""Isolated named networks with backends ovs-vxlan and ovs-gre, end to end (the full
matrix is vxlan: tests/e2e/test_networks.py). 2 hosts, 2 networks (``default`` and ``blue``), one container
of each network per host, OVS with the userspace datapath in every host namespace: each
network has its own OVS bridge and tunnel ports keyed by its VNI; every same-network pair
pings (on one host and across), every cross-network pair does not, the isolation
counters (in the netdev layout: an ingress chain on each network's bridge) count the drops,
`crossnet check --isolation` says the same, a full-size DF ping
fits blue's MTU (with GRE, 4 bytes less: its key), `reset` leaves no OVS bridge, port or
device behind, and `apply --dry-run` prints each network's ovs-vsctl commands."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.test_networks import iso_family, iso_hooked_devices, isolated_matrix, members
from tests.e2e.test_networks_hostgw import two_network_lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def sh(lab, host: str, *cmd: str) -> str:
    proc = lab.run(host, list(cmd), check=False)
    assert proc.returncode == 0, f"{host}: {' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}"
    return proc.stdout


@pytest.fixture(scope="module", params=["ovs-vxlan", "ovs-gre"])
def lab(request, lab_sweep):
    lab = two_network_lab(request, request.param)
    lab.ovs_backend = request.param
    return lab


def test_ovs_networks_own_bridges_keys_and_isolation(lab):
    h1, h2 = lab.hosts
    st = lab.status(h1.name)
    vni = st["networks"]["blue"]["vni"]
    assert st["backend"] == lab.ovs_backend and vni == 2  # top-level vxlan.vni 1 + position 0 + 1
    # the switch keeps the networks apart: blue's own bridge, its tunnel port keyed by its VNI
    assert set(sh(lab, h1.name, "ovs-vsctl", "list-br").split()) == {"br-phy", "cnovs0", f"cnovs{vni}"}
    blue_port = f"{'gre' if lab.ovs_backend == 'ovs-gre' else 'vxl'}{vni}-{h2.name}"
    assert sh(lab, h1.name, "ovs-vsctl", "list-ports", f"cnovs{vni}").split() == [blue_port]
    assert sh(lab, h1.name, "ovs-vsctl", "get", "interface", blue_port, "options:key").strip() == f'"{vni}"'
    assert f"cnovs{vni}" in sh(lab, h1.name, "ip", "-o", "link", "show", "master", "cn-blue")
    # IPv6 never came up on the bridges and internal ports (crossnet.ovs.resources.DevIpv6Off):
    # off, and no link-local address was ever made on them
    for h in lab.hosts:
        for dev in ("cn0", "cnovs0", "cn-blue", f"cnovs{vni}"):
            assert sh(lab, h.name, "cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").strip() == "1", (h.name, dev)
            assert sh(lab, h.name, "ip", "-6", "-o", "addr", "show", "dev", dev).strip() == "", (h.name, dev)
    nets = members(lab)
    assert len(nets["default"]) == 2 and len(nets["blue"]) == 2
    # a full-size frame of blue crosses (DF): blue's MTU fits its tunnel
    mtu = json.loads(sh(lab, h1.name, "ip", "-j", "link", "show", "cn-blue"))[0]["mtu"]
    top = json.loads(sh(lab, h1.name, "ip", "-j", "link", "show", "cn0"))[0]["mtu"]
    assert mtu == top - (4 if lab.ovs_backend == "ovs-gre" else 0)
    src = nets["blue"][0]
    dst = next(e for e in nets["blue"] if e.name.split("/")[0] != src.name.split("/")[0])
    # isolation: the netdev layout, one ingress chain per network's bridge (its tunnel ports
    # are its OVS bridge's, which reaches the kernel through a port of that bridge only)
    for h in lab.hosts:
        assert iso_family(lab, h.name) == "netdev"
        assert iso_hooked_devices(lab, h.name) == ["cn-blue", "cn0"], h.name
    isolated_matrix(lab, settle=10.0)
    ping = lab.run(src.netns, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), dst.address])
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_reset_removes_every_networks_ovs_bridge_and_port(lab):
    def nothing_left(h):
        assert sh(lab, h.name, "ovs-vsctl", "list-br").strip() == ""
        assert sh(lab, h.name, "ovs-vsctl", "--columns=name", "list", "Interface").strip() == ""
        links = sh(lab, h.name, "ip", "-o", "link", "show")
        for name in ("br-phy", "cnovs", "cn0", "cn-blue", "ovs-netdev"):
            assert f" {name}" not in links, links
        assert sh(lab, h.name, "nft", "list", "ruleset").strip() == ""

    for h in lab.hosts:
        lab.crossnet(h.name, "reset")
        nothing_left(h)
    # --dry-run prints each network's ovs-vsctl commands, and changes nothing
    h1, h2 = lab.hosts
    tun, pre = ("gre", "gre") if lab.ovs_backend == "ovs-gre" else ("vxlan", "vxl")
    out = lab.crossnet(h1.name, "apply", "-f", str(lab.netfile), "--host", h1.name, "--dry-run").stdout
    assert "ovs-vsctl --may-exist add-br cnovs2 -- set bridge cnovs2 datapath_type=netdev fail_mode=secure" in out, out
    assert (f"ovs-vsctl --may-exist add-port cnovs2 {pre}2-{h2.name} -- set interface {pre}2-{h2.name} type={tun} "
            f"options:key=2 options:remote_ip={h2.address}") in out, out
    nothing_left(h1)
