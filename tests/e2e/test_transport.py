"""End to end: backend auto (per-peer transport, probing and fallback) with `crossnet
agent` on etcd in an L3 lab (each host behind one router), real packets.

* all peers on VXLAN (no two hosts share a segment), every container pair reaches every
  other one, `crossnet status` shows the connections;
* the router drops UDP 4789 between h1 and h2 (nft in the router namespace only): h1 and
  h2 move each other to WireGuard (one log line each), h3 keeps VXLAN to both, every
  pair still reaches every other one; the filter lifted, h1 and h2 go back to VXLAN;
* `crossnet apply` (no agent) on one L2 segment: every peer direct (a host-gw route),
  `--dry-run` shows the commands, a changed route is drift, `reset` removes exactly it;
* `encrypt: true` (another lab): every peer on WireGuard, and tcpdump on the underlay
  sees no container address and no payload marker in clear.

Every lab has a unique name and is removed by the fixture's finalizer, even when a
test fails; nothing here touches the root namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.agentlab import module_factory, wait_for
from tests.e2e.pcap import assert_nothing_in_clear, captured_while
from tests.e2e.test_wireguard import MARKER, marker_pings

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

TTL = 5
FILTER_TABLE = "cnautotest"
SWITCH_BOUND = 30.0  # s: generous upper bound for a loaded machine (the target, 5 s, is a bench row)


def _needs(etcd: bool = True) -> None:
    import shutil

    from crossnet.lab.etcdserver import etcd_available

    if etcd and not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        pytest.skip("needs wireguard-go (apt-get install wireguard-go)")


@pytest.fixture(scope="module")
def auto_lab(request, lab_sweep):
    _needs()
    lab = module_factory(request)(hosts=3, underlay="l3", backend="auto", containers=1,
                                  extra={"store": "etcd", "ttl": TTL})
    return lab


def connections(lab, hname: str) -> dict[str, dict]:
    return {c["peer"]: c for c in lab.status(hname)["connections"]}


def transports(lab) -> dict[tuple[str, str], str]:
    """(host, peer) -> transport, for every established connection."""
    out = {}
    for h in lab.hosts:
        for peer, c in connections(lab, h.name).items():
            out[(h.name, peer)] = c["transport"] if c["state"] == "established" else f"{c['transport']}?"
    return out


def all_pairs_reach(lab) -> bool:
    pairs = lab.check(count=2)
    return bool(pairs) and all(p.ok for p in pairs)


def router_nft(lab, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", lab.plan.fabric.netns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True)


def block_vxlan(lab, a, b) -> None:
    """Drop UDP 4789 between a and b in the router namespace (both directions)."""
    router_nft(lab, f"""table inet {FILTER_TABLE} {{
  chain forward {{ type filter hook forward priority 0; policy accept;
    ip saddr {a.address} ip daddr {b.address} udp dport 4789 drop
    ip saddr {b.address} ip daddr {a.address} udp dport 4789 drop
  }}
}}
""")


def unblock(lab) -> None:
    router_nft(lab, f"delete table inet {FILTER_TABLE}\n")


def pair_on(lab, transport: str) -> dict | None:
    t = transports(lab)
    return t if t.get(("h1", "h2")) == t.get(("h2", "h1")) == transport else None


def log_time(line: str) -> float:
    """The wall time of an agent log line (its first word: RFC 3339 UTC, milliseconds)."""
    from datetime import datetime

    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def agent_log(lab, hname: str) -> str:
    return (Path(lab.plan.lab_dir) / "hosts" / hname / "agent.log").read_text(errors="replace")


def host(lab, name: str):
    return next(h for h in lab.hosts if h.name == name)


def trace_verify(lab, a: str, b: str) -> dict:
    """`crossnet lab trace --verify` from a's container to b's (JSON)."""
    ca, cb = host(lab, a).containers[0], host(lab, b).containers[0]
    proc = subprocess.run([sys.executable, "-m", "crossnet", "lab", "trace", "--name", lab.name, ca, cb,
                           "--verify", "--count", "5", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def assert_traced(res: dict, peer: str, transport: str, tunnel: str | None) -> None:
    """trace --verify followed the peer's transport, proved by counters and the NIC taps."""
    assert res["backend"] == "auto" and res["verified"], res
    assert (res["transport"], res["recorded_transport"], res["peer"], res["tunnel"]) == \
        (transport, transport, peer, tunnel), res
    assert not res["warnings"], res["warnings"]
    nic = next(h for h in res["hops"] if h["kind"] == "nic" and h["host"] == "h1")
    cap = nic["capture"]
    seen = {"wireguard": cap.get("wireguard", 0), "vxlan": cap["vxlan"], "direct": cap["plain"]}
    assert seen[transport] >= 5, cap
    # the probe itself (plain) and VXLAN-encapsulated probes are recognised exactly: none on
    # another transport. WireGuard datagrams cannot be attributed (encrypted): auto's prober
    # and other peers' WireGuard traffic count there too, so they are not required to be 0.
    assert all(seen[t] == 0 for t in ("vxlan", "direct") if t != transport), cap


