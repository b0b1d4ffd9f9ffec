"""End to end: crossnet's tc eBPF host routing (crossnet.ebpf) between two simulated hosts.

One module-scoped lab built here with `ip` (routed container veths are made BY THE TEST,
Calico style: container /32, link-local gateway 169.254.1.1 answered by proxy ARP, a /32
route per container on the host, host routes between the hosts). crossnet.ebpf then
loads, pins and attaches its programs in each host namespace (each call a new process,
as the agent/CLI would run), and the test checks with real packets that the fast path is
taken (redirect counters), that what it must not handle still works through the stack
(ARP, TTL 1 -> ICMP time exceeded, outside destinations: pass counters), that a new
process finds everything in place, and that removal leaves nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from crossnet.errors import CrossnetError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

NETWORK = "10.77.0.0/16"
HOSTS = {  # host -> (underlay address, subnet, containers {name: address})
    "h1": ("192.168.77.1", "10.77.1.0/24", {"c1": "10.77.1.2", "c3": "10.77.1.3"}),
    "h2": ("192.168.77.2", "10.77.2.0/24", {"c2": "10.77.2.2"}),
}
GW = "169.254.1.1"

DRIVER = r"""
import json, sys
from pathlib import Path
from crossnet.backends.base import HostContext
from crossnet.plan.env import Env
from crossnet.plan.reconciler import reconcile, teardown
from crossnet.plan.resources import Resource
from crossnet.netlink.iproute import open_ipr
from crossnet.ebpf import build, host, problem
op, ctx, arg = sys.argv[1], HostContext.from_json(json.loads(sys.argv[2])), json.loads(sys.argv[3])
out = None
if op == "problem":
    out = problem()
elif op == "apply":  # arg: {"previous": records, "obj": another object file or None}
    if arg.get("obj"):
        build.find_object = lambda build=True: (Path(arg["obj"]), None)
    with open_ipr() as ipr:
        done = reconcile(host.host_resources(ctx), [Resource.from_json(d) for d in arg["previous"]], Env(ipr))
    out = [r.to_json() for r in done.resources]
elif op == "check":
    with open_ipr() as ipr:
        env = Env(ipr)
        out = [Resource.from_json(d).check(env) for d in arg]
elif op == "remove":
    with open_ipr() as ipr:
        teardown([Resource.from_json(d) for d in arg], Env(ipr))
elif op == "attach":
    host.attach_container(ctx, arg)
elif op == "detach":
    host.detach_container(ctx, arg)
