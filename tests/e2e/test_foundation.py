"""End to end: the three kernel backends in lab namespaces with real packets.

Every lab gets a unique name and is removed by the fixture's finalizer, even when a
test fails. Nothing here touches the root namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab

from .kstate import diff, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]


def host(lab: Lab, name: str):
    return next(h for h in lab.hosts if h.name == name)


def crossnet(lab: Lab, hname: str, *args: str) -> subprocess.CompletedProcess:
    return lab.crossnet(hname, *args, check=False)


def status(lab: Lab, hname: str) -> dict:
    return lab.status(hname)


def container_addr(lab: Lab, hname: str, cid: str) -> str:
    return next(c["address"] for c in status(lab, hname)["containers"] if c["id"] == cid)


def tcp_transfer(src_ns: str, dst_ns: str, dst_addr: str) -> float:
    """iperf3 for 1 s from src to dst (real TCP); returns received bits/s."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-p", "5299"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):  # wait for the server to listen (bounded)
            ss = subprocess.run(["ip", "netns", "exec", dst_ns, "ss", "-ltn"], capture_output=True, text=True).stdout
            if ":5299" in ss:
                break
            time.sleep(0.05)
        out = subprocess.run(
            ["ip", "netns", "exec", src_ns, "iperf3", "-c", dst_addr, "-p", "5299", "-t", "1", "-J"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stdout[-500:] + out.stderr[-500:]
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait(timeout=10)


def ping(netns: str, addr: str, count: int = 1) -> bool:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", "-q", addr],
        capture_output=True,
    ).returncode == 0


@pytest.mark.parametrize("backend", ["bridge", "host-gw", "vxlan"])
def test_l2_full_mesh_ping_and_tcp(make_lab, backend):
    lab = make_lab(hosts=3, underlay="l2", backend=backend, containers=2)
    pairs = lab.check()
    assert len(pairs) == 30
    assert all(p.ok for p in pairs), [p for p in pairs if not p.ok]
    src = host(lab, "h1").containers[0]
    dst = host(lab, "h3").containers[1]
    assert tcp_transfer(src, dst, container_addr(lab, "h3", dst)) > 1e6
    st = status(lab, "h1")
    assert st["backend"] == backend
    assert all(p["programmed"] for p in st["peers"])
    assert st["mtu"] == (1450 if backend == "vxlan" else 1500)


def test_vxlan_l3_underlay(make_lab):
    lab = make_lab(hosts=3, underlay="l3", backend="vxlan", containers=2)
    hosts = lab.hosts
    assert len({h.subnet for h in hosts}) == 3  # really different underlay subnets
    pairs = lab.check()
    assert all(p.ok for p in pairs), [p for p in pairs if not p.ok]
    src = host(lab, "h2").containers[0]
    dst = host(lab, "h1").containers[0]
    assert tcp_transfer(src, dst, container_addr(lab, "h1", dst)) > 1e6
    # container MTU follows the underlay minus VXLAN overhead
    link = subprocess.run(["ip", "-n", src, "-j", "link", "show", "eth0"], capture_output=True, text=True).stdout
    assert json.loads(link)[0]["mtu"] == 1450


@pytest.mark.parametrize("backend", ["host-gw", "bridge"])
def test_l2_backends_refuse_l3_and_change_nothing(make_lab, backend):
    lab = make_lab(hosts=2, underlay="l3", backend="vxlan", containers=0, apply=False)
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["backend"] = backend
    if backend == "bridge":
        cluster.pop("network", None)
        cluster.pop("subnet_len", None)
        block = lab.plan.block  # one /16 covering every host's /24
        net = block.rsplit(".", 2)[0]
        cluster["lan"] = {"cidr": block, "gateway": f"{net}.255.254", "range_len": 26}  # ranges clear of both hosts
    path = Path(lab.plan.lab_dir) / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(cluster))
    h1 = host(lab, "h1")
    before = snapshot(h1.netns)
    res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1")
    assert res.returncode == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "one L2 segment" in err and "vxlan" in err and "h2" in err
    assert diff(before, snapshot(h1.netns)) == []
    assert not (Path(h1.state_dir) / "applied.json").exists()


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "bridge"])
def test_apply_idempotent_drift_repair_and_exact_reset(make_lab, backend):
    lab = make_lab(hosts=2, underlay="l2", backend=backend, containers=0, apply=False)
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["masquerade"] = True  # include an nft table in what reset must remove
    Path(lab.plan.cluster_file).write_text(yaml.safe_dump(cluster))
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    before = snapshot(h1.netns)

    for h in ("h1", "h2"):
        first = json.loads(crossnet(lab, h, "apply", "-f", lab.plan.cluster_file, "--host", h, "-o", "json").stdout)
        assert first["changed"]
    again = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "-o", "json")
    assert json.loads(again.stdout)["changed"] is False
    text = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert "nothing changed" in text.stdout

    for h in (h1, h2):
        subprocess.run(["ip", "netns", "add", f"{h.netns}-x1"], check=True)
        assert crossnet(lab, h.name, "attach", f"{h.netns}-x1").returncode == 0
    dst = container_addr(lab, "h2", f"{h2.netns}-x1")
    assert ping(f"{h1.netns}-x1", dst)

    # drift: delete what apply made, in the kernel, behind crossnet's back
    if backend == "vxlan":
        peer = status(lab, "h2")["subnet"]
        gw = peer.split("/")[0]
        vtep = next(n["lladdr"] for n in json.loads(subprocess.run(
            ["ip", "-n", h1.netns, "-j", "neigh", "show", "dev", "cnvx1"], capture_output=True, text=True).stdout)
            if n["dst"] == gw)
        subprocess.run(["ip", "-n", h1.netns, "route", "del", peer], check=True)
        subprocess.run(["ip", "-n", h1.netns, "neigh", "del", gw, "dev", "cnvx1"], check=True)
        subprocess.run(["bridge", "-n", h1.netns, "fdb", "del", vtep, "dev", "cnvx1", "dst", h2.address], check=True)
    elif backend == "host-gw":
        subprocess.run(["ip", "-n", h1.netns, "route", "del", status(lab, "h2")["subnet"]], check=True)
        subprocess.run(["ip", "-n", h1.netns, "addr", "flush", "dev", "cn0"], check=True)
    else:
        subprocess.run(["ip", "-n", h1.netns, "link", "set", h1.ifname, "nomaster"], check=True)
    assert not ping(f"{h1.netns}-x1", dst)
    drift = status(lab, "h1")["drift"]
    assert drift
    repaired = json.loads(crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "-o", "json").stdout)
    assert repaired["changed"] and {c["action"] for c in repaired["changes"]} == {"repair"}
    assert status(lab, "h1")["drift"] == []
    assert ping(f"{h1.netns}-x1", dst, count=2)

    reset = crossnet(lab, "h1", "reset")
    assert reset.returncode == 0, reset.stderr
    assert diff(before, snapshot(h1.netns)) == []
    assert not (Path(h1.state_dir) / "applied.json").exists()
    again = crossnet(lab, "h1", "reset")
    assert again.returncode == 0 and "nothing to reset" in again.stdout


