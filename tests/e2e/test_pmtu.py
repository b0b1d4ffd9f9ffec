"""End to end: path-MTU discovery (`crossnet apply --probe-mtu`, crossnet.transport) in a
lab where one underlay link — h2's, both ends: the router's rt-h2 (l3) or the switch's
port sw-h2 (l2) and h2's eth0 — has MTU 1400 while the others keep 1500.

h1 and h3 learn it from the router's "fragmentation needed" (l3: vxlan, wireguard, auto) or
from probes that vanish (l2, host-gw: a bridge drops oversized frames silently) — their
own NICs say 1500; every host's container MTU follows (1400 − the transport's overhead),
containers attached before the change get it too, don't-fragment pings of exactly the
container MTU cross between every pair of containers, one byte more fails at once with a
local error instead of vanishing, and `status` (text and JSON) names h2 as narrow with
1400. With WireGuard (wireguard, auto) every wireguard-go keeps its UDP sockets through
the MTU change (sent its port again, it re-opened them, losing what arrived meanwhile). Only links inside the lab's namespaces change; every lab is removed by the fixture,
pass or fail.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from crossnet.backends import get_backend
from crossnet.lab.etcd import wait_agent_ready
from crossnet.transport import pmtu, probe

from .agentlab import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

NARROW = 1400


def set_mtu(netns: str, ifname: str, mtu: int) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", ifname, "mtu", str(mtu)], check=True)


def link_mtu(netns: str, ifname: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", ifname], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]["mtu"]


def df_ping(netns: str, addr: str, size: int, count: int = 1) -> subprocess.CompletedProcess:
    """`count` don't-fragment echoes making IP packets of `size` bytes; exit status 0 when
    any reply came back. One reply proves the size crosses (a packet too big for the path
    never does), so the checks that a size fits send 3: one echo lost on a loaded CI machine
    (it was, once, behind WireGuard) is not an MTU fault."""
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-M", "do", "-s", str(size - 28),
                           "-c", str(count), "-i", "0.2", "-W", "2", addr],
                          capture_output=True, text=True, timeout=30, check=False)


def udp_socket_inodes(netns: str, port: int) -> set[str]:
    """The inodes of the UDP sockets bound to `port` in `netns` (a socket re-opened: new ones)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-H", "-u", "-a", "-n", "-e", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\bino:(\d+)", out))


@pytest.mark.parametrize(("backend", "underlay"), [("vxlan", "l3"), ("wireguard", "l3"), ("host-gw", "l2"),
                                                  ("auto", "l3")])
def test_narrow_underlay_link_sets_container_mtu_and_status_names_the_peer(lab_factory, backend, underlay):
    lab = lab_factory(hosts=3, underlay=underlay, backend=backend, containers=1, apply=True)
    hosts = {h.name: h for h in lab.hosts}
    h1, h2 = hosts["h1"], hosts["h2"]
    b = get_backend(backend)
    before = lab.statuses()
    full = {s["host"]: s["mtu"] for s in before.values()}
    assert set(full.values()) == {1500 - b.overhead}  # before: the NIC's 1500 everywhere
    # wireguard: the UDP sockets of every wireguard-go (re-opened when sent a listen port)
    wg_sockets = {name: udp_socket_inodes(hosts[name].netns, s["wireguard"]["listen_port"])
                  for name, s in before.items() if (s.get("wireguard") or {}).get("listen_port")}
    if backend == "wireguard":
        assert set(wg_sockets) == set(hosts) and all(wg_sockets.values()), wg_sockets

    set_mtu(lab.plan.fabric.netns, h2.fabric_ifname, NARROW)
    set_mtu(h2.netns, h2.ifname, NARROW)

    # the probe primitives themselves, from h1's namespace: 1400 crosses, 1401 does not
    assert probe.echo(h2.address, NARROW, timeout=2, netns=h1.netns, src=h1.address) is not None
    assert probe.echo(h2.address, NARROW + 1, timeout=2, netns=h1.netns, src=h1.address) is None
    assert probe.discover(h2.address, low=576, high=1500, netns=h1.netns, src=h1.address) == NARROW
    assert probe.discover(hosts["h3"].address, low=576, high=1500, netns=h1.netns) == 1500

    for h in lab.hosts:
        lab.crossnet(h.name, "apply", "-f", lab.plan.cluster_file, "--host", h.name, "--probe-mtu")
    statuses = lab.statuses()
    # auto: every peer has a WireGuard key and may fall back to it at any time: IPv4 WireGuard's 60
    overhead = pmtu.TRANSPORT_OVERHEAD["wireguard"] if backend == "auto" else pmtu.transport_overhead(b)
    expect = {name: NARROW - overhead for name in hosts}  # every host: its smallest path, 1400
    assert {s["host"]: s["mtu"] for s in statuses.values()} == expect
    # the MTU change kept every peer's objects (a vxlan MTU set with its address flushed the neighbours)
    assert all(p["programmed"] for s in statuses.values() for p in s["peers"]), statuses
    assert all(not s["drift"] for s in statuses.values()), [s["drift"] for s in statuses.values()]
    # ... and kept every WireGuard socket: the new MTU needs no key or port sent (which made
    # wireguard-go re-open its socket, losing what arrived meanwhile)
    assert {name: udp_socket_inodes(hosts[name].netns, before[name]["wireguard"]["listen_port"])
            for name in wg_sockets} == wg_sockets

    # h1 and h3 name h2 as narrow with the number measured; h2's own NIC is 1400: nobody is narrow for it
    for name in ("h1", "h3"):
        st = statuses[name]
        assert st["narrow_peers"] == [{"name": "h2", "path_mtu": NARROW}], st
        rows = {p["name"]: p for p in st["peers"]}
        assert rows["h2"]["path_mtu"] == NARROW and rows["h2"]["narrow"] is True
        other = "h3" if name == "h1" else "h1"
        assert rows[other]["path_mtu"] == 1500 and rows[other]["narrow"] is False
    assert statuses["h2"]["narrow_peers"] == []
    # the connections table carries the same measurements
    assert {c["peer"]: c["pmtu"] for c in statuses["h1"]["connections"]} == {"h2": NARROW, "h3": 1500}
    assert {p["name"]: p["path_mtu"] for p in statuses["h2"]["peers"]} == {"h1": NARROW, "h3": NARROW}
    text = lab.crossnet("h1", "status").stdout
    assert "narrow path: peer h2 measured path MTU 1400" in " ".join(text.split()), text

    # containers attached before the change follow (both ends of their veths)
    conts = {name: h.containers[0] for name, h in hosts.items()}
    for name, cns in conts.items():
        assert link_mtu(cns, "eth0") == expect[name]
        host_if = statuses[name]["containers"][0]["host_if"]
        assert link_mtu(hosts[name].netns, host_if) == expect[name]

    addrs = {name: statuses[name]["containers"][0]["address"].split("/")[0] for name in hosts}
    for a, z in itertools.permutations(hosts, 2):
        ok = df_ping(conts[a], addrs[z], expect[a], count=3)
        assert ok.returncode == 0, (a, z, expect[a], ok.stdout, ok.stderr)
        t0 = time.monotonic()
        over = df_ping(conts[a], addrs[z], expect[a] + 1)
        out = (over.stdout + over.stderr).lower()
        assert over.returncode != 0 and "too long" in out, (a, z, over.stdout, over.stderr)
        assert time.monotonic() - t0 < 2  # refused locally, not a timeout

    # a plain apply keeps the measurement (no flapping back to the NIC's MTU)
    lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert lab.status("h1")["mtu"] == expect["h1"]


