"""Named networks under the agent with an Open vSwitch backend (ovs-gre, userspace
datapath: a private OVS per host started by the lab), end to end: real etcd and agents,
real packets, 2 hosts behind one router.

* `crossnet etcd init --force` adds `blue` and `red`; one container of each per host:
  the same-network pairs ping across the hosts, the pairs of different networks never.
* A third network (`green`) added through the store while a continuous ping runs in
  blue and another in red: green gets its own OVS bridge and works, stays apart from
  the others, and each ping loses at most one packet (every reply but the one possibly
  in flight when the ping is stopped). Not none: Open vSwitch's userspace datapath (the
  only one on these machines) sometimes drops a tunnel packet it receives while a bridge
  is added on that host, or while a new internal port comes up with IPv6 — reproduced
  with plain `ovs-vsctl add-br` and no crossnet at all (docs/ovs.md, "Packets lost while
  a bridge is added"): a CI run lost one packet of ~200 in 1 of 3 runs. More than one
  lost packet, or a lost packet with the vxlan backend (tests/e2e/test_networks_store.py,
  strict), is a crossnet defect.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from crossnet.lab.etcd import lab_etcd
from tests.e2e.agentlab import (
    continuous_ping,
    end_ping,
    lost_seqs,
    module_factory,
    ping_stats,
    wait_for,
)
from tests.e2e.netstorelab import (
    config_health,
    init,
    programmed,
    put,
    same_network_only,
)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

BACKEND = "ovs-gre"
OVS_USERSPACE_LOSS = 1  # packets a ping may lose while green's OVS bridge is added (docs/ovs.md)

@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not shutil.which("ovs-vswitchd"):
        pytest.skip("needs Open vSwitch (apt-get install openvswitch-switch)")
    lab = module_factory(request)(hosts=2, underlay="l3", backend=BACKEND, containers=3,
                                  extra={"store": "etcd", "ttl": 5})
    lab.etcd_url = lab_etcd(lab.plan).url
    return lab


def bridges(lab, hname: str) -> set[str]:
    out = lab.run(hname, ["ovs-vsctl", "list-br"], check=True, timeout=20).stdout
    return set(out.split())


def test_two_networks_under_the_agent_on_ovs_are_isolated(lab):
    init(lab, "blue", "red")
    wait_for(lambda: programmed(lab, ["blue", "red"]), 60, "blue and red on both hosts", interval=0.5)
    lab.members = {n: [put(lab, h, h.containers[i], n) for h in lab.hosts] for i, n in ((0, "blue"), (1, "red"))}
    pairs = same_network_only(lab.members, settle=20)
    assert sum(p.ok for p in pairs) == 2 * 2  # blue and red, both ways across the hosts
    st = lab.status("h1")["networks"]
    assert {n: [(p["name"], p["transport"]) for p in st[n]["peers"]] for n in ("blue", "red")} == {
        "blue": [("h2", "gre")], "red": [("h2", "gre")]}
    vnis = {n: st[n]["vni"] for n in ("blue", "red")}
    assert {f"cnovs{v}" for v in vnis.values()} <= bridges(lab, "h1")  # each network its own OVS bridge
    assert config_health(lab) == {h.name: None for h in lab.hosts}


def test_a_third_network_added_under_ping_interrupts_none(lab):
    h1, h2 = lab.hosts
    blue, red = lab.members["blue"], lab.members["red"]
    pings = {"blue": continuous_ping(blue[0].netns, blue[1].address, 400, 0.05, quiet=False),
             "red": continuous_ping(red[1].netns, red[0].address, 400, 0.05, quiet=False)}
    try:
        time.sleep(1.0)  # some pings before the change
        init(lab, "blue", "red", "green")
        wait_for(lambda: programmed(lab, ["blue", "red", "green"]), 60, "green on both hosts", interval=0.5)
        green = [put(lab, h, h.containers[2], "green") for h in lab.hosts]
        vni = lab.status("h1")["networks"]["green"]["vni"]
        assert f"cnovs{vni}" in bridges(lab, h1.name) and f"cnovs{vni}" in bridges(lab, h2.name)
        same_network_only({**lab.members, "green": green}, settle=20)
    finally:
        outs = {n: end_ping(p) for n, p in pings.items()}
    for n, out in outs.items():
        sent, got = ping_stats(out)
        lost = lost_seqs(out)
        print(f"{n}: {sent} sent, {got} received, lost icmp_seq {lost}")
        assert sent >= 40, out
        assert len(lost) <= OVS_USERSPACE_LOSS, (n, lost, out[-400:])