BAD_CLUSTERS = [
    ("backend", lambda c: c.update(backend="carrier-pigeon")),
    ("network", lambda c: c.update(network="10.32.0.0/33")),
    ("subnet_len", lambda c: c.update(subnet_len=31)),
    ("subnet_len", lambda c: c.update(network="10.32.0.0/24", subnet_len=24)),
    ("subnet_len", lambda c: c.update(network="10.32.0.0/24", subnet_len=25, hosts=c["hosts"] + [
        {"name": "h9", "address": "10.200.0.9"}])),
    ("hosts[1].name", lambda c: c["hosts"][1].update(name=c["hosts"][0]["name"])),
    ("hosts[1].address", lambda c: c["hosts"][1].update(address=c["hosts"][0]["address"])),
    ("network", lambda c: c["hosts"][0].update(address="10.32.7.7")),
    ("hosts[0].iface", lambda c: c["hosts"][0].update(iface="a-very-long-interface-name")),
    ("vxlan.vni", lambda c: c.update(vxlan={"vni": 0})),
    ("mtu", lambda c: c.update(mtu=100)),
    ("colour", lambda c: c.update(colour="blue")),
    ("hosts", lambda c: c.update(hosts=[])),
    ("hosts[1].subnet", lambda c: (c["hosts"][0].update(subnet="10.32.5.0/24"), c["hosts"][1].update(subnet="10.32.5.0/24"))),
]


def test_bad_cluster_files_clear_errors_and_nothing_changed(make_lab):
    lab = make_lab(hosts=2, underlay="l2", backend="vxlan", containers=0, apply=False)
    good = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    h1 = host(lab, "h1")
    before = snapshot(h1.netns)
    for i, (field, mutate) in enumerate(BAD_CLUSTERS):
        cluster = json.loads(json.dumps(good))
        mutate(cluster)
        path = Path(lab.plan.lab_dir) / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(cluster))
        res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1")
        err = res.stderr.strip()
        assert res.returncode == 2, (field, err)
        assert len(err.splitlines()) == 1, err
        assert field in err, (field, err)
    # not even valid YAML
    path = Path(lab.plan.lab_dir) / "broken.yaml"
    path.write_text("hosts: [unclosed\n")
    res = crossnet(lab, "h1", "apply", "-f", str(path))
    assert res.returncode == 2 and "broken.yaml" in res.stderr
    assert diff(before, snapshot(h1.netns)) == []
    assert not (Path(h1.state_dir) / "applied.json").exists()


