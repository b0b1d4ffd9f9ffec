"""Restart safety of `crossnet agent` on etcd, end to end (vxlan, 3 hosts on l2, lease
TTL 5 s, one lab for the module built by `lab up --store etcd`; tests run in file
order and each leaves the cluster whole):

* an agent restarted (SIGTERM, back within the TTL) with an unchanged cluster makes
  zero kernel changes (kernel state snapshot of its host, `ip monitor` during the
  restart, and the agent's own "synced ...: N change(s)" line), keeps its subnet and
  its still-live lease;
* an agent that lost its lease file and is back within the TTL takes over its
  live record: same subnet, no kernel change;
* a peer that left (--release) while an agent was down is removed by that agent's
  first sync after the restart (route, FDB entry, neighbour);
* start-up retries back off: the "retrying in X s" delays double up to --backoff-max,
  and the agent really waits that long;
* etcd stopped for 30 s and started again: continuous pings between containers lose
  nothing from before the outage until several seconds after every agent has
  resynced (with zero kernel changes), and the agents keep their subnets and leases.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime

import pytest

from crossnet.store.etcd import EtcdStore
from tests.e2e import kstate
from tests.e2e.agentlab import (
    LabCluster,
    continuous_ping,
    end_ping,
    module_factory,
    ping_stats,
    synced_changes,
    wait_for,
)
from tests.e2e.test_agent import PREFIX, _agent_cmd, _route_dsts

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

TTL = 5
HOSTS = ["h1", "h2", "h3"]
OUTAGE = 30.0  # seconds etcd is down
AFTER = 5.0  # seconds of pinging after every agent reported its resync


@pytest.fixture(scope="module")
def cluster(request, lab_sweep) -> LabCluster:
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    lab = module_factory(request)(hosts=len(HOSTS), underlay="l2", backend="vxlan", containers=1,
                                  extra={"store": "etcd", "ttl": TTL})
    c = LabCluster(lab, ttl=TTL)
    c.load_containers()
    assert sorted(c.containers) == HOSTS
    return c


def kernel_state(netns: str) -> dict:
    """kstate's snapshot plus the static FDB entries and permanent neighbours (vxlan peers)."""
    snap = kstate.snapshot(netns)
    fdb = json.loads(subprocess.run(["bridge", "-n", netns, "-j", "fdb", "show"], capture_output=True, text=True,
                                    check=True).stdout or "[]")
    snap["fdb"] = sorted(json.dumps(e, sort_keys=True) for e in fdb if e.get("state") in ("permanent", "static"))
    neigh = json.loads(subprocess.run(["ip", "-n", netns, "-j", "neigh", "show", "nud", "permanent"],
                                      capture_output=True, text=True, check=True).stdout or "[]")
    snap["neigh"] = sorted(json.dumps(e, sort_keys=True) for e in neigh)
    return snap


def live_hosts(cluster: LabCluster) -> dict[str, object]:
    return {h.name: h for h in EtcdStore(cluster.etcd.client(), PREFIX).snapshot().hosts}


def whole(cluster: LabCluster) -> None:
    wait_for(lambda: cluster.all_programmed(HOSTS), 15, "every agent has both peers programmed", interval=0.2)
    assert cluster.mesh(HOSTS) == []


