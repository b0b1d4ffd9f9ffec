"""End to end: what `datapath: ebpf` (docs/datapath.md) keeps across the runtimes and the
agent — one lab per case, module-scoped:

* agent (etcd, vxlan, 2 hosts, 1 container each): a continuous ping across hosts while
  one host's agent is stopped (SIGTERM) and started again loses nothing; the programs
  stay attached (the same pinned program id on the NIC before and after), the redirect
  counters keep moving; `crossnet reset` after stopping the agent leaves no tc filter
  and no pin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from crossnet.lab.netns import host_exec
from tests.e2e.agentlab import (
    LabCluster,
    continuous_ping,
    end_ping,
    module_factory,
    ping_stats,
    synced_changes,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def _needs_ebpf() -> None:
    from crossnet import ebpf

    why = ebpf.problem()
    if why is not None:
        pytest.skip(f"this machine cannot run the eBPF programs: {why}")


def nic_prog_ids(netns: str, dev: str) -> list[int]:
    """The ids of crossnet's programs on dev's tc ingress hook."""
    out = subprocess.run(["ip", "netns", "exec", netns, "tc", "filter", "show", "dev", dev, "ingress"],
                         capture_output=True, text=True).stdout
    return [int(m) for m in re.findall(r"crossnet\S*.*? id (\d+)", out)]


@pytest.fixture(scope="module")
def agents(request, lab_sweep) -> LabCluster:
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    _needs_ebpf()
    lab = module_factory(request)(hosts=2, underlay="l3", backend="vxlan", containers=1,
                                  extra={"store": "etcd", "datapath": "ebpf"})
    c = LabCluster(lab)
    c.load_containers()
    assert sorted(c.containers) == ["h1", "h2"]
    return c


def test_agent_restart_under_ping_loses_nothing(agents):
    from crossnet.ebpf import host as ebpf_host

    h1, h2 = agents.host("h1"), agents.host("h2")
    ids = {h.name: nic_prog_ids(h.netns, h.ifname) for h in (h1, h2)}
    assert all(ids.values()), ids  # the programs run on both NICs
    before = ebpf_host.counters_at(h2.state_dir)
    ping = continuous_ping(h1.containers[0], agents.containers["h2"], count=200, interval=0.05)
    try:
        wait_for(lambda: ebpf_host.counters_at(h2.state_dir).get("redirect", 0) > before.get("redirect", 0), 10,
                 "h2's programs redirecting the ping")
        agents.stop("h2")
        mid = ebpf_host.counters_at(h2.state_dir)
        assert ebpf_host.loaded(h2.state_dir)  # the agent's shutdown leaves the programs in place
        assert nic_prog_ids(h2.netns, h2.ifname) == ids["h2"]
        wait_for(lambda: ebpf_host.counters_at(h2.state_dir)["redirect"] > mid["redirect"], 10,
                 "redirects with the agent down")
        offset = agents.log_size("h2")
        agents.start("h2")
        changes = synced_changes(agents.log_since("h2", offset))
        assert changes and changes[0] == 0, changes  # the programs found in place: nothing reloaded
        out = ping.communicate(timeout=60)[0]  # bounded: -c 200 -w 20
    finally:
        if ping.poll() is None:
            end_ping(ping)
    sent, received = ping_stats(out)
    assert sent == 200 and received == sent, out
    assert nic_prog_ids(h2.netns, h2.ifname) == ids["h2"]  # the restarted agent found them in place: no reload
    after = ebpf_host.counters_at(h2.state_dir)
    assert after["redirect"] > mid["redirect"]


def test_reset_after_stopping_the_agent_leaves_nothing(agents):
    from crossnet.ebpf import host as ebpf_host
    for name in ("h1", "h2"):
        h = agents.host(name)
        agents.stop(name)
        res = subprocess.run([*host_exec(h.netns, agents.plan), sys.executable, "-m", "crossnet", "--state-dir",
                              h.state_dir, "reset"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert not ebpf_host.loaded(h.state_dir)
        assert nic_prog_ids(h.netns, h.ifname) == []