def test_twenty_concurrent_attaches_get_distinct_addresses(make_lab):
    lab = make_lab(hosts=1, underlay="l2", backend="vxlan", containers=0)
    h1 = host(lab, "h1")
    names = [f"{h1.netns}-p{i}" for i in range(20)]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)

    def attach(n):
        return lab.run("h1", [lab_python(), "-m", "crossnet", "attach", n, "-o", "json"], timeout=120)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attach, names))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    addrs = [json.loads(r.stdout)["address"] for r in results]
    assert len(set(addrs)) == 20
    st = status(lab, "h1")
    assert sorted(c["address"] for c in st["containers"]) == sorted(addrs)
    for n in names:  # each container really has its address
        out = subprocess.run(["ip", "-n", n, "-j", "-4", "addr", "show", "eth0"], capture_output=True, text=True).stdout
        assert json.loads(out)[0]["addr_info"][0]["local"] in addrs

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda n: lab.run("h1", [lab_python(), "-m", "crossnet", "detach", n]), names))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    assert status(lab, "h1")["containers"] == []
    links = subprocess.run(["ip", "-n", h1.netns, "-br", "link"], capture_output=True, text=True).stdout
    assert not [l for l in links.splitlines() if l.startswith("cnv") and not l.startswith("cnvx")]


def test_masquerade_reaches_outside_host(make_lab):
    lab = make_lab(hosts=2, underlay="l2", backend="vxlan", containers=1)
    c1 = host(lab, "h1").containers[0]
    outside = lab.plan.fabric.address.split("/")[0]  # the LAN router: not part of the cluster
    assert not ping(c1, outside)  # it has no route back to the container network
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["masquerade"] = True
    Path(lab.plan.cluster_file).write_text(yaml.safe_dump(cluster))
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert res.returncode == 0, res.stderr
    assert "masquerade" in res.stdout
    assert ping(c1, outside, count=2)
    # container-to-container traffic is not NATed: the other side sees the real source
    assert all(p.ok for p in lab.check())


def lab_python() -> str:
    import sys

    return sys.executable


_INJECT_ROUTE_FAILURE = r"""
import sys
from pyroute2 import IPRoute
from crossnet.errors import ApplyError
from crossnet.plan.env import Env
from crossnet.plan.nic import NicTakeover
from crossnet.plan.reconciler import reconcile
from crossnet.plan.resources import Bridge

nic, mac, poisoned = sys.argv[1:4]
ipr = IPRoute()
real_route = ipr.route

def route(cmd, **kw):  # the kernel refuses one route half-way through the move
    if cmd == "replace" and kw.get("dst") == poisoned and kw.get("oif") != ipr.link_lookup(ifname=nic)[0]:
        raise OSError(22, "injected failure")
    return real_route(cmd, **kw)

ipr.route = route
try:
    reconcile([Bridge("br0", 1500, mac=mac), NicTakeover(nic, "br0")], [], Env(ipr))
except ApplyError as exc:
    print(exc)
    sys.exit(3)
"""


def _route_flags(netns: str, dst: str) -> list[tuple[str, list[str]]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "route", "show", dst], capture_output=True, text=True, check=True)
    return [(r["dev"], r.get("flags", [])) for r in json.loads(out.stdout or "[]")]


def test_bridge_takeover_keeps_onlink_routes_and_rolls_back_a_half_done_move(make_lab):
    """The bridge method moves the NIC's addresses and routes onto br0: an onlink
    route moves with its flag and comes back on reset; a move that fails half-way
    gives the NIC everything back, so the host never loses its connectivity."""
    lab = make_lab(hosts=2, underlay="l2", backend="bridge", containers=0, apply=False)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    subprocess.run(["ip", "-n", h1.netns, "route", "add", "10.99.0.0/24", "via", "192.0.2.1",
                    "dev", h1.ifname, "onlink"], check=True)
    before = snapshot(h1.netns)
    mac = subprocess.run(["ip", "netns", "exec", h1.netns, "cat", f"/sys/class/net/{h1.ifname}/address"],
                         capture_output=True, text=True, check=True).stdout.strip()

    failed = subprocess.run(["ip", "netns", "exec", h1.netns, lab_python(), "-c", _INJECT_ROUTE_FAILURE,
                             h1.ifname, mac, "10.99.0.0"], capture_output=True, text=True)
    assert failed.returncode == 3, failed.stderr
    assert "injected failure" in failed.stdout and "rolled back" in failed.stdout
    assert diff(before, snapshot(h1.netns)) == []
    assert _route_flags(h1.netns, "10.99.0.0/24") == [(h1.ifname, ["onlink"])]
    assert ping(h1.netns, h2.address)

    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert res.returncode == 0, res.stderr
    assert _route_flags(h1.netns, "10.99.0.0/24") == [("br0", ["onlink"])]
    assert ping(h1.netns, h2.address)
    assert crossnet(lab, "h1", "reset").returncode == 0
    assert diff(before, snapshot(h1.netns)) == []
    assert _route_flags(h1.netns, "10.99.0.0/24") == [(h1.ifname, ["onlink"])]