def test_auto_starts_on_vxlan_everywhere(auto_lab):
    lab = auto_lab
    want = {(h.name, p.name): "vxlan" for h in lab.hosts for p in lab.hosts if p is not h}
    wait_for(lambda: transports(lab) == want, SWITCH_BOUND, f"all peers established on vxlan: {transports(lab)}")
    wait_for(lambda: all_pairs_reach(lab), 20, "all container pairs reach each other")
    c = connections(lab, "h1")["h2"]
    assert c["encrypted"] is False and c["rtt_ms"] is not None and c["since"] is not None
    text = lab.crossnet("h1", "status").stdout
    assert "connections" in text and "vxlan" in text


def test_filtered_vxlan_moves_that_pair_to_wireguard_and_back(auto_lab):
    lab = auto_lab
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    block_vxlan(lab, h1, h2)
    try:
        t0 = time.time()
        wait_for(lambda: pair_on(lab, "wireguard"), SWITCH_BOUND, "h1 and h2 on wireguard", interval=0.5)
        t = transports(lab)
        assert t[("h1", "h3")] == t[("h3", "h1")] == t[("h2", "h3")] == t[("h3", "h2")] == "vxlan", t
        assert connections(lab, "h1")["h2"]["encrypted"] is True
        wait_for(lambda: all_pairs_reach(lab), 20, "all container pairs reach each other through the filter")
        for a, b in (("h1", "h2"), ("h2", "h1")):
            lines = [x for x in agent_log(lab, a).splitlines() if f"peer {b}: transport vxlan -> wireguard" in x]
            assert len(lines) == 1, lines
            print(f"{a}: switched to wireguard {log_time(lines[0]) - t0:.1f} s after the filter went up")
        doc = json.loads((Path(h1.state_dir) / "transport.json").read_text())
        assert doc["switches"] >= 1 and doc["peers"]["h2"]["switches"] >= 1
        # trace --verify follows each peer's transport: h2 over WireGuard (cnwg0), h3 over VXLAN
        res = trace_verify(lab, "h1", "h2")
        assert_traced(res, "h2", "wireguard", "cnwg0")
        enc = next(h for h in res["hops"] if h["kind"] == "wireguard" and h["host"] == "h1")
        assert enc["extra"]["peer"] == "h2" and enc["extra"]["tx_bytes_delta"] >= 5 * 84
        assert_traced(trace_verify(lab, "h1", "h3"), "h3", "vxlan", "cnvx1")
    finally:
        unblock(lab)
    wait_for(lambda: pair_on(lab, "vxlan"), SWITCH_BOUND, "h1 and h2 back on vxlan", interval=0.5)
    wait_for(lambda: all_pairs_reach(lab), 20, "all container pairs reach each other after the filter is lifted")
    assert any("peer h2: transport wireguard -> vxlan" in x for x in agent_log(lab, "h1").splitlines())


@pytest.fixture(scope="module")
def encrypted_lab(request, lab_sweep):
    _needs()
    return module_factory(request)(hosts=3, underlay="l3", backend="auto", containers=1,
                                   extra={"store": "etcd", "ttl": TTL, "encrypt": True})


def test_encrypt_puts_every_peer_on_wireguard_nothing_in_clear(encrypted_lab, tmp_path):
    lab = encrypted_lab
    want = {(h.name, p.name): "wireguard" for h in lab.hosts for p in lab.hosts if p is not h}
    wait_for(lambda: transports(lab) == want, SWITCH_BOUND, f"all peers on wireguard: {transports(lab)}")
    wait_for(lambda: all_pairs_reach(lab), 20, "all container pairs reach each other")
    sts = lab.statuses()
    addrs = {h: st["containers"][0]["address"] for h, st in sts.items()}
    h2 = host(lab, "h2")
    c1, c3 = host(lab, "h1").containers[0], host(lab, "h3").containers[0]
    frames = captured_while(h2.netns, h2.ifname, tmp_path / "h2.pcap", lambda: marker_pings([c1, c3], addrs["h2"]))
    assert_nothing_in_clear(frames, set(addrs.values()), MARKER)


# ---- `crossnet apply` (no agent, no probes): the choice from the facts alone ----------------

