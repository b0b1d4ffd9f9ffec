"""Named networks under the agent with backend auto (docs/networks.md "Under a store",
docs/transport.md), end to end: real etcd and agents, real packets, an L3 lab (3 hosts,
each behind one router, so every peer starts on VXLAN).

* `crossnet etcd init --force` adds `blue` and `red` to the running cluster; one
  container of each per host: every same-network pair pings across hosts, no pair of
  different networks ever does; `status` lists each network's peers over vxlan, and the
  agents report no config change beyond the networks.
* The router drops UDP 4789 between h1 and h2 (nft in the router namespace only): the
  prober moves that pair to WireGuard, both named networks follow (their peers are shown
  over wireguard, h3 still over vxlan), both keep working and stay apart; the filter
  lifted, back on vxlan, the same again.
"""

from __future__ import annotations

import os

import pytest

from crossnet.lab.etcd import lab_etcd
from tests.e2e.agentlab import module_factory, wait_for
from tests.e2e.netstorelab import (
    config_health,
    init,
    programmed,
    put,
    same_network_only,
)
from tests.e2e.test_transport import (
    SWITCH_BOUND,
    TTL,
    _needs,
    block_vxlan,
    host,
    pair_on,
    unblock,
)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

NAMES = ("blue", "red")


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    _needs()
    lab = module_factory(request)(hosts=3, underlay="l3", backend="auto", containers=2,
                                  extra={"store": "etcd", "ttl": TTL})
    lab.etcd_url = lab_etcd(lab.plan).url
    return lab


def network_peers(lab, hname: str) -> dict[str, dict[str, str]]:
    """network -> peer -> its transport, from `status -o json` of host `hname`."""
    nets = lab.status(hname).get("networks") or {}
    return {n: {p["name"]: p["transport"] for p in nets[n]["peers"]} for n in NAMES if n in nets}


def peers_on(lab, hname: str, want: dict[str, str]) -> bool:
    """Both named networks of `hname` reach its peers as `want` (peer -> transport)."""
    return network_peers(lab, hname) == {n: want for n in NAMES}


def test_two_networks_under_auto_are_isolated(lab):
    init(lab, *NAMES)
    wait_for(lambda: programmed(lab, NAMES), 60, "blue and red on every host", interval=0.5)
    lab.members = {n: [put(lab, h, h.containers[i], n) for h in lab.hosts] for i, n in enumerate(NAMES)}
    for a in ("h1", "h2"):
        others = {h.name: "vxlan" for h in lab.hosts if h.name != a}
        wait_for(lambda a=a, others=others: peers_on(lab, a, others), SWITCH_BOUND, f"{a}'s networks over vxlan",
                 interval=0.5)
    pairs = same_network_only(lab.members, settle=20)
    assert sum(p.ok for p in pairs) == 2 * 3 * 2  # the same-network pairs across hosts, both ways
    assert "peers over vxlan: " in lab.crossnet("h1", "status").stdout
    assert config_health(lab) == {h.name: None for h in lab.hosts}  # only the networks changed


def test_a_switched_peer_keeps_both_networks_working_and_apart(lab):
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    block_vxlan(lab, h1, h2)
    try:
        wait_for(lambda: pair_on(lab, "wireguard"), SWITCH_BOUND, "h1 and h2 on wireguard", interval=0.5)
        # both named networks follow the prober's choice for h2; h3 stays on vxlan
        wait_for(lambda: peers_on(lab, "h1", {"h2": "wireguard", "h3": "vxlan"}), SWITCH_BOUND,
                 "h1's networks reach h2 over wireguard", interval=0.5)
        wait_for(lambda: peers_on(lab, "h2", {"h1": "wireguard", "h3": "vxlan"}), SWITCH_BOUND,
                 "h2's networks reach h1 over wireguard", interval=0.5)
        assert "over wireguard: h2 " in lab.crossnet("h1", "status").stdout
        same_network_only(lab.members, settle=20)  # through the filter: WireGuard carries h1-h2
    finally:
        unblock(lab)
    wait_for(lambda: pair_on(lab, "vxlan"), SWITCH_BOUND, "h1 and h2 back on vxlan", interval=0.5)
    wait_for(lambda: peers_on(lab, "h1", {"h2": "vxlan", "h3": "vxlan"}), SWITCH_BOUND,
             "h1's networks back on vxlan", interval=0.5)
    same_network_only(lab.members, settle=20)
