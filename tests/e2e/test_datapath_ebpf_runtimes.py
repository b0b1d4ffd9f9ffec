"""End to end: what `datapath: ebpf` (docs/datapath.md) keeps across the runtimes and the
agent — one lab per case, module-scoped:

* agent (etcd, vxlan, 2 hosts, 1 container each): a continuous ping across hosts while
  one host's agent is stopped (SIGTERM) and started again loses nothing; the programs
  stay attached (the same pinned program id on the vxlan device and the NIC before and after), the redirect
  counters keep moving; `crossnet reset` after stopping the agent leaves no tc filter
  and no pin;
* podman (`lab up --runtime podman --datapath ebpf`, the CNI plugin): ADD puts the
  from-container program and the veth's redirect-target entry, a cross-host ping moves the
  redirect counters on both hosts, DEL (podman rm) removes the entry;
* Docker's network driver (`--runtime docker-plugin`): routed endpoints (masterless veth,
  /32 route, /32 in the container, default via 169.254.1.1), the counters move, DeleteEndpoint
  removes the entry.
"""

from __future__ import annotations

import json
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
                         capture_output=True, text=True, check=False).stdout
    return [int(m) for m in re.findall(r"crossnet\S*.*? id (\d+)", out)]


def vxlan_devs(netns: str) -> list[str]:
    """The vxlan devices of a host: with backend vxlan they carry the to-container program
    (the decapsulated packets arrive there; the NIC carries none)."""
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "type", "vxlan"], capture_output=True, text=True,
                         check=False).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


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
    dev = {h.name: vxlan_devs(h.netns)[0] for h in (h1, h2)}
    ids = {h.name: nic_prog_ids(h.netns, dev[h.name]) for h in (h1, h2)}
    assert all(ids.values()), ids  # the programs run on both vxlan devices
    nics = {h.name: nic_prog_ids(h.netns, h.ifname) for h in (h1, h2)}
    assert all(nics.values()), nics  # ... and on the NICs (they take the VXLAN frames apart themselves)
    before = ebpf_host.counters_at(h2.state_dir)
    ping = continuous_ping(h1.containers[0], agents.containers["h2"], count=200, interval=0.05)
    try:
        wait_for(lambda: ebpf_host.counters_at(h2.state_dir).get("redirect", 0) > before.get("redirect", 0), 10,
                 "h2's programs redirecting the ping")
        agents.stop("h2")
        mid = ebpf_host.counters_at(h2.state_dir)
        assert ebpf_host.loaded(h2.state_dir)  # the agent's shutdown leaves the programs in place
        assert nic_prog_ids(h2.netns, dev["h2"]) == ids["h2"] and nic_prog_ids(h2.netns, h2.ifname) == nics["h2"]
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
    assert nic_prog_ids(h2.netns, dev["h2"]) == ids["h2"]  # the restarted agent found them in place: no reload
    assert nic_prog_ids(h2.netns, h2.ifname) == nics["h2"]
    after = ebpf_host.counters_at(h2.state_dir)
    assert after["redirect"] > mid["redirect"]


def test_reset_after_stopping_the_agent_leaves_nothing(agents):
    from crossnet.ebpf import host as ebpf_host
    for name in ("h1", "h2"):
        h = agents.host(name)
        agents.stop(name)
        res = subprocess.run([*host_exec(h.netns, agents.plan), sys.executable, "-m", "crossnet", "--state-dir",
                              h.state_dir, "reset"], capture_output=True, text=True, timeout=60,
                             check=False)
        assert res.returncode == 0, res.stderr
        assert not ebpf_host.loaded(h.state_dir)
        assert all(nic_prog_ids(h.netns, d) == [] for d in (h.ifname, *vxlan_devs(h.netns)))


# ---------------------------------------------------------------- podman (the CNI plugin)


def veth_entries(state_dir: str) -> set[int]:
    """The ifindexes in the programs' allowed-veth map (the redirect targets)."""
    from crossnet.ebpf import bpfsys, maps
    from crossnet.ebpf import host as ebpf_host

    with ebpf_host._pinned(f"{ebpf_host.current_pin_dir(state_dir)}/maps/{maps.VETHS_MAP}") as fd:
        return {int.from_bytes(k, "little") for k in bpfsys.map_keys(fd, 4)}