def test_probe_mtu_refused_for_the_bridge_backend(lab_factory):
    lab = lab_factory(hosts=2, underlay="l2", backend="bridge", containers=0, apply=False)
    before = subprocess.run(["ip", "-n", lab.hosts[0].netns, "-j", "link"], capture_output=True, text=True, check=True).stdout
    res = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--probe-mtu", check=False)
    assert res.returncode == 2 and res.stderr.strip().startswith("crossnet: error: --probe-mtu:"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    after = subprocess.run(["ip", "-n", lab.hosts[0].netns, "-j", "link"], capture_output=True, text=True, check=True).stdout
    assert before == after


@pytest.mark.parametrize(("backend", "flags", "overhead"), [("vxlan", ["--probe-mtu"], 50), ("auto", [], 60)])
def test_agent_probe_mtu_follows_the_narrow_link(lab_factory, tmp_path, backend, flags, overhead):
    """`crossnet agent --probe-mtu` (static cluster file) on every host: the agents program
    the hosts, measure their peers once they join, and lower the container MTU to the
    narrow path; containers attached through them get it and DF pings of that size cross.
    Backend auto probes without the flag (the default) and sizes for WireGuard (60), and
    its connections table shows h2's measured path MTU."""
    lab = lab_factory(hosts=3, underlay="l3", backend=backend, containers=1, apply=False)
    hosts = {h.name: h for h in lab.hosts}
    h2 = hosts["h2"]
    set_mtu(lab.plan.fabric.netns, h2.fabric_ifname, NARROW)
    set_mtu(h2.netns, h2.ifname, NARROW)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, h in hosts.items():
            with open(tmp_path / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    ["ip", "netns", "exec", h.netns, sys.executable, "-m", "crossnet", "--state-dir", h.state_dir,
                     "agent", "-f", lab.plan.cluster_file, "--name", name, "--iface", h.ifname, *flags,
                     "--resync", "5"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for name, h in hosts.items():
            wait_agent_ready(h.state_dir, timeout=60, proc=procs[name], log_path=str(tmp_path / f"{name}.log"))

        want = NARROW - overhead

        def settled():
            sts = lab.statuses()
            return sts if all(s["mtu"] == want for s in sts.values()) else None

        statuses = wait_for(settled, 60, f"every host at container MTU {want}")
        assert statuses["h1"]["narrow_peers"] == [{"name": "h2", "path_mtu": NARROW}]
        assert statuses["h3"]["narrow_peers"] == [{"name": "h2", "path_mtu": NARROW}]
        assert all(p["programmed"] for s in statuses.values() for p in s["peers"])
        if backend == "auto":  # the connections table: h2's path MTU next to its transport
            conns = {c["peer"]: c for c in statuses["h1"]["connections"]}
            assert conns["h2"]["pmtu"] == NARROW and conns["h3"]["pmtu"] == 1500, conns
            text = lab.crossnet("h1", "status").stdout
            assert "narrow path: peer h2 measured path MTU 1400" in text, text
        for name, h in hosts.items():
            lab.crossnet(name, "attach", h.containers[0])
        statuses = lab.statuses()
        addrs = {name: statuses[name]["containers"][0]["address"].split("/")[0] for name in hosts}
        for a, z in itertools.permutations(hosts, 2):
            assert link_mtu(hosts[a].containers[0], "eth0") == want
            ok = df_ping(hosts[a].containers[0], addrs[z], want, count=3)
            assert ok.returncode == 0, (a, z, ok.stdout, ok.stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
