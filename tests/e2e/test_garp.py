"""End to end: a host that comes back with a new NIC MAC is announced by `apply`.

The reported case: after host2's underlay NIC got a new MAC and `crossnet apply` ran
again on host2, host1 kept the old MAC for host2's address for ~34 s (no gratuitous
ARP), so the hosts could not talk. Now apply announces the host's addresses (one ARP
request + one ARP reply per address, from a raw socket, crossnet.netlink.garp), and host1's
entry follows within a second or two. The kernel's own announcement on a MAC change
(arp_notify) is switched off in host2's namespace, so only crossnet can do it.

Labs have unique names and are removed by the lab_factory finalizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

NEW_MAC = "02:42:de:ad:be:ef"


def ns(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=30,
                          check=check)


def neigh(netns: str, dev: str, address: str) -> tuple[str | None, list[str]]:
    out = json.loads(ns(netns, "ip", "-j", "neigh", "show", "dev", dev, "to", address).stdout or "[]")
    return (out[0].get("lladdr"), out[0].get("state", [])) if out else (None, [])


def link_mac(netns: str, dev: str) -> str:
    return json.loads(ns(netns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"]


@pytest.mark.parametrize("backend", ["vxlan", "bridge"])
def test_reapply_after_a_nic_mac_change_updates_the_peers_arp_entry(lab_factory, backend: str) -> None:
    lab = lab_factory(hosts=2, underlay="l2", backend=backend, containers=0)
    h1, h2 = (next(h for h in lab.hosts if h.name == n) for n in ("h1", "h2"))
    # where each host's underlay address lives after apply (the NIC, or br0 for bridge)
    dev1 = "br0" if backend == "bridge" else h1.ifname
    dev2 = "br0" if backend == "bridge" else h2.ifname
    old_mac = link_mac(h2.netns, dev2)
    # no kernel announcement on link up / MAC change: what is measured is crossnet's
    for dev in ("all", "default", h2.ifname, dev2):
        ns(h2.netns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.arp_notify=0")
    ns(h1.netns, "ping", "-c", "1", "-W", "2", h2.address)
    assert neigh(h1.netns, dev1, h2.address)[0] == old_mac

    # host2 "comes back" with another NIC MAC (down, new MAC, up — as after a reboot/NIC swap)
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "down")
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "address", NEW_MAC)
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "up")
    time.sleep(1.2)  # past the neighbour locktime (1 s): any ARP from host2 would now count
    assert neigh(h1.netns, dev1, h2.address)[0] == old_mac  # nothing told host1 yet

    proc = lab.crossnet("h2", "apply", "-f", lab.plan.cluster_file, "--host", "h2", "-o", "json", check=False)
    assert proc.returncode == 0, proc.stderr
    assert link_mac(h2.netns, dev2) == NEW_MAC  # bridge: br0 follows the NIC's MAC
    deadline = time.monotonic() + 2.0
    seen = None
    while time.monotonic() < deadline:
        seen, _ = neigh(h1.netns, dev1, h2.address)
        if seen == NEW_MAC:
            break
        time.sleep(0.05)
    assert seen == NEW_MAC, f"host1 still has {seen} for {h2.address} 2 s after host2's apply (new MAC {NEW_MAC})"
    # and they talk again at once
    ns(h1.netns, "ping", "-c", "1", "-W", "1", h2.address)


def test_agent_start_announces_a_new_nic_mac(lab_factory) -> None:
    """The same with `crossnet agent` (static store: the cluster file; it needs no traffic
    of its own to start): its first full sync announces host2, host1 follows at once."""
    import signal
    import sys

    lab = lab_factory(hosts=2, underlay="l2", backend="vxlan", containers=0)
    h1, h2 = (next(h for h in lab.hosts if h.name == n) for n in ("h1", "h2"))
    old_mac = link_mac(h2.netns, h2.ifname)
    for dev in ("all", "default", h2.ifname):
        ns(h2.netns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.arp_notify=0")
    ns(h1.netns, "ping", "-c", "1", "-W", "2", h2.address)
    assert neigh(h1.netns, h1.ifname, h2.address)[0] == old_mac
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "down")
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "address", NEW_MAC)
    ns(h2.netns, "ip", "link", "set", "dev", h2.ifname, "up")
    time.sleep(1.2)
    assert neigh(h1.netns, h1.ifname, h2.address)[0] == old_mac

    log_path = os.path.join(os.path.dirname(h2.state_dir), "garp-agent.log")
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(["ip", "netns", "exec", h2.netns, sys.executable, "-m", "crossnet", "--state-dir",
                                  h2.state_dir, "agent", "-f", lab.plan.cluster_file, "--name", "h2", "--iface",
                                  h2.ifname, "--no-api"], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline and agent.poll() is None:
            seen, _ = neigh(h1.netns, h1.ifname, h2.address)
            if seen == NEW_MAC:
                break
            time.sleep(0.05)
        text = ""
        for _ in range(100):  # the sync's log line follows its announcement
            with open(log_path) as fh:
                text = fh.read()
            if "synced at revision" in text or agent.poll() is not None:
                break
            time.sleep(0.1)
        assert "synced at revision" in text, text
        assert seen == NEW_MAC, f"host1 still has {seen} for {h2.address} after h2's agent synced:\n{text}"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(5)