def links(netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {x["ifname"] for x in json.loads(out.stdout)}


def routes(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "route", "show"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_apply_on_one_segment_routes_directly_and_reset_removes_exactly_that(lab_factory):
    _needs(etcd=False)
    lab = lab_factory(hosts=3, underlay="l2", backend="auto", containers=1)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    assert all_pairs_reach(lab)
    conns = connections(lab, "h1")
    assert {p: (c["transport"], c["state"]) for p, c in conns.items()} == \
        {"h2": ("direct", "unprobed"), "h3": ("direct", "unprobed")}
    sub2 = lab.status("h2")["subnet"]
    assert f"{sub2} via {h2.address} dev eth0" in " ".join(routes(h1.netns))
    assert_traced(trace_verify(lab, "h1", "h2"), "h2", "direct", None)
    assert {"cn0", "cnvx1", "cnwg0"} <= links(h1.netns)
    dry = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--dry-run", "-o", "json").stdout
    assert json.loads(dry)["changes"] == []  # applied state is what apply wants: nothing to do
    # a route changed behind crossnet's back is drift in status
    subprocess.run(["ip", "-n", h1.netns, "route", "replace", sub2, "dev", "cnwg0"], check=True)
    assert lab.status("h1")["drift"]
    dry = json.loads(lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--dry-run",
                                  "-o", "json").stdout)
    assert [c["command"] for c in dry["changes"]] == [f"ip route replace {sub2} via {h2.address} dev eth0 proto 151"]
    lab.crossnet("h1", "detach", host(lab, "h1").containers[0], check=False)
    lab.crossnet("h1", "reset")
    assert not {"cn0", "cnvx1", "cnwg0"} & links(h1.netns)
    left = [r for r in routes(h1.netns) if r.startswith(("10.32.", "198.18."))]
    assert left == [], left


# ---- `crossnet agent -f FILE` on one L2 segment: direct, and vxlan when direct is cut --------

def test_static_agents_probe_direct_and_fall_back_to_vxlan(request, lab_sweep):
    """Agents on a cluster file (no etcd) in an L2 lab: every peer direct. The switch drops
    unencapsulated traffic between h1 and h2 (their container subnets, and ICMP between
    their underlay addresses: the direct probes) with a bridge-family nft table in the
    switch namespace: h1 and h2 move each other to vxlan, h3 stays direct, every pair
    reaches every other; lifted, they go back to direct."""
    from tests.e2e.agentlab import FgLabFactory
    from tests.e2e.test_agent_stores import StaticCluster

    _needs(etcd=False)
    lab = FgLabFactory.for_test(request)(hosts=3, underlay="l2", backend="auto", containers=1, apply=False)
    c = StaticCluster(lab, os.path.join(lab.plan.lab_dir, "agents-cluster.yaml"))
    names = [h.name for h in lab.hosts]
    c.write_file(names)
    for h in names:
        c.start(h)
        c.attach(h)
    want = {(a, b): "direct" for a in names for b in names if a != b}
    wait_for(lambda: transports(lab) == want, SWITCH_BOUND, "every peer direct", interval=0.5)
    assert c.mesh(names) == []
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    s1, s2 = c.status("h1")["subnet"], c.status("h2")["subnet"]
    sw = lab.plan.fabric.netns
    script = (f"table bridge {FILTER_TABLE} {{\n  chain forward {{ type filter hook forward priority 0; policy accept;\n"
              f"    ip saddr {s1} ip daddr {s2} drop\n    ip saddr {s2} ip daddr {s1} drop\n"
              f"    ip saddr {h1.address} ip daddr {h2.address} ip protocol icmp drop\n"
              f"    ip saddr {h2.address} ip daddr {h1.address} ip protocol icmp drop\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", sw, "nft", "-f", "-"], input=script, text=True, check=True,
                   capture_output=True)
    try:
        wait_for(lambda: pair_on(lab, "vxlan"), SWITCH_BOUND, "h1 and h2 on vxlan", interval=0.5)
        t = transports(lab)
        assert t[("h1", "h3")] == t[("h3", "h1")] == t[("h2", "h3")] == t[("h3", "h2")] == "direct", t
        assert c.mesh(names) == []
        assert any("peer h2: transport direct -> vxlan" in x for x in Path(c.log("h1")).read_text().splitlines())
    finally:
        subprocess.run(["ip", "netns", "exec", sw, "nft", "-f", "-"], input=f"delete table bridge {FILTER_TABLE}\n",
                       text=True, check=True, capture_output=True)
    wait_for(lambda: pair_on(lab, "direct"), SWITCH_BOUND, "h1 and h2 back to direct", interval=0.5)
    assert c.mesh(names) == []