def test_restart_within_ttl_changes_nothing_and_keeps_subnet_and_lease(cluster):
    """SIGTERM h1's agent and start it again within the TTL: the lease is still live
    (etcd keeps h1, h2 keeps its route), the agent gets the same subnet and lease
    back and changes nothing in the kernel."""
    h = "h1"
    netns = cluster.host(h).netns
    whole(cluster)
    st0 = cluster.status(h)
    sub = st0["subnet"]
    # IPv6 link-local addresses of the fresh lab's links settle (DAD) on their own: not the agent's doing
    wait_for(lambda: not subprocess.run(["ip", "-n", netns, "-6", "addr", "show", "tentative"], capture_output=True,
                                        text=True, check=True).stdout.strip(), 10, "IPv6 DAD done on " + netns)
    before = kernel_state(netns)
    offset = cluster.log_size(h)
    monitor = subprocess.Popen(["ip", "-4", "-n", netns, "monitor", "link", "address", "route"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        cluster.stop(h, signal.SIGTERM)
        rec = live_hosts(cluster).get(h)  # the lease outlives the agent
        assert rec is not None and str(rec.subnet) == sub
        assert sub in _route_dsts(cluster.host("h2").netns)
        st = cluster.start(h)
        time.sleep(0.5)  # events the restart might have caused reach the monitor
    finally:
        monitor.terminate()
        events, _ = monitor.communicate(timeout=10)
    assert st["subnet"] == sub
    assert st["lease"] == st0["lease"]
    assert kstate.diff(before, kernel_state(netns)) == []
    assert events.strip() == "", f"kernel events during the restart:\n{events}"
    assert synced_changes(cluster.log_since(h, offset)) == [0], cluster.log_since(h, offset)
    assert live_hosts(cluster)[h].lease == int(st0["lease"], 16)
    whole(cluster)


def test_restart_without_lease_file_takes_over_its_live_record(cluster):
    """Local state lost (agent.json deleted) and the agent back within the TTL: the
    store's live record of this name and address is taken over, same subnet, and
    the kernel is left as it was."""
    h = "h2"
    netns = cluster.host(h).netns
    sub = cluster.status(h)["subnet"]
    cluster.stop(h, signal.SIGTERM)
    os.unlink(os.path.join(cluster.state(h), "agent.json"))
    before = kernel_state(netns)
    offset = cluster.log_size(h)
    st = cluster.start(h)
    assert st["subnet"] == sub
    assert kstate.diff(before, kernel_state(netns)) == []
    assert synced_changes(cluster.log_since(h, offset)) == [0]
    whole(cluster)


def test_peer_that_left_while_down_is_removed_at_restart(cluster):
    """h3 leaves (--release) while h1's agent is stopped; h1's kernel still has h3's
    route, FDB entry and neighbour until h1's agent starts again, whose first sync
    removes them. h3 rejoins afterwards."""
    h, gone = "h1", "h3"
    netns = cluster.host(h).netns
    cluster.stop(gone, signal.SIGTERM)
    cluster.start(gone, "--release")
    whole(cluster)
    sub = cluster.status(gone)["subnet"]
    vtep_mac = live_hosts(cluster)[gone].data["vtep_mac"]
    address = cluster.host(gone).address

    def traces() -> list[str]:
        k = kernel_state(netns)
        out = [f"route {sub}"] if sub in _route_dsts(netns) else []
        out += [e for e in k["fdb"] if vtep_mac in e or address in e]
        out += [e for e in k["neigh"] if vtep_mac in e]
        return out

    assert len(traces()) >= 3, traces()  # route, FDB entry, neighbour
    cluster.stop(h, signal.SIGTERM)
    cluster.stop(gone, signal.SIGTERM)  # --release: the lease is revoked, h3 reset
    assert gone not in live_hosts(cluster)
    assert len(traces()) >= 3, "removed while h1's agent was down?"
    offset = cluster.log_size(h)
    st = cluster.start(h)
    assert traces() == []  # gone by the time the agent reports ready
    assert gone not in {p["name"] for p in st["peers"]}
    assert synced_changes(cluster.log_since(h, offset))[0] >= 3
    assert cluster.mesh(["h1", "h2"]) == []
    # h3 back (its state was reset: its container is attached again)
    cluster.start(gone)
    cluster.attach(gone)
    whole(cluster)


_RETRY_RE = re.compile(r"^(\S+) crossnet-agent ERROR .*retrying in ([\d.]+)s \(attempt (\d+)/(\d+)\)$")


def test_start_retries_back_off(cluster):
    """etcd unreachable at start: each "retrying in X s" delay doubles from 0.5 s up
    to --backoff-max, and the agent waits that long between attempts."""
    gw = cluster.plan.fabric.address.split("/")[0]
    res = _agent_cmd(cluster, "h2", f"http://{gw}:2999", "--retries", "5", "--backoff-max", "1.5")
    assert res.returncode == 1, res.stderr
    retries = [m for m in map(_RETRY_RE.match, res.stderr.splitlines()) if m]
    assert [int(m.group(3)) for m in retries] == [1, 2, 3, 4], res.stderr
    delays = [float(m.group(2)) for m in retries]
    assert delays[0] == 0.5
    for prev, cur in itertools.pairwise(delays):
        assert cur == min(prev * 2, 1.5), delays
    assert delays[1] > delays[0] and delays[2] > delays[1]  # it grows (then stays at the cap)
    stamps = [datetime.fromisoformat(m.group(1)) for m in retries]  # RFC 3339 UTC
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    for gap, delay in zip(gaps, delays):
        assert gap >= delay - 0.05, (gaps, delays)
    assert res.stderr.strip().splitlines()[-1].endswith("(gave up after 5 attempts)")


def test_etcd_outage_ping_continues_through_resync(cluster):
    """etcd stopped for 30 s, then started: h1 -> h2 and h3 -> h1 ping every 0.2 s from
    before the stop until AFTER seconds after every agent reported a resync after the
    restart: 0 lost. The resync changes nothing; subnets and leases are kept."""
    whole(cluster)
    before = {h: cluster.status(h) for h in HOSTS}
    offsets = {h: cluster.log_size(h) for h in HOSTS}
    count = int((OUTAGE + 40 + AFTER) / 0.2)  # bound; ended early with SIGINT
    pings = [continuous_ping(cluster.host("h1").containers[0], cluster.containers["h2"], count),
             continuous_ping(cluster.host("h3").containers[0], cluster.containers["h1"], count)]
    try:
        time.sleep(1)
        cluster.etcd.stop()
        t_down = time.monotonic()
        wait_for(lambda: all(not cluster.status(h)["healthy"] for h in HOSTS), 15, "agents notice the outage",
                 interval=0.5)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - t_down)))
        assert all(p.poll() is None for p in pings), "a ping ended during the outage"
        cluster.etcd.start()
        t_up = time.time()

        def resynced() -> bool:
            sts = [cluster.status(h) for h in HOSTS]
            return all(s["healthy"] and s["synced_at"] and s["synced_at"] > t_up for s in sts)

        wait_for(resynced, 30, "every agent healthy and resynced after etcd's restart", interval=0.5)
        t_synced = time.time()
        time.sleep(AFTER)
        assert all(p.poll() is None for p in pings), "a ping ended before the agents resynced"
    finally:
        outs = [end_ping(p) for p in pings]
        if not cluster.etcd.running():
            cluster.etcd.start()
    for out in outs:
        sent, received = ping_stats(out)
        assert sent == received, out
        assert sent >= (OUTAGE + AFTER) / 0.2 * 0.9, out
    assert time.time() - t_synced >= AFTER
    for h in HOSTS:
        st = cluster.status(h)
        assert (st["subnet"], st["lease"]) == (before[h]["subnet"], before[h]["lease"]), h
        log = cluster.log_since(h, offsets[h])
        assert synced_changes(log) and synced_changes(log)[-1] == 0, log[-2000:]
    whole(cluster)
