"""`crossnet agent` on etcd with the other backends than vxlan: host-gw (3 hosts, l2)
and ovs-gre (3 hosts, l3, a private Open vSwitch per host started by the lab).

One lab per backend (module scope, `lab up --store etcd`: etcd in the switch/router
namespace, an agent per host, one container each, lease TTL 5 s); the tests run in
file order and each leaves the cluster whole (all three agents running, every
container reaching every other one):

* full mesh between the containers, every agent has both peers programmed;
* SIGTERM to h3's agent (no --release): its lease expires and within TTL + 2 s its
  route (ovs-gre: also its tunnel port gre-h3 and every flow naming it) is gone on
  h1 and h2; restarted, h3 is followed again and the mesh is whole;
* h3's agent restarted with --release, then SIGTERM: the same, and h3 is reset;
  restarted and its container re-attached, the mesh is whole.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from crossnet.store.etcd import EtcdStore
from tests.e2e.agentlab import LabCluster, module_factory, wait_for
from tests.e2e.test_agent import PREFIX, _route_dsts

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

TTL = 5
HOSTS = ["h1", "h2", "h3"]
LEAVER = "h3"
STAY = ["h1", "h2"]
PARAMS = [("host-gw", "l2"), ("ovs-gre", "l3")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{b}-{u}" for b, u in PARAMS])
def agent_lab(request, lab_sweep) -> LabCluster:
    from crossnet.lab.etcdserver import etcd_available

    backend, underlay = request.param
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if backend.startswith("ovs"):
        import shutil

        if not shutil.which("ovs-vswitchd"):
            pytest.skip("needs Open vSwitch (apt-get install openvswitch-switch)")
    factory = module_factory(request)
    lab = factory(hosts=len(HOSTS), underlay=underlay, backend=backend, containers=1,
                  extra={"store": "etcd", "ttl": TTL})
    cluster = LabCluster(lab, ttl=TTL)
    cluster.load_containers()
    assert sorted(cluster.containers) == HOSTS
    return cluster


# ---- what a peer still has of h3 ------------------------------------------------------
def ovs_ports(cluster: LabCluster, h: str) -> set[str]:
    out = cluster.lab.run(h, ["ovs-vsctl", "list-ports", "cnovs0"], timeout=20)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def ovs_flows(cluster: LabCluster, h: str) -> list[str]:
    out = cluster.lab.run(h, ["ovs-ofctl", "--names", "dump-flows", "cnovs0"], timeout=20)
    assert out.returncode == 0, out.stderr
    return [ln for ln in out.stdout.splitlines() if "actions=" in ln]


def traces_of(cluster: LabCluster, h: str, other: str, subnet: str) -> list[str]:
    """What `h` still has programmed for peer `other` (empty: nothing)."""
    left = []
    if subnet in _route_dsts(cluster.host(h).netns):
        left.append(f"route {subnet}")
    if cluster.plan.backend.startswith("ovs"):
        port = f"gre-{other}"
        if port in ovs_ports(cluster, h):
            left.append(f"port {port}")
        flows = ovs_flows(cluster, h)
        left += [f"flow {f.strip()}" for f in flows if port in f]
        # the peers' in_port flows: one per remaining peer (a flow of a deleted port
        # would show a bare port number)
        tunnel_in = [f for f in flows if "priority=100" in f and "in_port=" in f]
        if len(tunnel_in) != len(HOSTS) - 2:
            left.append(f"{len(tunnel_in)} tunnel in_port flows: {tunnel_in}")
    return left


def programmed_on(cluster: LabCluster, h: str, other: str, subnet: str) -> list[str]:
    """What `h` is missing for peer `other` (empty: fully programmed)."""
    missing = []
    if subnet not in _route_dsts(cluster.host(h).netns):
        missing.append(f"route {subnet}")
    if cluster.plan.backend.startswith("ovs"):
        port = f"gre-{other}"
        if port not in ovs_ports(cluster, h):
            missing.append(f"port {port}")
        if not any(re.search(rf"in_port=\"?{port}\"?[ ,]", f) for f in ovs_flows(cluster, h)):
            missing.append(f"flow in_port={port}")
    return missing


def assert_gone_within(cluster: LabCluster, subnet: str, t0: float, deadline: float) -> None:
    for h in STAY:
        wait_for(lambda h=h: not traces_of(cluster, h, LEAVER, subnet), deadline - (time.monotonic() - t0),
                 f"{LEAVER}'s route/port/flows gone on {h}", interval=0.1)
    assert time.monotonic() - t0 <= deadline


def assert_whole(cluster: LabCluster) -> None:
    wait_for(lambda: cluster.all_programmed(HOSTS), 15, "every agent has both peers programmed", interval=0.2)
    subnets = {h: cluster.status(h)["subnet"] for h in HOSTS}
    for h in HOSTS:
        for o in HOSTS:
            if o != h:
                assert programmed_on(cluster, h, o, subnets[o]) == [], f"{h} for {o}"
    assert cluster.mesh(HOSTS) == []


# ---- tests ------------------------------------------------------------------------------
def test_full_mesh(agent_lab):
    """Every agent programmed both peers with the lab's backend; every container reaches every other one."""
    st = agent_lab.status("h1")
    assert st["healthy"], st
    assert agent_lab.lab.status("h1")["backend"] == agent_lab.plan.backend
    assert len({agent_lab.status(h)["subnet"] for h in HOSTS}) == len(HOSTS)
    assert_whole(agent_lab)