print(json.dumps(out))
"""


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CrossnetError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Lab:
    def __init__(self, prefix: str, state_root: str):
        self.prefix = prefix
        self.state_root = state_root
        self.records: dict[str, list] = {}

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def ip(self, ns: str, *args: str) -> None:
        sh("ip", "-n", self.ns(ns), *args)

    def run(self, ns: str, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(ns), *cmd, check=check, timeout=timeout)

    def ctx(self, host: str) -> dict:
        addr, subnet, _ = HOSTS[host]
        return {"cluster_name": self.prefix, "backend": "host-gw", "host": host, "address": addr, "iface": "u0",
                "subnet": subnet, "network": NETWORK, "gateway": GW, "prefixlen": 32, "bridge": "",
                "underlay_mtu": 1500, "mtu": 1500, "masquerade": False, "peers": [],
                "state_dir": os.path.join(self.state_root, host)}

    def counters(self, host: str) -> dict[str, int]:
        """Read here: the pins are in this mount namespace, whatever the network namespace."""
        from crossnet.ebpf.host import counters_at

        return counters_at(self.ctx(host)["state_dir"])

    def ebpf(self, host: str, op: str, arg=None):
        """Run one crossnet.ebpf operation in a new process in host's network namespace
        (nsenter --net: same mount namespace, so the bpffs pins are shared)."""
        proc = sh("nsenter", f"--net=/run/netns/{self.ns(host)}", sys.executable, "-c", DRIVER, op,
                  json.dumps(self.ctx(host)), json.dumps(arg), timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def build(lab: Lab) -> None:
    for host in HOSTS:
        sh("ip", "netns", "add", lab.ns(host))
        lab.ip(host, "link", "set", "lo", "up")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            lab.run(host, "sysctl", "-qw", key, check=True)
    sh("ip", "link", "add", f"{lab.prefix}u1", "netns", lab.ns("h1"), "type", "veth", "peer", "name",
       f"{lab.prefix}u2", "netns", lab.ns("h2"))
    for n, host in ((1, "h1"), (2, "h2")):
        lab.ip(host, "link", "set", f"{lab.prefix}u{n}", "name", "u0")
        lab.ip(host, "addr", "add", f"{HOSTS[host][0]}/24", "dev", "u0")
        lab.ip(host, "link", "set", "u0", "up")
        other = "h2" if host == "h1" else "h1"
        lab.ip(host, "route", "add", HOSTS[other][1], "via", HOSTS[other][0])
        # a route towards the link-local gateway (proxy ARP answers only for routed targets)
        lab.ip(host, "route", "add", "default", "via", HOSTS[other][0])
        for i, (c, addr) in enumerate(HOSTS[host][2].items()):
            sh("ip", "netns", "add", lab.ns(c))
            lab.ip(c, "link", "set", "lo", "up")
            veth = f"cnv{i}"
            lab.ip(host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", lab.ns(c))
            lab.run(host, "sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=1", f"net.ipv4.neigh.{veth}.proxy_delay=0",
                    check=True)
            lab.ip(host, "link", "set", veth, "up")
            lab.ip(host, "route", "add", f"{addr}/32", "dev", veth)
            lab.ip(c, "addr", "add", f"{addr}/32", "dev", "eth0")
            lab.ip(c, "link", "set", "eth0", "up")
            lab.ip(c, "route", "add", GW, "dev", "eth0", "scope", "link")
            lab.ip(c, "route", "add", "default", "via", GW, "dev", "eth0")


def destroy(lab: Lab) -> None:
    names = [lab.ns(n) for n in HOSTS] + [lab.ns(c) for h in HOSTS.values() for c in h[2]]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for tool in ("nsenter", "ip"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    lab = Lab("ebp" + secrets.token_hex(2), str(tmp_path_factory.mktemp("ebpf-state")))
    try:
        build(lab)
        why = lab.ebpf("h1", "problem")
        if why:
            pytest.skip(f"eBPF datapath unavailable here: {why}")
        # a clsact of someone else's on h2's underlay NIC: removal must keep it
        lab.run("h2", "tc", "qdisc", "add", "dev", "u0", "clsact", check=True)
        for host, (_, _, containers) in HOSTS.items():
            lab.records[host] = lab.ebpf(host, "apply", {"previous": []})
            for i in range(len(containers)):
                lab.ebpf(host, "attach", f"cnv{i}")
        yield lab
    finally:
        try:
            for host in HOSTS:
                if host in lab.records:
                    lab.ebpf(host, "remove", lab.records[host])
        finally:
            destroy(lab)


def ping(lab: Lab, src: str, dst: str, *extra: str) -> subprocess.CompletedProcess:
    return lab.run(src, "ping", "-c", "2", "-i", "0.2", "-W", "2", *extra, dst)


TCP = r"""
import socket, sys
mode, addr = sys.argv[1], sys.argv[2]
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, 5201)); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept(); n = 0
    while True:
        b = c.recv(65536)
        if not b: break
        n += len(b)
    c.sendall(str(n).encode()); c.close()
else:
    c = socket.create_connection((addr, 5201), timeout=20); c.sendall(b"x" * 4_000_000); c.shutdown(socket.SHUT_WR)
    print(c.recv(100).decode())
