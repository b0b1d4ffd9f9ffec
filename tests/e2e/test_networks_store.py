"""Named networks under a store (docs/networks.md, "Under a store"), end to end: real
etcd and agents, real packets.

* One lab (module scope, 3 hosts, vxlan, `lab up --store etcd`): `crossnet etcd init
  --force --network-name blue ... --network-name red ...` adds two networks to the
  running cluster; every agent leases a subnet of each and programs them (bridges,
  VNIs, peers' FDB/routes, isolation); one container per network per host (`attach
  --network`): same-network pairs ping across hosts, cross-network pairs never do. A
  third network added while pings run in the other two: it works, they lose no packet.
* A 2-host lab without a store: `crossnet launch --network-name blue` on the first
  host, the second joins (taking blue from the store; `--network-name` on a joining
  host is refused with one line); blue containers ping across the hosts.
"""

from __future__ import annotations

import os

import pytest

from crossnet.check import Endpoint, ping_matrix
from crossnet.lab.etcd import lab_etcd
from tests.e2e.agentlab import (
    continuous_ping,
    end_ping,
    launched_lab,
    module_factory,
    ping_stats,
    wait_for,
)
from tests.e2e.netstorelab import NETS, config_health, init, programmed, put

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    lab = module_factory(request)(hosts=3, underlay="l2", backend="vxlan", containers=4,
                                  extra={"store": "etcd", "ttl": 5})
    lab.etcd_url = lab_etcd(lab.plan).url
    return lab


def test_two_networks_added_through_the_store_are_isolated(lab):
    res = init(lab, "blue", "red")
    assert [(n["name"], n["vni"]) for n in res["config"]["networks"]] == [("blue", 2), ("red", 3)]
    subnets = wait_for(lambda: programmed(lab, ["blue", "red"]), 60, "blue and red on every host")
    for n in ("blue", "red"):  # one lease per host and network, distinct, inside the network
        mine = [subnets[h.name][n] for h in lab.hosts]
        assert len(set(mine)) == 3 and all(s.startswith(NETS[n][:6]) for s in mine), mine
    text = lab.crossnet("h1", "status").stdout
    assert f"network blue: {subnets['h1']['blue']} of {NETS['blue']} on cn-blue (vni 2; vxlan cnvx2)" in text, text
    want = sorted([("h2", subnets["h2"]["blue"], "vxlan"), ("h3", subnets["h3"]["blue"], "vxlan")])
    wait_for(lambda: sorted((p["name"], p["subnet"], p["transport"])
                            for p in lab.status("h1")["networks"]["blue"]["peers"]) == want, 20, "h1's blue peers")
    assert "peers over vxlan: h" in lab.crossnet("h1", "status").stdout
    # `etcd init` wrote WireGuard's defaults where the lab wrote none: still only the networks changed
    assert config_health(lab) == {h.name: None for h in lab.hosts}
    lab.members = {n: [put(lab, h, h.containers[i], n) for h in lab.hosts] for i, n in ((1, "blue"), (2, "red"))}
    everyone = lab.members["blue"] + lab.members["red"]
    pairs = ping_matrix(everyone, count=1, timeout=1.0, workers=12)
    net_of = {e.name: n for n, eps in lab.members.items() for e in eps}
    wrong = [(p.src, p.dst, p.ok) for p in pairs if p.ok != (net_of[p.src] == net_of[p.dst])]
    assert len(pairs) == 6 * 5 and not wrong, wrong
    assert sum(p.ok for p in pairs) == 2 * 3 * 2  # the same-network pairs across hosts, both ways


def test_a_third_network_added_at_run_time_interrupts_none(lab):
    b1, b2 = lab.members["blue"][0], lab.members["blue"][1]
    r2, r3 = lab.members["red"][1], lab.members["red"][2]
    pings = [continuous_ping(b1.netns, b2.address, 200, 0.05), continuous_ping(r3.netns, r2.address, 200, 0.05)]
    try:
        init(lab, "blue", "red", "green")
        wait_for(lambda: programmed(lab, ["blue", "red", "green"]), 60, "green on every host")
        green = [put(lab, h, h.containers[3], "green") for h in lab.hosts]
        pairs = ping_matrix(green + [b1, r2], count=1, timeout=1.0, workers=12)
        ok = {(p.src, p.dst) for p in pairs if p.ok}
        assert all((a.name, b.name) in ok for a in green for b in green if a is not b), pairs
        assert not [p for p in pairs if p.ok and ("green" in p.src) != ("green" in p.dst)], pairs
    finally:
        outs = [end_ping(p) for p in pings]
    for out in outs:
        sent, got = ping_stats(out)
        assert sent >= 20 and got == sent, out  # not one packet lost while green came


@pytest.fixture(scope="module")
def mesh_lab(request, lab_sweep):
    """2 hosts without any store: `crossnet launch` makes one (etcd members, agents)."""
    yield from launched_lab(request, hosts=2, underlay="l2", containers=1)


def test_launch_with_a_named_network(mesh_lab):
    lab = mesh_lab
    out = lab.crossnet("h1", "launch", "--name", "h1", "--voters", "1", "--network", "10.32.0.0/16",
                       "--network-name", "blue", "--network-cidr", NETS["blue"], timeout=120).stdout
    line = next(ln for ln in out.splitlines() if "crossnet launch --token" in ln).split()
    token, addr = line[line.index("--token") + 1], line[-1]
    bad = lab.crossnet("h2", "launch", "--name", "h2", "--token", token, addr, "--network-name", "red",
                       "--network-cidr", NETS["red"], check=False)
    assert bad.returncode == 2 and "--network-name: only when creating a mesh" in bad.stderr, bad.stderr
    lab.crossnet("h2", "launch", "--name", "h2", "--token", token, addr, timeout=120)  # takes blue from the store
    wait_for(lambda: programmed(lab, ["blue"]) and all(
        lab.status(h.name)["networks"]["blue"]["subnet"] for h in lab.hosts), 60, "blue on both hosts")
    eps = []
    for h in lab.hosts:
        c = h.containers[0]
        lab.crossnet(h.name, "attach", c, "--network", "blue")
        got = next(x for x in lab.status(h.name)["networks"]["blue"]["containers"] if x["id"] == c)
        eps.append(Endpoint(f"{h.name}/blue", c, got["address"].split("/")[0]))
    assert all(e.address.startswith("10.33.") for e in eps)
    def all_ok():
        pairs = ping_matrix(eps, count=1, timeout=1.0)
        return len(pairs) == 2 and all(p.ok for p in pairs)

    wait_for(all_ok, 20, "blue pings between the launched hosts")
