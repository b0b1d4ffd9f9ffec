"""The lab itself: l2/l3 topologies, concurrent labs, teardown after a crash, the CLI.

Most labs here are built with apply=False (topology only) so these tests do not
depend on the data planes; one test runs the real `crossnet apply`/`attach` path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute

from crossnet.check import Endpoint, ping_matrix
from crossnet.errors import CrossnetError
from crossnet.lab import manager, netns, services
from crossnet.lab.manager import Lab, LabExistsError
from crossnet.lab.topology import LabOptions, plan_lab

pytestmark = pytest.mark.e2e


def prefixed(name: str) -> list[str]:
    return [n for n in netns.list_netns() if n.startswith(f"{name}-")]


def links(ns_name: str) -> dict[str, dict]:
    with IPRoute(netns=netns.netns_path(ns_name)) as ipr:
        out = {}
        for link in ipr.link("dump"):
            out[link.get("ifname")] = {"index": link["index"], "mtu": link.get("mtu"),
                                       "up": bool(link["flags"] & 1), "master": link.get("master")}
        return out


def underlay_matrix_ok(lab: Lab, **kw) -> list:
    pairs = lab.check(underlay=True, **kw)
    assert pairs and all(p.ok for p in pairs), [p for p in pairs if not p.ok]
    return pairs


def crossnet_cli(*args: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossnet", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


# ---- topologies ---------------------------------------------------------------------
def test_l2_three_hosts_reach_each_other_across_the_switch(lab_factory):
    lab = lab_factory(hosts=3, underlay="l2", containers=0, apply=False)
    assert set(prefixed(lab.name)) == {f"{lab.name}-sw", *(f"{lab.name}-h{i}" for i in (1, 2, 3))}
    sw = links(f"{lab.name}-sw")
    assert sw["sw0"]["up"]
    for i in (1, 2, 3):
        assert sw[f"sw-h{i}"]["master"] == sw["sw0"]["index"] and sw[f"sw-h{i}"]["up"]
    subnets = {h.subnet for h in lab.hosts}
    assert len(subnets) == 1
    pairs = underlay_matrix_ok(lab)
    assert len(pairs) == 6 and all(p.rtt_ms is not None for p in pairs)
    # the switch namespace plays the LAN router: hosts reach .1 on-link
    gw = lab.hosts[0].gateway
    out = lab.run("h2", ["ip", "route", "get", lab.hosts[2].address], check=True).stdout
    assert "via" not in out  # same L2 segment
    assert ping_matrix([Endpoint("h1", lab.hosts[0].netns, lab.hosts[0].address),
                        Endpoint("sw", lab.plan.fabric.netns, gw)])[0].ok


def test_l3_hosts_in_different_subnets_reach_each_other_via_router(lab_factory):
    lab = lab_factory(hosts=3, underlay="l3", containers=0, apply=False)
    assert f"{lab.name}-rt" in prefixed(lab.name)
    nets = [ipaddress.ip_network(h.subnet) for h in lab.hosts]
    assert len(set(nets)) == 3
    for h in lab.hosts:
        others = [n for n in nets if n != ipaddress.ip_network(h.subnet)]
        assert all(ipaddress.ip_address(h.address) not in n for n in others)
    underlay_matrix_ok(lab)
    out = lab.run("h1", ["ip", "route", "get", lab.hosts[1].address], check=True).stdout
    assert f"via {lab.hosts[0].gateway}" in out
    # the router forwards between the hosts' subnets
    assert lab.run("rt", ["sysctl", "-n", "net.ipv4.ip_forward"], check=True).stdout.strip() == "1"


@pytest.mark.parametrize("underlay", ["l2", "l3"])
def test_mtu_on_every_underlay_link(lab_factory, underlay):
    lab = lab_factory(hosts=2, underlay=underlay, containers=0, apply=False, mtu=1400)
    fab = links(lab.plan.fabric.netns)
    for h in lab.hosts:
        assert links(h.netns)["eth0"]["mtu"] == 1400
        assert fab[h.fabric_ifname]["mtu"] == 1400
    if underlay == "l2":
        assert fab["sw0"]["mtu"] == 1400
    # 1372 bytes of ICMP payload + 28 = 1400 fits with DF set; 1373 does not
    peer = lab.hosts[1].address
    assert lab.run("h1", ["ping", "-c1", "-W1", "-M", "do", "-s", "1372", peer], timeout=10).returncode == 0
    assert lab.run("h1", ["ping", "-c1", "-W1", "-M", "do", "-s", "1373", peer], timeout=10).returncode != 0


def test_two_labs_at_once_do_not_collide(lab_factory):
    a = lab_factory(hosts=2, underlay="l2", containers=1, apply=False)
    b = lab_factory(hosts=2, underlay="l3", containers=1, apply=False)
    assert a.plan.slot != b.plan.slot
    assert not ipaddress.ip_network(a.plan.block).overlaps(ipaddress.ip_network(b.plan.block))
    assert not set(prefixed(a.name)) & set(prefixed(b.name))
    underlay_matrix_ok(a)
    underlay_matrix_ok(b)
    names = {x["name"]: x for x in manager.list_labs()}
    assert names[a.name]["namespaces"] == "5/5" and names[b.name]["phase"] == "ready"
    manager.down(a.name)
    assert prefixed(a.name) == []
    underlay_matrix_ok(b)  # the other lab is untouched


def test_same_name_twice_is_refused_and_leaves_the_first_alone(lab_factory):
    lab = lab_factory(hosts=1, containers=0, apply=False)
    with pytest.raises(LabExistsError, match="already exists"):
        manager.up(LabOptions(name=lab.name, hosts=1, containers=0), apply=False)
    assert len(prefixed(lab.name)) == 2 and manager.read_manifest(lab.name)["phase"] == "ready"


# ---- teardown -----------------------------------------------------------------------
def test_down_after_crash_half_way_removes_everything(lab_factory):
    name = lab_factory.new_name()
    plan = plan_lab(LabOptions(name=name, hosts=4, containers=1), slot=199, lab_dir=str(manager.lab_dir(name)))
    manifest = {**plan.to_dict(), "phase": "creating", "services": [], "apply": True, "owner_pid": os.getpid()}
    manager._write_manifest(manifest)
    created = plan.namespaces()[:3]  # switch + 2 of 4 hosts, as if `up` died here
    for n in created:
        netns.create_netns(n)
    netns.create_netns(f"{name}-zz")  # stray namespace not in the manifest
    sleeper = subprocess.Popen(["ip", "netns", "exec", created[1], "sleep", "60"])
    stubborn = subprocess.Popen(["ip", "netns", "exec", f"{name}-zz", "sh", "-c", "trap '' TERM; sleep 60"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(netns.netns_pids(created[1:2])[created[1]]) < 1:
            time.sleep(0.05)
        t0 = time.monotonic()
        result = manager.down(name)
        assert time.monotonic() - t0 < 15
        assert set(result["namespaces_removed"]) == {*created, f"{name}-zz"}
        assert result["processes_killed"] >= 2
        assert sleeper.wait(timeout=5) is not None and stubborn.wait(timeout=5) is not None
        assert prefixed(name) == []
        assert not manager.lab_dir(name).exists()
        again = manager.down(name)  # idempotent
        assert again["existed"] is False and again["namespaces_removed"] == []
    finally:
        for p in (sleeper, stubborn):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)


def test_down_works_when_nothing_exists(lab_sweep):
    result = manager.down("tnever")
    assert result == {"name": "tnever", "existed": False, "namespaces_removed": [],
                      "processes_killed": 0, "errors": []}


def test_down_removes_the_ebpf_pins_of_its_hosts(lab_factory):
    """`datapath: ebpf` pins its programs in the machine's bpffs, outside the lab's
    namespaces and directory: `lab down` (no `reset` on the hosts) removes them too."""
    from crossnet import ebpf
    from crossnet.ebpf import host as ebpf_host

    if ebpf.problem() is not None:
        pytest.skip(f"this machine cannot load crossnet's eBPF programs: {ebpf.problem()}")
    lab = lab_factory(hosts=2, backend="host-gw", containers=1, extra={"datapath": "ebpf"})
    dirs = [ebpf_host.host_dir(h.state_dir) for h in lab.hosts]
    assert all(d.is_dir() and any(d.iterdir()) for d in dirs), dirs  # each host's programs are pinned
    manager.down(lab.name)
    assert [d for d in dirs if d.exists()] == []


def test_failed_up_tears_down_and_services_hook(lab_factory, tmp_path):
    calls: list[tuple[str, str]] = []

    def start(plan, host):
        calls.append(("start", host.name))
        netns.spawn(host.netns, ["sleep", "60"], f"{plan.lab_dir}/hosts/{host.name}/sleeper.log")

    def stop(plan, host):
        calls.append(("stop", host.name))

    def bad_start(plan, host):
        raise CrossnetError(f"{host.name}: service exploded")

    services.register_service(services.HostService("tsleeper", start, stop))
    try:
        lab = lab_factory(hosts=2, containers=0, apply=False)
        assert sorted(calls) == [("start", "h1"), ("start", "h2")]
        assert [s["name"] for s in manager.read_manifest(lab.name)["services"]] == ["tsleeper"]
        # `ip netns exec` enters the namespace after Popen returns: wait (bounded) for it
        deadline = time.monotonic() + 10
        while not all(netns.netns_pids([h.netns])[h.netns] for h in lab.hosts):
            assert time.monotonic() < deadline, "the services' sleepers never entered their hosts"
            time.sleep(0.05)
        manager.down(lab.name)
        assert sorted(calls)[:2] == [("start", "h1"), ("start", "h2")]
        assert sorted(c for c in calls if c[0] == "stop") == [("stop", "h1"), ("stop", "h2")]
        assert prefixed(lab.name) == []

        services.register_service(services.HostService("tbad", bad_start, lambda p, h: None, order=200))
        name = lab_factory.new_name()
        with pytest.raises(CrossnetError, match="service exploded"):
            manager.up(LabOptions(name=name, hosts=2, containers=1), apply=False)
        assert prefixed(name) == [] and not manager.lab_dir(name).exists()
    finally:
        services.unregister_service("tsleeper")
        services.unregister_service("tbad")


# ---- checker ------------------------------------------------------------------------
def test_builtin_icmp_probe_matches_ping(lab_factory):
    lab = lab_factory(hosts=3, underlay="l3", containers=0, apply=False)
    pairs = lab.check(underlay=True)
    eps = lab.endpoints(underlay=True)
    icmp = ping_matrix(eps, method="icmp", count=2)
    assert [(p.src, p.dst, p.ok) for p in icmp] == [(p.src, p.dst, p.ok) for p in pairs]
    assert all(p.rtt_ms is not None and p.rtt_ms >= 0 for p in icmp)
    # an unused address in the lab's own subnet: no reply, bounded time, both methods
    h1 = lab.hosts[0]
    ghost = str(ipaddress.ip_network(h1.subnet).network_address + 99)
    t0 = time.monotonic()
    pair = [Endpoint("h1", h1.netns, h1.address), Endpoint("ghost", h1.netns, ghost)]
    bad = ping_matrix(pair, timeout=0.5, method="ping")
    bad_icmp = ping_matrix(pair, timeout=0.5, method="icmp")
    assert time.monotonic() - t0 < 10
    assert bad[0].dst == "ghost" and not bad[0].ok and bad[0].error
    assert not bad_icmp[0].ok and "0 received" in bad_icmp[0].error


# ---- the real apply path ------------------------------------------------------------
def test_apply_and_attach_vxlan_over_l3(lab_factory):
    lab = lab_factory(hosts=2, underlay="l3", backend="vxlan", containers=1, apply=True)
    statuses = lab.statuses()
    assert {s["host"] for s in statuses.values()} == {"h1", "h2"}
    eps = lab.endpoints(statuses=statuses)
    assert sorted(e.name for e in eps) == [f"{lab.name}-h1-c1", f"{lab.name}-h2-c1"]
    pairs = lab.check(statuses=statuses)
    assert len(pairs) == 2 and all(p.ok for p in pairs), pairs
    summary = lab.summary(statuses)
    assert all(h["subnet"] and h["containers"][0]["address"] for h in summary["hosts"])


# ---- CLI ----------------------------------------------------------------------------
def test_cli_up_exec_check_list_down(lab_factory):
    name = lab_factory.new_name()
    env = lab_factory.env
    up = crossnet_cli("lab", "up", "--name", name, "--hosts", "2", "--underlay", "l3", "--containers", "1",
                      "--no-apply", "-o", "json", env=env)
    assert up.returncode == 0, up.stderr
    summary = json.loads(up.stdout)
    assert summary["name"] == name and summary["underlay"] == "l3" and len(summary["hosts"]) == 2
    assert summary["hosts"][0]["containers"][0]["id"] == f"{name}-h1-c1"

    r = crossnet_cli("lab", "exec", "--name", name, "h2", "--", "sh", "-c", "echo $CROSSNET_STATE_DIR; exit 7",
                     env=env)
    assert r.returncode == 7 and r.stdout.strip() == f"{manager.lab_dir(name)}/hosts/h2/state"
    r = crossnet_cli("lab", "exec", "--name", name, f"{name}-h1", "--", "ip", "-br", "addr", "show", "eth0",
                     env=env)
    assert r.returncode == 0 and summary["hosts"][0]["address"] in r.stdout
    r = crossnet_cli("lab", "exec", "--name", name, "h9", "--", "true", env=env)
    assert r.returncode == 2 and "no host or namespace 'h9'" in r.stderr

    r = crossnet_cli("lab", "check", "--name", name, "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True and len(json.loads(r.stdout)["pairs"]) == 2
    r = crossnet_cli("lab", "list", "-o", "json", env=env)
    assert name in {x["lab"] for x in json.loads(r.stdout)["labs"]}

    r = crossnet_cli("lab", "down", "--name", name, "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["namespaces_removed"]) == 5
    assert prefixed(name) == [] and not manager.lab_dir(name).exists()
    r = crossnet_cli("lab", "down", "--name", name, env=env)
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_cli_demo_no_apply_json(lab_factory):
    name = lab_factory.new_name()
    r = crossnet_cli("lab", "demo", "--name", name, "--hosts", "3", "--no-apply", "-o", "json", env=lab_factory.env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["underlay"] == "l2" and d["backend"] == "vxlan"
    assert [h["name"] for h in d["hosts"]] == ["h1", "h2", "h3"]
    assert len(d["pairs"]) == 6 and all({"src", "dst", "ok", "rtt_ms"} <= set(p) for p in d["pairs"])
    assert prefixed(name) == [] and not manager.lab_dir(name).exists()