def test_sigterm_lease_expiry_removes_peer_everywhere_then_rejoin(agent_lab):
    """SIGTERM without --release: h3 keeps its data plane, its lease expires and
    h1/h2 drop its route (ovs-gre: tunnel port and flows) within TTL + 2 s.
    Restarted, h3 gets its subnet back and the mesh is whole again."""
    sub = agent_lab.status(LEAVER)["subnet"]
    t0 = time.monotonic()
    agent_lab.stop(LEAVER, signal.SIGTERM)
    # the leaver keeps its own data plane
    assert sub in _route_dsts(agent_lab.host(LEAVER).netns)
    assert_gone_within(agent_lab, sub, t0, TTL + 2)
    assert LEAVER not in {h.name for h in EtcdStore(agent_lab.etcd.client(), PREFIX).snapshot().hosts}
    st = agent_lab.start(LEAVER)
    assert st["subnet"] == sub
    assert_whole(agent_lab)


def test_release_removes_peer_everywhere_then_rejoin(agent_lab):
    """h3's agent restarted with --release, then SIGTERM: the lease is revoked, h1/h2
    drop h3 within TTL + 2 s, h3 is reset (no bridge, no applied.json). Restarted and
    its container re-attached, the mesh is whole again."""
    agent_lab.stop(LEAVER, signal.SIGTERM)
    agent_lab.start(LEAVER, "--release")
    sub = agent_lab.status(LEAVER)["subnet"]
    assert_whole(agent_lab)
    t0 = time.monotonic()
    agent_lab.stop(LEAVER, signal.SIGTERM)
    assert_gone_within(agent_lab, sub, t0, TTL + 2)
    assert not os.path.exists(os.path.join(agent_lab.state(LEAVER), "applied.json"))
    assert sub not in _route_dsts(agent_lab.host(LEAVER).netns)
    if agent_lab.plan.backend.startswith("ovs"):
        assert agent_lab.lab.run(LEAVER, ["ovs-vsctl", "br-exists", "cnovs0"], timeout=20).returncode == 2
    hosts = {h.name for h in EtcdStore(agent_lab.etcd.client(), PREFIX).snapshot().hosts}
    assert hosts == set(STAY)
    agent_lab.start(LEAVER)
    agent_lab.attach(LEAVER)
    assert_whole(agent_lab)
