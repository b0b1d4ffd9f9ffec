"""Open vSwitch backends end to end: 3-host labs, each host with its own ovsdb-server
and ovs-vswitchd (userspace datapath, br-phy), ovs-gre and ovs-vxlan on l2 and l3.

One lab per (backend, underlay), shared by the tests of this module (module scope):
read-only checks first, then the tests that break something and repair it
(drift, restarted ovs-vswitchd, reset + re-apply); each leaves the lab working.
The state-changing tests run on two of the four combinations to keep the time down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossnet.lab import ovs as ovs_lab_service
from crossnet.lab.manager import Lab
from crossnet.lab.ovsdaemon import wait_gone
from tests.conftest import LabFactory
from tests.e2e.pcap import Capture

pytestmark = pytest.mark.e2e

OVERHEAD = {"ovs-gre": 38, "ovs-vxlan": 50}
FULL = [("ovs-gre", "l2"), ("ovs-vxlan", "l3")]  # everything runs here
BASIC = [*FULL, ("ovs-gre", "l3"), ("ovs-vxlan", "l2")]  # reachability, TCP, storm, capture
PING_OPTS = {"count": 2, "timeout": 2.0}


def _id(p: tuple[str, str]) -> str:
    return f"{p[0]}-{p[1]}"


class FoLabFactory(LabFactory):
    """LabFactory whose labs are named `fo` + 4 random characters (the OVS/trace tests'
    own prefix), removed by cleanup() like any test lab."""

    PREFIX = "fo"
    SUFFIX_LEN = 4


@pytest.fixture
def fo_lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> FoLabFactory:
    return FoLabFactory.for_test(request)


@pytest.fixture(scope="module")
def ovs_lab(request: pytest.FixtureRequest, lab_sweep: None) -> Lab:
    backend, underlay = request.param
    FoLabFactory.sweep()
    factory = FoLabFactory()
    request.addfinalizer(factory.cleanup)
    lab = factory(hosts=3, underlay=underlay, backend=backend, containers=1)
    return lab


def lab_params(params: list[tuple[str, str]]):
    return pytest.mark.parametrize("ovs_lab", params, indirect=True, ids=[_id(p) for p in params])


# ---- helpers ------------------------------------------------------------------------
def sh(lab: Lab, target: str, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = lab.run(target, list(cmd), timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{target}: {' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}"
    return proc


def containers(lab: Lab) -> dict[str, tuple[str, str]]:
    """host -> (container netns, container address)"""
    out = {}
    for h, st in lab.statuses().items():
        (c,) = st["containers"]
        out[h] = (os.path.basename(c["netns"]), c["address"].split("/")[0])
    return out


def assert_all_pairs(lab: Lab) -> None:
    pairs = lab.check(**PING_OPTS)
    assert len(pairs) == 6
    assert all(p.ok for p in pairs), [f"{p.src}->{p.dst}: {p.error}" for p in pairs if not p.ok]


def ping(netns: str, dst: str, count: int = 3, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                           "-W", "2", *extra, dst], capture_output=True, text=True, timeout=30, check=False)


def apply_json(lab: Lab, host: str) -> dict:
    proc = lab.crossnet(host, "apply", "-f", lab.plan.cluster_file, "--host", host, "-o", "json")
    return json.loads(proc.stdout)


def tunnel_counters(lab: Lab, host: str) -> dict[str, tuple[int, int]]:
    """OpenFlow port -> (rx packets, tx packets) on the overlay bridge."""
    out = sh(lab, host, "ovs-ofctl", "dump-ports", "cnovs0").stdout
    return {p: (int(rx), int(tx)) for p, rx, tx in re.findall(r'port\s+"?([\w.-]+)"?:\s+rx pkts=(\d+).*?tx pkts=(\d+)', out, re.DOTALL)}


def ovs_pids(lab: Lab) -> list[int]:
    pids = []
    for h in lab.hosts:
        inst = ovs_lab_service.instance(lab.plan, h)
        pids += [p for p in (inst.pid("ovsdb-server"), inst.pid("ovs-vswitchd")) if p]
    return pids


# ---- read-only checks ---------------------------------------------------------------
@lab_params(BASIC)
def test_every_pair_pings_and_status_shows_the_datapath(ovs_lab: Lab):
    assert_all_pairs(ovs_lab)
    backend = ovs_lab.plan.backend
    for h, st in ovs_lab.statuses().items():
        assert st["backend"] == backend
        assert st["mtu"] == st["underlay_mtu"] - OVERHEAD[backend]
        assert all(p["programmed"] for p in st["peers"]) and not st["drift"], (h, st)
        ovs = st["ovs"]
        assert ovs["datapath"] == "netdev" and ovs["datapath_kind"] == "userspace" and ovs["kernel_module"] is False
        assert set(ovs["bridges"]) == {"br-phy", "cnovs0"}
        assert len(ovs["tunnels"]) == 2 and all(t["ok"] for t in ovs["tunnels"])


@lab_params(BASIC)
def test_apply_is_idempotent(ovs_lab: Lab):
    for h in ("h1", "h3"):
        res = apply_json(ovs_lab, h)
        assert res["changed"] is False, res["changes"]


@lab_params(BASIC)
def test_tcp_between_containers_and_full_size_packets(ovs_lab: Lab):
    c = containers(ovs_lab)
    (src_ns, _), (dst_ns, dst_ip) = c["h1"], c["h3"]
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-p", "5399"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        proc = subprocess.run(["ip", "netns", "exec", src_ns, "iperf3", "-c", dst_ip, "-p", "5399", "-t", "2", "-J"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
        got = json.loads(proc.stdout)["end"]["sum_received"]
        assert got["bytes"] > 1_000_000 and got["bits_per_second"] > 10e6, got
    finally:
        with contextlib.suppress(Exception):
            server.wait(timeout=5)
        if server.poll() is None:
            server.kill()
            server.wait()
    # the container MTU is exactly what fits: a full-size DF packet crosses, one byte more cannot
    mtu = ovs_lab.status("h1")["mtu"]
    assert ping(src_ns, dst_ip, 2, ("-M", "do", "-s", str(mtu - 28))).returncode == 0
    too_big = ping(src_ns, dst_ip, 1, ("-M", "do", "-s", str(mtu - 27)))
    assert too_big.returncode != 0


@lab_params(BASIC)
def test_broadcast_reaches_every_peer_once_and_never_loops(ovs_lab: Lab):
    """Split horizon: h1's broadcast goes into both tunnels; h2 and h3 deliver it
    locally and never forward it into their other tunnel (with NORMAL flooding,
    3 hosts would loop it forever)."""
    n = 20
    src_ns, _ = containers(ovs_lab)["h1"]
    before = {h.name: tunnel_counters(ovs_lab, h.name) for h in ovs_lab.hosts}
    subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-b", "-c", str(n), "-i", "0.05", "-W", "1",
                    "255.255.255.255"], capture_output=True, timeout=30, check=False)
    time.sleep(1.0)
    after = {h.name: tunnel_counters(ovs_lab, h.name) for h in ovs_lab.hosts}

    def delta(h: str, port: str, i: int) -> int:
        return after[h][port][i] - before[h][port][i]

    tunnels = {h: [p for p in after[h] if p != "LOCAL"] for h in after}
    assert all(len(t) == 2 for t in tunnels.values()), after
    # the local port of each peer received about n frames from h1 ...
    for h in ("h2", "h3"):
        assert n <= delta(h, "LOCAL", 1) <= n + 15, (h, before[h], after[h])
        # ... and its tunnels sent almost nothing (a loop would send >= n)
        for p in tunnels[h]:
            assert delta(h, p, 1) < n // 2, (h, p, before[h], after[h])
    # h1 sent each frame into each tunnel (OVS counts a tunnel packet up to twice: push + output)
    for p in tunnels["h1"]:
        assert n <= delta("h1", p, 1) <= 2 * n + 15, (p, before["h1"], after["h1"])


@lab_params(BASIC)
def test_capture_on_the_underlay_proves_encapsulation(ovs_lab: Lab, tmp_path: Path):
    """tcpdump on the fabric side of h1's NIC: container pings h1 -> h2 appear only
    inside GRE (proto 0x6558, transparent Ethernet bridging) / VXLAN (udp 4789), and
    never as plain packets between container addresses."""
    lab = ovs_lab
    c = containers(lab)
    (src_ns, src_ip), (_, dst_ip) = c["h1"], c["h2"]
    fabric = lab.plan.fabric.netns
    port = lab.plan.host("h1").fabric_ifname
    pcap = tmp_path / "underlay.pcap"
    cap = Capture(fabric, port, pcap)
    try:
        assert ping(src_ns, dst_ip, 5).returncode == 0
        time.sleep(0.5)
    finally:
        cap.stop()

    def read(expr: str, verbose: bool = False) -> str:
        argv = ["tcpdump", "-nn", "-r", str(pcap), *(["-v"] if verbose else []), expr]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout

    if lab.plan.backend == "ovs-gre":
        encap = "ip proto 47 and ip[22:2] = 0x6558"  # GRE protocol field: transparent Ethernet bridging
    else:
        encap = "udp dst port 4789"
    inner = read(encap, verbose=True)
    requests = re.findall(rf"{re.escape(src_ip)} > {re.escape(dst_ip)}: ICMP echo request", inner)
    replies = re.findall(rf"{re.escape(dst_ip)} > {re.escape(src_ip)}: ICMP echo reply", inner)
    assert len(requests) >= 5 and len(replies) >= 5, inner[-2000:]
    if lab.plan.backend == "ovs-vxlan":
        assert "VXLAN" in inner and "vni 1" in inner
    # outer headers only ever carry underlay addresses
    assert read(f"ip and net {lab.plan.network}").strip() == ""


# ---- state-changing checks (each leaves the lab working) -----------------------------
@lab_params(FULL)
def test_drift_repair_of_a_deleted_tunnel_port_and_flows(ovs_lab: Lab):
    lab = ovs_lab
    tunnel = "gre-h2" if lab.plan.backend == "ovs-gre" else "vxl-h2"
    sh(lab, "h1", "ovs-vsctl", "del-port", "cnovs0", tunnel)
    sh(lab, "h3", "ovs-ofctl", "del-flows", "cnovs0")
    st1, st3 = lab.status("h1"), lab.status("h3")
    assert st1["drift"] and not next(p for p in st1["peers"] if p["name"] == "h2")["programmed"]
    assert st3["drift"] and any("replace-flows" in d for d in st3["drift"])
    res1, res3 = apply_json(lab, "h1"), apply_json(lab, "h3")
    assert res1["changes"] and all(c["action"] == "repair" for c in res1["changes"]), res1
    assert tunnel in res1["changes"][0]["command"]  # the port first, then (if renumbered) the flows naming it
    assert [c["action"] for c in res3["changes"]] == ["repair"] and "replace-flows" in res3["changes"][0]["command"]
    assert_all_pairs(lab)
    assert apply_json(lab, "h1")["changed"] is False


@lab_params(FULL)
def test_stale_tunnel_neighbour_is_flushed_by_apply(ovs_lab: Lab):
    """A wrong MAC in OVS's tunnel neighbour cache black-holes every tunnel packet to
    that next hop; apply notices it disagrees with the kernel's ARP entry and flushes.
    (OVS may also heal by itself when it snoops an ARP exchange in the meantime: then
    there is nothing left to flush, and the end state is the same.)"""
    lab = ovs_lab
    h1, h2 = lab.plan.host("h1"), lab.plan.host("h2")
    nexthop = h2.address if lab.plan.underlay == "l2" else h1.gateway
    sh(lab, "h1", "ping", "-c", "1", "-W", "2", h2.address)  # kernel ARP entry for the next hop on br-phy
    time.sleep(0.5)
    bad = "02:00:00:00:00:99"
    sh(lab, "h1", "ovs-appctl", "tnl/neigh/set", "br-phy", nexthop, bad)
    poisoned = bad in sh(lab, "h1", "ovs-appctl", "tnl/neigh/show").stdout
    res = apply_json(lab, "h1")
    flushed = [ch for ch in res["changes"] if "tnl/neigh/flush" in ch["command"]]
    assert len(res["changes"]) == len(flushed), res  # nothing else was touched
    if poisoned and bad in sh(lab, "h1", "ovs-appctl", "tnl/neigh/show").stdout:
        pytest.fail(f"apply left the stale entry in place: {res}")
    assert bad not in sh(lab, "h1", "ovs-appctl", "tnl/neigh/show").stdout
    c = containers(lab)
    deadline = time.monotonic() + 15
    while ping(c["h1"][0], c["h2"][1], 1).returncode != 0:
        assert time.monotonic() < deadline, "h1 -> h2 still black-holed after apply"
    assert_all_pairs(lab)


@lab_params(FULL)
def test_restarted_vswitchd_is_reconverged_by_apply(ovs_lab: Lab):
    """`exit --cleanup` drops the datapath with its tap ports (br-phy loses the underlay
    address, cnovs0 leaves cn0) and the flows; fail_mode=secure keeps the restarted
    bridge silent (no flooding) until apply puts everything back."""
    lab = ovs_lab
    inst = ovs_lab_service.instance(lab.plan, lab.plan.host("h2"))
    old = inst.pid("ovs-vswitchd")
    inst.stop_vswitchd(cleanup=True)
    assert inst.pid("ovs-vswitchd") is None
    inst.start_vswitchd()
    assert inst.pid("ovs-vswitchd") not in (None, old)
    c = containers(lab)
    assert ping(c["h1"][0], c["h2"][1], 2).returncode != 0  # h2 is cut off until apply
    # no --host needed although the underlay address is gone: apply trusts its record
    res = json.loads(lab.crossnet("h2", "apply", "-f", lab.plan.cluster_file, "-o", "json").stdout)
    kinds = " ".join(ch["command"] for ch in res["changes"])
    assert "br-phy" in kinds and "replace-flows" in kinds and "master cn0" in kinds, res
    assert_all_pairs(lab)


@lab_params(FULL)
def test_reset_leaves_nothing_behind_then_apply_restores(ovs_lab: Lab):
    lab = ovs_lab
    h = lab.plan.host("h3")
    lab.crossnet("h3", "reset")
    assert sh(lab, "h3", "ovs-vsctl", "list-br").stdout.strip() == ""
    assert sh(lab, "h3", "ovs-vsctl", "--columns=name", "list", "Interface").stdout.strip() == ""
    links = sh(lab, "h3", "ip", "-o", "link", "show").stdout
    for name in ("br-phy", "cnovs0", "cn0", "ovs-netdev", "cnv"):
        assert f" {name}" not in links, links
    assert f"inet {h.address}/{h.prefixlen}" in sh(lab, "h3", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert sh(lab, "h3", "ip", "-o", "-4", "addr", "show").stdout.count("inet ") == 2  # lo + eth0
    assert f"default via {h.gateway} dev eth0" in sh(lab, "h3", "ip", "route").stdout
    assert sh(lab, "h3", "nft", "list", "ruleset").stdout.strip() == ""
    assert "PROMISC" not in sh(lab, "h3", "ip", "link", "show", "eth0").stdout
    # the host is a plain host again: the underlay works without OVS
    peer = lab.plan.host("h1").address
    assert sh(lab, "h3", "ping", "-c", "2", "-i", "0.2", "-W", "2", peer, check=False).returncode == 0
    # and apply + attach bring it back
    lab.apply("h3")
    for cont in h.containers:
        lab.attach("h3", cont)
    assert_all_pairs(lab)


def test_lab_down_stops_the_ovs_daemons_and_waits(fo_lab_factory):
    lab = fo_lab_factory(hosts=2, backend="ovs-gre", containers=0)
    pids = ovs_pids(lab)
    assert len(pids) == 4
    # every crossnet/`lab exec` command of a host talks to that host's own OVS
    env = sh(lab, "h1", "env").stdout
    assert f"OVS_RUNDIR={lab.plan.lab_dir}/hosts/h1/ovs" in env
    assert "br-phy" in sh(lab, "h2", "ovs-vsctl", "list-br").stdout
    lab.down()
    # stopped means exited: at most a zombie until init reaps it
    alive = [p for p in pids if not wait_gone(p, 0)]
    assert not alive


# ---- OVS configuration crossnet did not create ----------------------------------------------
def ovsdb_config(lab: Lab, host: str) -> str:
    """The configuration columns of every Bridge/Port/Interface row (not the statistics
    and status ovs-vswitchd keeps updating), rows sorted by name."""
    cols = {"Bridge": "name,ports,external_ids,datapath_type,fail_mode,other_config,protocols",
            "Port": "_uuid,name,interfaces,external_ids,tag,trunks",
            "Interface": "_uuid,name,type,options,external_ids,mtu_request"}
    out = []
    for table, c in cols.items():
        proc = sh(lab, host, "ovs-vsctl", "-f", "json", f"--columns={c}", "list", table)
        doc = json.loads(proc.stdout)
        out.append(json.dumps(sorted(doc["data"], key=lambda row: json.dumps(row)), sort_keys=True))
    out.append(sh(lab, host, "ovs-vsctl", "--columns=bridges", "list", "Open_vSwitch").stdout)
    return "\n".join(out)


def host_footprint(lab: Lab, host: str) -> tuple[str, ...]:
    """What apply would change outside OVSDB: links, addresses, routes, nft, sysctl."""
    return (
        sh(lab, host, "ip", "-o", "link", "show").stdout,
        sh(lab, host, "ip", "-o", "-4", "addr", "show").stdout,
        sh(lab, host, "ip", "route").stdout,
        sh(lab, host, "nft", "list", "ruleset").stdout,
        sh(lab, host, "sysctl", "-n", "net.ipv4.conf.all.send_redirects").stdout,
    )


def test_apply_refuses_bridges_and_ports_it_did_not_create(fo_lab_factory):
    """A hand-made `br-phy` with a user port (h1), and the tutorial's hand-made `obr0`
    holding the NIC (h2): apply and apply --dry-run refuse with one line naming the
    bridge/port and what to do, and leave OVSDB and the host exactly as they were
    (before: apply adopted br-phy and reset deleted it with the user's port)."""
    lab = fo_lab_factory(hosts=2, backend="ovs-gre", containers=0, apply=False)
    sh(lab, "h1", "ovs-vsctl", "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
       "--", "add-port", "br-phy", "mine", "--", "set", "interface", "mine", "type=internal")
    sh(lab, "h2", "ovs-vsctl", "add-br", "obr0", "--", "set", "bridge", "obr0", "datapath_type=netdev",
       "--", "add-port", "obr0", "eth0")
    expect = {
        "h1": "crossnet: error: OVS bridge br-phy already exists and was not created by crossnet "
              "(no external_ids:crossnet) (ports: mine); crossnet does not take over OVS configuration it did "
              "not create: remove it (`ovs-vsctl del-br br-phy`) or rename it, then apply again "
              "(crossnet's OVS bridge names are fixed)",
        "h2": "crossnet: error: interface eth0 is a port of OVS bridge obr0, which crossnet did not create; "
              "crossnet does not take it over: remove it there (`ovs-vsctl del-port obr0 eth0`); or set "
              "hosts[].iface to another NIC in the cluster file, then apply again",
    }
    for h in ("h1", "h2"):
        before_db, before_host = ovsdb_config(lab, h), host_footprint(lab, h)
        for extra in ((), ("--dry-run",)):
            proc = lab.crossnet(h, "apply", "-f", lab.plan.cluster_file, "--host", h, *extra, check=False)
            assert proc.returncode == 1, (h, extra, proc.stdout, proc.stderr)
            assert proc.stderr.strip() == expect[h], (h, extra, proc.stderr)
            assert ovsdb_config(lab, h) == before_db, (h, extra)
            assert host_footprint(lab, h) == before_host, (h, extra)
        state = lab.plan.host(h).state_dir
        assert not os.path.exists(os.path.join(state, "applied.json"))
        # nothing recorded, so nothing for reset to take away
        lab.crossnet(h, "reset")
        assert ovsdb_config(lab, h) == before_db
    assert "mine" in sh(lab, "h1", "ovs-vsctl", "list-ports", "br-phy").stdout
    # once the user's bridge is gone, apply proceeds and marks what it creates
    sh(lab, "h1", "ovs-vsctl", "del-br", "br-phy")
    lab.apply("h1")
    ids = sh(lab, "h1", "ovs-vsctl", "get", "bridge", "br-phy", "external_ids:crossnet").stdout.strip()
    assert ids.strip('"') == "underlay"


@pytest.mark.parametrize("kind", ["bridge", "tap"])
def test_a_kernel_link_named_like_an_ovs_bridge_is_refused_and_left_alone(fo_lab_factory, kind):
    """An admin's own kernel link called `cnovs0` (a Linux bridge, a persistent tap; no
    OVSDB row: the OVSDB checks see
    nothing): apply used to add the OVS bridge anyway, take the admin's link for its
    internal port (a persistent tap: ovs-vswitchd opened it), enslave it into cn0, and
    reset deleted the tap. Now refused before anything changes, one line naming it; the
    link keeps its address, and reset leaves it."""
    lab = fo_lab_factory(hosts=2, backend="ovs-gre", containers=0, apply=False)
    add = ["ip", "link", "add", "cnovs0", "type", "bridge"] if kind == "bridge" else \
        ["ip", "tuntap", "add", "dev", "cnovs0", "mode", "tap"]
    sh(lab, "h1", *add)
    sh(lab, "h1", "ip", "addr", "add", "192.0.2.77/28", "dev", "cnovs0")
    sh(lab, "h1", "ip", "link", "set", "cnovs0", "up")
    before_db, before_host = ovsdb_config(lab, "h1"), host_footprint(lab, "h1")
    what = "tun link" if kind == "tap" else "bridge link"
    for extra in ((), ("--dry-run",)):
        proc = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", *extra, check=False)
        assert proc.returncode == 1, (extra, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == (
            f"crossnet: error: interface cnovs0 already exists and was not created by crossnet ({what}; "
            "addresses: 192.0.2.77/28); crossnet does not take over or delete links it did not create: remove or "
            "rename it (crossnet's OVS bridge names are fixed), then apply again"), (extra, proc.stderr)
        assert ovsdb_config(lab, "h1") == before_db, extra
        assert host_footprint(lab, "h1") == before_host, extra
    assert not os.path.exists(os.path.join(lab.plan.host("h1").state_dir, "applied.json"))
    lab.crossnet("h1", "reset")
    assert "192.0.2.77/28" in sh(lab, "h1", "ip", "-o", "-4", "addr", "show", "dev", "cnovs0").stdout
    assert host_footprint(lab, "h1") == before_host


def test_status_without_open_vswitch_shows_what_it_can(fo_lab_factory):
    """ovs-vswitchd stopped: status still prints backend, subnet and peers, with the OVS
    datapath unknown and the one-line hint how to start it; apply says the same."""
    lab = fo_lab_factory(hosts=2, backend="ovs-gre", containers=0)
    inst = ovs_lab_service.instance(lab.plan, lab.plan.host("h1"))
    inst.stop_vswitchd()
    try:
        st = lab.status("h1")
        assert st["backend"] == "ovs-gre" and st["subnet"] and [p["name"] for p in st["peers"]] == ["h2"]
        o = st["ovs"]
        assert o["running"] is False and o["datapath"] == "unknown" and o["datapath_kind"] == "ovs not running"
        assert "ovs-vswitchd is not running" in o["error"] and "ovs-ctl start" in o["error"]
        text = lab.crossnet("h1", "status").stdout
        assert "backend ovs-gre" in text and "datapath unknown (ovs not running" in text
        proc = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, check=False)
        assert proc.returncode == 1 and "ovs-vswitchd is not running" in proc.stderr
    finally:
        inst.start_vswitchd()
    lab.apply("h1")
    assert not lab.status("h1")["drift"]


# ---- the lab demo through the real CLI ------------------------------------------------------
@pytest.mark.parametrize(("backend", "hosts", "underlay"), [("ovs-gre", 3, "l3"), ("ovs-vxlan", 2, "l2")])
def test_lab_demo_cli(fo_lab_factory, backend: str, hosts: int, underlay: str):
    name = fo_lab_factory.new_name()  # torn down by the fixture even if the demo leaves it
    proc = subprocess.run([sys.executable, "-m", "crossnet", "lab", "demo", "--backend", backend, "--hosts", str(hosts),
                           "--underlay", underlay, "--containers", "1", "-o", "json", "--name", name],
                          capture_output=True, text=True, timeout=300, env=fo_lab_factory.env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["ok"] is True and res["lab"] == name and res["applied"] is True
    assert (res["backend"], res["underlay"], res["runtime"]) == (backend, underlay, "netns")
    assert [h["name"] for h in res["hosts"]] == [f"h{i}" for i in range(1, hosts + 1)]
    assert len({h["subnet"] for h in res["hosts"]}) == hosts
    assert len(res["endpoints"]) == hosts and {e["host"] for e in res["endpoints"]} == {h["name"] for h in res["hosts"]}
    assert len(res["pairs"]) == hosts * (hosts - 1)  # every ordered pair of containers
    assert all(p["ok"] for p in res["pairs"]), res["pairs"]
    # demo brings its lab down
    from crossnet.lab import manager

    assert not manager.lab_dir(name).exists()