def runtime_lab(request, runtime: str, tool: str, package: str):
    """A 2-host vxlan lab (l3) with `--runtime RUNTIME --datapath ebpf`, 1 container per host."""
    import shutil

    from tests.conftest import LabFactory

    if not shutil.which(tool) or not os.path.exists("/bin/busybox"):
        pytest.skip(f"needs {package} and busybox-static")
    _needs_ebpf()
    return LabFactory.for_test(request)(hosts=2, backend="vxlan", underlay="l3", containers=1,
                                        extra={"runtime": runtime, "datapath": "ebpf"})


def ping_redirects(lab, runtime_host, container: str, dst: str) -> None:
    """A ping from a container (the runtime's exec) crosses hosts through the programs:
    the redirect counters move on both hosts."""
    from crossnet.ebpf import host as ebpf_host

    before = {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}
    proc = runtime_host.exec(container, "ping", "-c", "3", "-W", "2", dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for h in lab.hosts:
        after = ebpf_host.counters_at(h.state_dir)
        assert after["redirect"] > before[h.name].get("redirect", 0), (h.name, before[h.name], after)


@pytest.fixture(scope="module")
def podlab(request, lab_sweep):
    return runtime_lab(request, "podman", "podman", "podman")


def test_podman_containers_use_the_programs(podlab):
    """`lab up --runtime podman --datapath ebpf`: crossnet-cni's ADD gives podman's
    containers routed veths with the from-container program (redirect counters move on
    both hosts under a cross-host ping); DEL (podman rm) removes the veth's map entry."""
    from crossnet.lab.podman import host_podman

    lab = podlab
    h1 = lab.hosts[0]
    st = {h.name: lab.status(h.name) for h in lab.hosts}
    assert st["h1"]["datapath"]["datapath"] == "ebpf"
    (c1,), (c2,) = st["h1"]["containers"], st["h2"]["containers"]
    idx = int(json.loads(subprocess.run(["ip", "-n", h1.netns, "-j", "link", "show", c1["host_if"]],
                                        capture_output=True, text=True, check=True).stdout)[0]["ifindex"])
    assert idx in veth_entries(h1.state_dir)  # ADD allowed the veth as a redirect target
    assert nic_prog_ids(h1.netns, c1["host_if"])  # and put the from-container program on it
    ping_redirects(lab, host_podman(lab.plan, lab.plan.host("h1")), h1.containers[0], c2["address"])
    host_podman(lab.plan, lab.plan.host("h1")).run("rm", "-f", h1.containers[0])
    assert idx not in veth_entries(h1.state_dir)  # DEL removed the veth's entry


# ---------------------------------------------------------------- Docker (crossnet docker-plugin)


@pytest.fixture(scope="module")
def docklab(request, lab_sweep):
    return runtime_lab(request, "docker-plugin", "dockerd", "docker.io (dockerd)")


def test_docker_plugin_routed_endpoints(docklab):
    """`lab up --runtime docker-plugin --datapath ebpf`: Join gives a routed endpoint (a
    masterless host veth, the /32 route via it, the container's /32 and its default route
    via 169.254.1.1) with the from-container program; containers of both hosts ping with
    the redirect counters moving on both; DeleteEndpoint removes the veth's map entry."""
    from crossnet.lab.docker import host_docker

    lab = docklab
    h1 = lab.hosts[0]
    st = {h.name: lab.status(h.name) for h in lab.hosts}
    (c1,), (c2,) = st["h1"]["containers"], st["h2"]["containers"]
    link = json.loads(subprocess.run(["ip", "-n", h1.netns, "-j", "-d", "link", "show", c1["host_if"]],
                                     capture_output=True, text=True, check=True).stdout)[0]
    assert "master" not in link
    routes = json.loads(subprocess.run(["ip", "-n", h1.netns, "-j", "route", "show", f"{c1['address']}/32"],
                                       capture_output=True, text=True, check=True).stdout)
    assert [r["dev"] for r in routes] == [c1["host_if"]]
    assert link["ifindex"] in veth_entries(h1.state_dir) and nic_prog_ids(h1.netns, c1["host_if"])
    d1 = host_docker(lab.plan, lab.plan.host("h1"))
    inside = d1.exec(h1.containers[0], "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{c1['address']}/32" in inside, inside
    assert "default via 169.254.1.1" in d1.exec(h1.containers[0], "ip", "route").stdout
    ping_redirects(lab, d1, h1.containers[0], c2["address"])
    d1.run("rm", "-f", h1.containers[0])
    assert link["ifindex"] not in veth_entries(h1.state_dir)  # DeleteEndpoint removed the entry
    assert not [c for c in lab.status("h1")["containers"] if c["address"] == c1["address"]]
