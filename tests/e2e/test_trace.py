"""End to end: `crossnet trace` / `crossnet lab trace` in labs, with real probe traffic.

`--verify` must show the tunnel hop (cnvx<vni>, the OVS GRE port) with moved counters
for the tunnelling backends, and the plain route via the peer's underlay address for
host-gw — and the underlay capture must agree (encapsulated vs plain probe packets).
Every lab has a unique name (`fo` + 4 characters, see tests.e2e.test_ovs.FoLabFactory)
and is removed by the lab_factory finalizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.test_ovs import FoLabFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

COUNT = 20


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> FoLabFactory:
    """conftest's lab_factory, with the OVS/trace tests' `fo` lab names."""
    return FoLabFactory.for_test(request)


def crossnet(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CROSSNET_LAB_OWNER_PID": str(os.getpid())}
    proc = subprocess.run([sys.executable, "-m", "crossnet", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"crossnet {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def lab_trace(lab, src: str, dst: str, *extra: str, check: bool = True) -> tuple[dict, int]:
    proc = crossnet("lab", "trace", "--name", lab.name, src, dst, "-o", "json", *extra, check=check)
    return json.loads(proc.stdout), proc.returncode


def hops(result: dict, **match) -> list[dict]:
    return [h for h in result["hops"] if all(h.get(k) == v for k, v in match.items())]


def assert_all_moved(result: dict) -> None:
    counted = [h for h in result["hops"] if h["expect"]]
    assert counted, result
    bad = [h for h in counted if not h["moved"]]
    assert not bad, json.dumps(bad, indent=1)


def test_trace_vxlan_reports_tunnel_hop_with_moved_counters(lab_factory):
    lab = lab_factory(hosts=2, underlay="l2", backend="vxlan", containers=1)
    res, rc = lab_trace(lab, "h1-c1", "h2-c1", "--verify", "--count", str(COUNT))
    assert rc == 0 and res["verified"] and res["complete"], res
    assert res["backend"] == "vxlan" and res["tunnel"] == "cnvx1"
    assert res["probe"]["sent"] == COUNT and res["probe"]["received"] == COUNT
    assert_all_moved(res)
    (tx,) = [h for h in hops(res, host="h1", kind="vxlan")]
    assert tx["device"] == "cnvx1" and tx["expect"] == "tx" and tx["tx_delta"] >= COUNT
    assert "encap vxlan vni 1 → " in tx["detail"] and ":4789" in tx["detail"]
    (rx,) = hops(res, host="h2", kind="vxlan")
    assert rx["device"] == "cnvx1" and rx["rx_delta"] >= COUNT
    # the underlay carried the probe inside vxlan, never bare
    for nic in hops(res, kind="nic"):
        assert nic["capture"]["vxlan"] >= COUNT and nic["capture"]["plain"] == 0, nic
    # it ends in the destination container
    assert res["hops"][-1]["netns"] == f"{lab.name}-h2-c1" and res["hops"][-1]["rx_delta"] >= COUNT

    # the same from inside host h1 (the command a user runs on the source host)
    h2 = lab.plan.host("h2")
    proc = lab.run("h1", [sys.executable, "-m", "crossnet", "trace", f"{lab.name}-h1-c1", f"{lab.name}-h2-c1",
                          "--peer-state-dir", h2.state_dir, "--peer-netns", h2.netns, "--verify", "--count", "5",
                          "-o", "json"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    inner = json.loads(proc.stdout)
    assert inner["verified"] and inner["tunnel"] == "cnvx1"
    assert [(h["host"], h["device"], h["kind"]) for h in inner["hops"]] == \
        [(h["host"], h["device"], h["kind"]) for h in res["hops"]]

    # without the peer, the trace stops at the hand-off to h2, still verified on h1's side
    proc = lab.run("h1", [sys.executable, "-m", "crossnet", "trace", f"{lab.name}-h1-c1", "10.32.1.1", "--verify",
                          "--count", "5", "-o", "json"], timeout=60)
    part = json.loads(proc.stdout)
    assert proc.returncode == 0 and part["verified"] and part["handoff"] == "h2", part
    assert part["hops"][-1]["host"] == "h2" and part["hops"][-1]["device"] is None


def test_trace_text_output_without_verify(lab_factory):
    lab = lab_factory(hosts=2, underlay="l3", backend="vxlan", containers=1)
    proc = crossnet("lab", "trace", "--name", lab.name, "h1-c1", "h2-c1")
    out = proc.stdout
    assert out.splitlines()[0].startswith(f"trace {lab.name}-h1-c1 (10.32.0.2 on h1) → {lab.name}-h2-c1")
    assert "route 10.32.1.0/24 via 10.32.1.0 dev cnvx1 onlink" in out
    assert "encap vxlan vni 1 → " in out
    assert f"underlay route default via {lab.plan.host('h1').gateway} dev eth0" in out
    assert "counters" not in out  # no --verify, no traffic


def test_trace_host_gw_plain_route_via_peer_underlay(lab_factory):
    lab = lab_factory(hosts=2, underlay="l2", backend="host-gw", containers=1)
    peer = lab.plan.host("h2").address
    res, rc = lab_trace(lab, "h1-c1", "h2-c1", "--verify", "--count", str(COUNT))
    assert rc == 0 and res["verified"] and res["complete"], res
    assert res["tunnel"] is None
    assert not [h for h in res["hops"] if h["kind"] in ("vxlan", "ovs-tunnel")]
    routes = [h for h in hops(res, host="h1", kind="route") if h["netns"] is None]
    assert routes and routes[0]["detail"] == f"route 10.32.1.0/24 via {peer} dev eth0", routes
    assert_all_moved(res)
    for nic in hops(res, kind="nic"):
        assert nic["device"] == "eth0"
        assert nic["capture"]["plain"] >= COUNT and nic["capture"]["vxlan"] == 0 and nic["capture"]["gre"] == 0


def test_trace_bridge_backend_crosses_the_lan(lab_factory):
    lab = lab_factory(hosts=2, underlay="l2", backend="bridge", containers=1)
    res, rc = lab_trace(lab, "h1-c1", "h2-c1", "--verify", "--count", "10")
    assert rc == 0 and res["verified"] and res["tunnel"] is None, res
    assert [h["kind"] for h in res["hops"]] == ["route", "veth", "veth", "bridge", "nic", "nic", "bridge", "veth", "veth"]
    assert hops(res, host="h1", kind="bridge")[0]["detail"].endswith("→ port eth0")


def test_trace_flags_hop_whose_counter_did_not_move(lab_factory):
    lab = lab_factory(hosts=2, underlay="l3", backend="vxlan", containers=1)
    # break decapsulation on h2 (inside the lab namespace): the packets still reach h2's NIC
    lab.run("h2", ["ip", "link", "set", "cnvx1", "down"], check=True)
    res, rc = lab_trace(lab, "h1-c1", "h2-c1", "--verify", "--count", "5", check=False)
    assert rc == 1 and not res["verified"]
    assert res["probe"]["received"] == 0
    by_index = {i: h for i, h in enumerate(res["hops"], 1)}
    moved = {(h["host"], h["device"], h["kind"]): h["moved"] for h in res["hops"] if h["expect"]}
    assert moved[("h1", "cnvx1", "vxlan")] is True
    assert moved[("h2", "eth0", "nic")] is True
    assert moved[("h2", "cnvx1", "vxlan")] is False
    assert all(by_index[i]["moved"] is False for i in res["flagged"])
    assert any(by_index[i]["device"] == "cnvx1" and by_index[i]["host"] == "h2" for i in res["flagged"])
    text = crossnet("lab", "trace", "--name", lab.name, "h1-c1", "h2-c1", "--verify", "--count", "3",
                    check=False).stdout
    assert "✗ NOT MOVED" in text and "NOT verified" in text


def test_trace_bad_arguments(lab_factory):
    lab = lab_factory(hosts=1, underlay="l2", backend="vxlan", containers=1)
    proc = crossnet("lab", "trace", "--name", lab.name, "h1-c1", "nosuch", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("crossnet: error: ") and len(proc.stderr.splitlines()) == 1
    proc = crossnet("lab", "trace", "--name", lab.name, "h1-c1", "10.32.0.9", "--verify", "--count", "0", check=False)
    assert proc.returncode == 2 and "--count" in proc.stderr


def _ovs_backend_available() -> str | None:
    """None when the OVS backends can run here, else why not."""
    import shutil

    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-appctl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    return None


@pytest.mark.parametrize("backend,encap", [("ovs-gre", "gre"), ("ovs-vxlan", "vxlan")])
def test_trace_ovs_reports_tunnel_port(lab_factory, backend, encap):
    why = _ovs_backend_available()
    if why:
        pytest.skip(why)
    lab = lab_factory(hosts=2, underlay="l2", backend=backend, containers=1)
    res, rc = lab_trace(lab, "h1-c1", "h2-c1", "--verify", "--count", str(COUNT), check=False)
    assert rc == 0 and res["verified"] and res["complete"], json.dumps(res, indent=1)
    tunnel_hops = hops(res, host="h1", kind="ovs-tunnel")
    assert tunnel_hops, res
    tx = tunnel_hops[0]
    port = {"gre": "gre-h2", "vxlan": "vxl-h2"}[encap]
    assert tx["device"] == res["tunnel"] == port and tx["moved"] and tx["tx_delta"] >= COUNT
    assert tx["detail"].startswith(f"encap {encap}")
    (rx,) = hops(res, host="h2", kind="ovs-tunnel")
    assert rx["device"] == port.replace("h2", "h1") and rx["moved"] and rx["rx_delta"] >= COUNT
    assert rx["detail"].startswith(f"decap {encap}")
    # the OVS bridge decided by OpenFlow (ofproto/trace), and the datapath pushed the tunnel header
    ovs_hop = hops(res, host="h1", kind="ovs")[0]
    assert "ofproto/trace" in ovs_hop["detail"] and "tnl_push" in ovs_hop["extra"]["datapath_actions"]
    assert_all_moved(res)
    # the underlay carried the probe encapsulated, never bare
    for nic in hops(res, kind="nic"):
        assert nic["capture"][encap] >= COUNT and nic["capture"]["plain"] == 0, nic


def test_trace_never_guesses_the_peers_ovs(lab_factory, tmp_path):
    """State and OVS directories of two hosts side by side (state-h1, state-h2, ovs-h1,
    ovs-h2): trace used to look for `*/db.sock` next to the peer's state dir, read h1's
    OVS as h2's and report "dropped" for pings that were all answered. The peer's OVS
    now comes from its applied.json (recorded by apply) or --peer-ovs-rundir; without
    either, trace says it is unknown."""
    why = _ovs_backend_available()
    if why:
        pytest.skip(why)
    import shutil

    from crossnet.lab import services

    lab = lab_factory(hosts=2, underlay="l2", backend="ovs-gre", containers=1)
    side = tmp_path / "side"
    side.mkdir()
    for h in lab.hosts:
        os.symlink(h.state_dir, side / f"state-{h.name}")
        os.symlink(services.host_env(lab.plan, h)["OVS_RUNDIR"], side / f"ovs-{h.name}")
    h2 = lab.plan.host("h2")

    def trace_from_h1(peer_state: str, *extra: str) -> tuple[dict, int]:
        proc = lab.run("h1", [sys.executable, "-m", "crossnet", "--state-dir", str(side / "state-h1"), "trace",
                              f"{lab.name}-h1-c1", f"{lab.name}-h2-c1", "--peer-state-dir", peer_state,
                              "--peer-netns", h2.netns, "--verify", "--count", "5", "-o", "json", *extra], timeout=90)
        assert proc.returncode in (0, 1), proc.stderr
        return json.loads(proc.stdout), proc.returncode

    res, rc = trace_from_h1(str(side / "state-h2"))  # h2's OVS as recorded by its apply
    assert rc == 0 and res["verified"] and res["complete"], json.dumps(res, indent=1)
    (rx,) = hops(res, host="h2", kind="ovs-tunnel")
    assert rx["device"] == "gre-h1" and rx["moved"], rx
    assert not [h for h in res["hops"] if (h.get("note") or "").startswith("dropped")], res

    # a state dir without the record (an older crossnet): unknown, and trace says so
    bare = side / "state-h2-old"
    shutil.copytree(h2.state_dir, bare)
    applied = json.loads((bare / "applied.json").read_text())
    applied.pop("ovs_rundir")
    (bare / "applied.json").write_text(json.dumps(applied))
    res, rc = trace_from_h1(str(bare))
    assert rc == 1 and not res["verified"]
    assert any("Open vSwitch of host h2 unknown: pass --peer-ovs-rundir" in w for w in res["warnings"]), res["warnings"]
    assert not hops(res, host="h2", kind="ovs-tunnel")  # nothing claimed about h2's OVS
    # ... and given explicitly
    res, rc = trace_from_h1(str(bare), "--peer-ovs-rundir", str(side / "ovs-h2"))
    assert rc == 0 and res["verified"], json.dumps(res, indent=1)
