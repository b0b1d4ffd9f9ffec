"""Isolated named networks with backends ovs-vxlan and ovs-gre, end to end (the full matrix is vxlan:
tests/e2e/test_networks.py). 2 hosts, 2 networks (``default`` and ``blue``), one container
of each network per host, OVS with the userspace datapath in every host namespace: each
network has its own OVS bridge and tunnel ports keyed by its VNI; every same-network pair
pings (on one host and across), every cross-network pair does not, the isolation
counters count the drops, `crossnet check --isolation` says the same, a full-size DF ping
fits blue's MTU (with GRE, 4 bytes less: its key), and `reset` leaves no OVS bridge, port or device behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from crossnet.check import ping_matrix
from tests.e2e.test_networks import BLUE, apply_all, counters, each, members

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def sh(lab, host: str, *cmd: str) -> str:
    proc = lab.run(host, list(cmd), check=False)
    assert proc.returncode == 0, f"{host}: {' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}"
    return proc.stdout


@pytest.fixture(scope="module", params=["ovs-vxlan", "ovs-gre"])
def lab(request, lab_sweep):
    from tests.conftest import LabFactory

    lab = LabFactory.for_test(request)(hosts=2, underlay="l2", backend=request.param, containers=2, apply=False)
    lab.ovs_backend = request.param
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["networks"] = [{"name": "blue", "network": BLUE}]
    lab.netfile = Path(lab.plan.cluster_file).with_name("networks.yaml")
    lab.netfile.write_text(yaml.safe_dump(cluster))
    apply_all(lab)
    each(lambda h: (lab.crossnet(h.name, "attach", h.containers[0]),
                    lab.crossnet(h.name, "attach", h.containers[1], "--network", "blue")), lab.hosts)
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
    nets = members(lab)
    assert len(nets["default"]) == 2 and len(nets["blue"]) == 2
    before = {h.name: counters(lab, h.name) for h in lab.hosts}
    pairs = ping_matrix(nets["default"] + nets["blue"], count=1, timeout=2.0, workers=12)
    net_of = {e.name: n for n, eps in nets.items() for e in eps}
    assert len(pairs) == 4 * 3
    wrong = [(p.src, p.dst, p.ok) for p in pairs if p.ok != (net_of[p.src] == net_of[p.dst])]
    assert not wrong, wrong
    after = {h.name: counters(lab, h.name) for h in lab.hosts}
    for h in lab.hosts:
        for n in ("default", "blue"):
            assert after[h.name][f"inet:{n}_cross"] > before[h.name][f"inet:{n}_cross"], (h.name, n)
    # a full-size frame of blue crosses (DF): blue's MTU fits its tunnel
    mtu = json.loads(sh(lab, h1.name, "ip", "-j", "link", "show", "cn-blue"))[0]["mtu"]
    top = json.loads(sh(lab, h1.name, "ip", "-j", "link", "show", "cn0"))[0]["mtu"]
    assert mtu == top - (4 if lab.ovs_backend == "ovs-gre" else 0)
    src = nets["blue"][0]
    dst = next(e for e in nets["blue"] if e.name.split("/")[0] != src.name.split("/")[0])
    ping = lab.run(src.netns, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), dst.address])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    iso = lab.crossnet(h1.name, "check", "--isolation", "-o", "json", check=False)
    assert iso.returncode == 0, iso.stdout + iso.stderr
    got = json.loads(iso.stdout)
    assert got["ok"] and got["isolation"] and not any(p["reached"] for p in got["isolation"])


def test_reset_removes_every_networks_ovs_bridge_and_port(lab):
    for h in lab.hosts:
        lab.crossnet(h.name, "reset")
        assert sh(lab, h.name, "ovs-vsctl", "list-br").strip() == ""
        assert sh(lab, h.name, "ovs-vsctl", "--columns=name", "list", "Interface").strip() == ""
        links = sh(lab, h.name, "ip", "-o", "link", "show")
        for name in ("br-phy", "cnovs", "cn0", "cn-blue", "ovs-netdev"):
            assert f" {name}" not in links, links
        assert sh(lab, h.name, "nft", "list", "ruleset").strip() == ""