"""


def tcp_transfer(lab: Lab, server: str, client: str) -> str:
    addr = next(h[2][server] for h in HOSTS.values() if server in h[2])
    srv = subprocess.Popen(["ip", "netns", "exec", lab.ns(server), sys.executable, "-c", TCP, "serve", addr],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        return lab.run(client, sys.executable, "-c", TCP, "send", addr, check=True).stdout.strip()
    finally:
        srv.kill()
        srv.wait()


def test_fast_path_forwards_and_counts(lab):
    before = {h: lab.counters(h) for h in HOSTS}
    assert ping(lab, "c1", "10.77.2.2").returncode == 0  # across hosts
    assert ping(lab, "c2", "10.77.1.2").returncode == 0
    assert ping(lab, "c1", "10.77.1.3").returncode == 0  # two containers of one host
    assert tcp_transfer(lab, "c2", "c1") == "4000000"
    after = {h: lab.counters(h) for h in HOSTS}
    for h in HOSTS:
        # from the containers to the NIC: redirect_neigh; into them (from the NIC, or from the
        # other container of h1): redirect_peer
        assert after[h]["redirect_neigh"] > before[h]["redirect_neigh"], (h, after[h])
        assert after[h]["redirect_peer"] > before[h]["redirect_peer"], (h, after[h])
    # the TCP transfer: 4 MB in (GSO) packets of at most 64 KB
    assert after["h1"]["redirect_neigh"] - before["h1"]["redirect_neigh"] >= 4_000_000 // 65536


def test_unresolved_next_hop_and_local_containers_stay_on_the_fast_path(lab):
    """A next hop whose MAC is not resolved (after a neighbour flush) is resolved by
    bpf_redirect_neigh instead of handing the packet to the stack (pass_fib); a container
    of the same host gets the packets straight into it (bpf_redirect_peer from the other
    container's veth), not through its host-side veth."""
    lab.ip("h1", "neigh", "flush", "dev", "u0")  # h1's ARP entry for h2
    before = lab.counters("h1")
    assert ping(lab, "c1", "10.77.2.2").returncode == 0
    after = lab.counters("h1")
    assert after["pass_fib"] == before["pass_fib"], after
    assert after["redirect_neigh"] >= before["redirect_neigh"] + 2, after
    before = lab.counters("h1")
    assert ping(lab, "c1", "10.77.1.3").returncode == 0
    after = lab.counters("h1")
    assert after["redirect_peer"] >= before["redirect_peer"] + 4, after  # 2 requests, 2 replies
    assert after["redirect_neigh"] == before["redirect_neigh"], after


def test_what_the_programs_do_not_handle_goes_through_the_stack(lab):
    before = lab.counters("h1")
    # TTL 1: the host's stack answers with ICMP time exceeded
    proc = ping(lab, "c1", "10.77.2.2", "-t", "1")
    assert "Time to live exceeded" in proc.stdout, proc.stdout
    # outside the container network (the other host's underlay address): routed by the stack
    assert ping(lab, "c1", HOSTS["h2"][0]).returncode == 0
    # ARP for the link-local gateway, answered by proxy ARP
    lab.ip("c1", "neigh", "flush", "dev", "eth0")
    assert ping(lab, "c1", "10.77.2.2").returncode == 0
    # a source address that is not the container's own: never the fast path
    lab.ip("c1", "addr", "add", "10.77.1.99/32", "dev", "eth0")
    lab.run("c1", "ping", "-c", "1", "-W", "1", "-I", "10.77.1.99", "10.77.2.2")
    lab.ip("c1", "addr", "del", "10.77.1.99/32", "dev", "eth0")
    after = lab.counters("h1")
    assert after["pass_source"] > before["pass_source"]
    assert after["pass_ttl"] > before["pass_ttl"]
    assert after["pass_outside"] > before["pass_outside"]
    assert after["pass_not_ipv4"] > before["pass_not_ipv4"]
    assert after["pass"] > before["pass"]


def test_a_new_process_finds_everything_in_place(lab):
    for host in HOSTS:
        assert lab.ebpf(host, "check", lab.records[host]) == [True] * len(lab.records[host])
    # attaching again is harmless, and detach + attach keep the path working
    lab.ebpf("h1", "attach", "cnv0")
    lab.ebpf("h1", "detach", "cnv0")
    lab.ebpf("h1", "detach", "cnv0")  # idempotent
    assert lab.run("h1", "tc", "filter", "show", "dev", "cnv0", "ingress", check=True).stdout.strip() == ""
    before = lab.counters("h1")
    assert ping(lab, "c1", "10.77.2.2").returncode == 0  # the kernel path without the program
    # the replies: the NIC program never redirects into a veth that is not attached
    assert lab.counters("h1")["pass_target"] >= before["pass_target"] + 2
    lab.ebpf("h1", "attach", "cnv0")
    before = lab.counters("h1")["redirect_neigh"]
    assert ping(lab, "c1", "10.77.2.2").returncode == 0
    assert lab.counters("h1")["redirect_neigh"] > before


def test_a_new_object_replaces_the_programs_in_place(lab, tmp_path):
    """An upgrade: another object (other content) is loaded into a new pin directory and
    attached before the old one is unpinned; traffic never stops."""
    obj = tmp_path / "crossnet_tc.o"
    old_dirs = {h: next(r["pin_dir"] for r in lab.records[h] if r["kind"] == "ebpf-programs") for h in HOSTS}
    obj.write_bytes(open(next(r["obj"] for r in lab.records["h1"] if r["kind"] == "ebpf-programs"), "rb").read()
                    + bytes(8))  # same programs, other content
    for host in HOSTS:
        lab.records[host] = lab.ebpf(host, "apply", {"previous": lab.records[host], "obj": str(obj)})
        new_dir = next(r["pin_dir"] for r in lab.records[host] if r["kind"] == "ebpf-programs")
        assert new_dir != old_dirs[host] and os.path.isdir(new_dir) and not os.path.exists(old_dirs[host])
        assert lab.ebpf(host, "check", lab.records[host]) == [True] * len(lab.records[host])
    # new maps: h2's container veth is not in them yet, so its NIC program leaves the
    # packets to the stack, which still delivers them
    before = lab.counters("h2")
    assert ping(lab, "c1", "10.77.2.2").returncode == 0
    assert lab.counters("h2")["pass_target"] > before["pass_target"]
    lab.ebpf("h2", "attach", "cnv0")
    lab.ebpf("h1", "attach", "cnv0")
    before = {h: lab.counters(h) for h in HOSTS}
    assert ping(lab, "c1", "10.77.2.2").returncode == 0
    after = {h: lab.counters(h) for h in HOSTS}
    assert after["h1"]["redirect_neigh"] > before["h1"]["redirect_neigh"]
    assert after["h2"]["redirect_peer"] > before["h2"]["redirect_peer"]


def test_trace_verify_reads_the_counters_as_hops(lab):
    """crossnet.trace.ebpf from the tracing process (another namespace, same bpffs): one
    `ebpf` hop per host, the probe counted as redirected on both."""
    from types import SimpleNamespace

    from crossnet.trace import ebpf as trace_ebpf

    hosts = {h: SimpleNamespace(name=h, state_dir=lab.ctx(h)["state_dir"], ctx=None) for h in HOSTS}
    sources = trace_ebpf.counter_sources(hosts)
    assert sorted(sources) == ["ebpf:h1", "ebpf:h2"]
    before = {k: fn() for k, fn in sources.items()}
    assert lab.run("c1", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.2.2").returncode == 0
    after = {k: fn() for k, fn in sources.items()}
    hops: list = []
    trace_ebpf.add_hops(hops, before, after)
    assert [h.host for h in hops] == ["h1", "h2"] and all(h.kind == "ebpf" for h in hops)
    for h in hops:  # 3 requests and 3 replies through each host: neigh one way, peer the other
        assert h.extra["ebpf"]["redirect_neigh"] >= 3 and h.extra["ebpf"]["redirect_peer"] >= 3, h


def _prog_ids(lab: Lab, host: str, dev: str) -> list[int]:
    out = lab.run(host, "tc", "filter", "show", "dev", dev, "ingress", check=True).stdout
    return [int(word.split(":")[-1]) for word in out.split() if word.startswith("crossnet:")]


def test_remove_leaves_nothing(lab):
    devs = {h: ["u0", *(f"cnv{i}" for i in range(len(HOSTS[h][2])))] for h in HOSTS}
    ids = [pid for h in HOSTS for dev in devs[h] for pid in _prog_ids(lab, h, dev)]
    assert len(ids) == 5
    maps = set()
    for pid in ids:
        maps |= set(json.loads(sh("bpftool", "prog", "show", "id", str(pid), "-j").stdout)["map_ids"])
    pin_dirs = [r["pin_dir"] for h in HOSTS for r in lab.records[h] if r["kind"] == "ebpf-programs"]
    assert all(os.path.isdir(d) for d in pin_dirs)
    for host, (_, _, containers) in HOSTS.items():
        for i in range(len(containers)):
            lab.ebpf(host, "detach", f"cnv{i}")
        lab.ebpf(host, "remove", lab.records.pop(host))
        for dev in devs[host]:
            assert lab.run(host, "tc", "filter", "show", "dev", dev, "ingress", check=True).stdout.strip() == ""
    assert "clsact" not in lab.run("h1", "tc", "qdisc", "show", "dev", "u0", check=True).stdout  # ours: gone
    assert "clsact" in lab.run("h2", "tc", "qdisc", "show", "dev", "u0", check=True).stdout  # not ours: kept
    assert not any(os.path.exists(d) for d in pin_dirs)
    assert not any(os.path.exists(os.path.dirname(d)) for d in pin_dirs)
    # the kernel frees a program after an RCU grace period and a map from a workqueue after
    # its last program: both asynchronously, so wait (bounded) for each id to go
    deadline = time.monotonic() + 10
    for what, ids_ in (("prog", ids), ("map", sorted(maps))):
        for oid in ids_:
            while sh("bpftool", what, "show", "id", str(oid), check=False).returncode == 0:
                assert time.monotonic() < deadline, f"bpf {what} {oid} still exists 10 s after remove"
                time.sleep(0.05)
    assert ping(lab, "c1", "10.77.2.2").returncode == 0  # the kernel path alone
