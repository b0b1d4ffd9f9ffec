"""End to end: `datapath: ebpf` (docs/datapath.md) — routed container veths for host-gw
and vxlan in one lab per backend (2 hosts, 2 containers each, masquerade on): no container
bridge, a /32 route per container, the link-local gateway as a static neighbour; all pairs,
TCP, MTU edge sizes, masquerade to an address outside the cluster, `check`, `trace`,
status naming the datapath that runs (ebpf where this machine can load the programs,
whose redirect counters must move under TCP; else kernel, saying why), and a reset that
leaves each host exactly as it was (no pin, no program on the NIC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import LabFactory

from .kstate import diff, snapshot
from .test_datapath_ebpf_runtimes import veth_entries
from .test_foundation import ping, tcp_transfer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

GATEWAY = "169.254.1.1"


class RoutedLab:
    def __init__(self, lab, backend: str, before: dict[str, dict], dry_run: str) -> None:
        self.lab, self.backend, self.before, self.dry_run = lab, backend, before, dry_run

    def host(self, name: str):
        return next(h for h in self.lab.hosts if h.name == name)

    def run(self, hname: str, *args: str) -> subprocess.CompletedProcess:
        return self.lab.crossnet(hname, *args, check=False)

    def status(self, hname: str) -> dict:
        return self.lab.status(hname)

    def address(self, container: str) -> str:
        for h in self.lab.hosts:
            for c in self.status(h.name)["containers"]:
                if c["id"] == container:
                    return c["address"]
        raise AssertionError(f"{container} is not attached")


def ip_json(netns: str, *args: str) -> list:
    return json.loads(subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


@pytest.fixture(scope="module", params=["host-gw", "vxlan"])
def routed(request, lab_sweep) -> RoutedLab:
    backend = request.param
    factory = LabFactory.for_test(request)
    lab = factory(hosts=2, underlay="l3" if backend == "vxlan" else "l2", backend=backend, containers=2,
                  apply=False, extra={"datapath": "ebpf"})
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    assert cluster["datapath"] == "ebpf"  # `lab up --datapath ebpf` writes it into the cluster file
    cluster["masquerade"] = True
    Path(lab.plan.cluster_file).write_text(yaml.safe_dump(cluster))
    before = {h.name: snapshot(h.netns) for h in lab.hosts}
    dry = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--dry-run", check=False)
    assert dry.returncode == 0, dry.stderr
    for h in lab.hosts:
        lab.apply(h.name)
    for h in lab.hosts:
        for c in h.containers:
            lab.attach(h.name, c)
    lab.manifest["apply"] = True  # as `lab up` records it: lab.check pings the containers
    lab.save()
    return RoutedLab(lab, backend, before, dry.stdout)


def test_dry_run_and_layout(routed):
    """--dry-run shows the host address on lo and no bridge; the kernel then has no bridge,
    masterless host veths with a /32 route each, and containers with a /32 address, the
    gateway 169.254.1.1 as a permanent neighbour and an onlink default route via it."""
    lab = routed.lab
    h1 = routed.host("h1")
    st = routed.status("h1")
    assert f"ip addr add {st['gateway']}/32 dev lo" in routed.dry_run
    assert "type bridge" not in routed.dry_run
    links = ip_json(h1.netns, "-d", "link", "show")
    assert not [l for l in links if (l.get("linkinfo") or {}).get("info_kind") == "bridge"]
    routes = {r["dst"]: r for r in ip_json(h1.netns, "route", "show")}
    for c in st["containers"]:
        veth = next(l for l in links if l["ifname"] == c["host_if"])
        assert "master" not in veth
        assert routes[c["address"]]["dev"] == c["host_if"]
        cns = os.path.basename(c["netns"])
        assert ip_json(cns, "-4", "addr", "show", "dev", "eth0")[0]["addr_info"][0]["prefixlen"] == 32
        default = next(r for r in ip_json(cns, "route", "show") if r["dst"] == "default")
        assert default["gateway"] == GATEWAY and "onlink" in default.get("flags", [])
        neigh = next(n for n in ip_json(cns, "neigh", "show", "dev", "eth0") if n["dst"] == GATEWAY)
        assert neigh["lladdr"] == veth["address"] and "PERMANENT" in neigh["state"]
    assert f"{st['gateway']}/32" in [f"{a['local']}/{a['prefixlen']}" for a in
                                      ip_json(h1.netns, "-4", "addr", "show", "dev", "lo")[0]["addr_info"]]
    assert lab.plan.hosts  # the lab is the one the fixture built


def test_status_names_the_datapath(routed):
    """The programs run where this machine can run them (crossnet.ebpf.problem: the lab
    runs host commands with nsenter --net so the pins stay); else kernel, saying why."""
    from crossnet import ebpf

    why = ebpf.problem()
    st = routed.status("h1")
    d = st["datapath"]
    text = routed.run("h1", "status")
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stdout.split())
    if why is None:
        assert (d["configured"], d["layout"], d["datapath"], d["why"]) == ("ebpf", "routed", "ebpf", None)
        assert isinstance(d["counters"], dict) and "redirect" in d["counters"]
        assert "datapath: ebpf (routed container veths)" in flat and "packets redirected" in flat
    else:
        assert (d["configured"], d["layout"], d["datapath"]) == ("ebpf", "routed", "kernel")
        assert d["why"] == why and f"datapath: kernel (routed container veths; {why}" in flat


def test_all_pairs_tcp_and_mtu_edges(routed):
    lab = routed.lab
    pairs = lab.check()
    assert len(pairs) == 12 and all(p.ok for p in pairs), [p for p in pairs if not p.ok]
    src, dst = routed.host("h1").containers[0], routed.host("h2").containers[1]
    dst_addr = routed.address(dst)
    from crossnet import ebpf
    from crossnet.ebpf import host as ebpf_host

    before = {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}
    devices = {h.name: vxlan_packets(h.netns) for h in lab.hosts}
    assert tcp_transfer(src, dst, dst_addr) > 1e6
    if ebpf.problem() is None:  # the fast path is really taken: both hosts' programs redirected the flow
        for h in lab.hosts:
            after = ebpf_host.counters_at(h.state_dir)
            assert after["redirect"] > before[h.name].get("redirect", 0), (h.name, before[h.name], after)
        if routed.backend == "vxlan":  # the programs make and take apart the VXLAN frames themselves
            d = deltas(lab, before)
            assert d["h1"]["redirect_encap"] > 100 and d["h2"]["redirect_decap"] > 100, d  # data one way,
            assert d["h2"]["redirect_encap"] > 10 and d["h1"]["redirect_decap"] > 10, d  # ACKs the other
            assert d["h2"]["redirect_decap"] > 10 * d["h2"]["pass_outside"], d
            moved = {h.name: vxlan_packets(h.netns) - devices[h.name] for h in lab.hosts}
            assert moved["h1"] < d["h1"]["redirect_encap"] / 10, (moved, d)  # the devices were bypassed
            assert moved["h2"] < d["h2"]["redirect_decap"] / 10, (moved, d)
    mtu = routed.status("h1")["mtu"]
    assert mtu == (1450 if routed.backend == "vxlan" else 1500)

    def df_ping(size: int) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", src, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size),
                               dst_addr], capture_output=True, text=True)

    assert df_ping(mtu - 28).returncode == 0  # the largest unfragmented packet crosses
    too_big = df_ping(mtu - 27)
    assert too_big.returncode != 0 and "message too long" in (too_big.stdout + too_big.stderr).lower()
    same_host = routed.address(routed.host("h1").containers[1])
    assert ping(src, same_host)  # routed through the host, no bridge between them


def deltas(lab, before: dict[str, dict]) -> dict[str, dict[str, int]]:
    from crossnet.ebpf import host as ebpf_host

    return {h.name: {k: v - before[h.name].get(k, 0) for k, v in ebpf_host.counters_at(h.state_dir).items()}
            for h in lab.hosts}


def vxlan_packets(netns: str) -> int:
    """tx + rx packets of the host's vxlan devices."""
    return sum(link["stats64"]["tx"]["packets"] + link["stats64"]["rx"]["packets"]
               for link in ip_json(netns, "-s", "link", "show", "type", "vxlan"))


def test_vxlan_frames_of_the_programs_are_what_the_device_takes_and_makes(routed):
    """Backend vxlan: the frames the sender's program makes are plain VXLAN — with the
    receiver's NIC program gone (a host on `datapath: kernel`, or one whose programs are
    not loaded yet) its vxlan device decapsulates them, and TCP still flows; without the
    VTEP entry of a peer the sender hands the packets to its vxlan device again; `apply`
    puts both back and the programs take the flow again."""
    from crossnet import ebpf
    from crossnet.ebpf import host as ebpf_host
    from crossnet.ebpf import maps

    if routed.backend != "vxlan" or ebpf.problem() is not None:
        pytest.skip("the programs' own VXLAN: backend vxlan, on a host that runs them")
    lab = routed.lab
    h1, h2 = routed.host("h1"), routed.host("h2")
    src, dst = h1.containers[0], h2.containers[0]
    dst_addr = routed.address(dst)
    nic = routed.status("h2")["iface"]

    subprocess.run(["tc", "-n", h2.netns, "filter", "del", "dev", nic, "ingress", "pref", "1000"], check=True)
    before = {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}
    seen = vxlan_packets(h2.netns)
    assert tcp_transfer(src, dst, dst_addr) > 1e6
    d = deltas(lab, before)
    assert d["h1"]["redirect_encap"] > 100 and d["h2"]["redirect_decap"] == 0, d
    assert vxlan_packets(h2.netns) - seen > 100  # h2's device took h1's frames apart
    assert d["h2"]["redirect_peer"] > 100, d  # ... and its program put them into the container

    pin = ebpf_host.current_pin_dir(h1.state_dir)
    keys = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", f"{pin}/maps/{maps.VTEPS_MAP}"],
                          capture_output=True, text=True, check=True)
    entries = json.loads(keys.stdout)
    assert len(entries) == 1, entries  # h1's one peer
    key = entries[0]["key"] if isinstance(entries[0]["key"], list) else entries[0]["key"].split()
    subprocess.run(["bpftool", "map", "delete", "pinned", f"{pin}/maps/{maps.VTEPS_MAP}", "key", "hex",
                    *[str(k).removeprefix("0x") for k in key]], check=True)
    before = {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}
    assert tcp_transfer(src, dst, dst_addr) > 1e6
    d = deltas(lab, before)
    assert d["h1"]["redirect_encap"] == 0 and d["h1"]["redirect_neigh"] > 100, d  # into h1's vxlan device

    for h in ("h1", "h2"):
        lab.apply(h)
    before = {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}
    assert tcp_transfer(src, dst, dst_addr) > 1e6
    d = deltas(lab, before)
    assert d["h1"]["redirect_encap"] > 100 and d["h2"]["redirect_decap"] > 100, d


def test_masquerade_reaches_outside(routed):
    h1 = routed.host("h1")
    fabric = routed.lab.plan.fabric.address or next(h for h in routed.lab.plan.hosts if h.name == "h1").fabric_address
    outside = fabric.split("/")[0]  # the switch (l2) or router (l3): not part of the cluster
    c1 = h1.containers[0]
    assert ping(c1, outside, count=2)


def test_check_and_trace(routed):
    lab = routed.lab
    res = routed.run("h1", "check", "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ok"] is True
    h2 = routed.host("h2")
    src, dst = routed.host("h1").containers[0], h2.containers[0]
    trace = routed.run("h1", "trace", src, dst, "--peer-state-dir", h2.state_dir, "--peer-netns", h2.netns,
                       "--verify", "--count", "5")
    assert trace.returncode == 0, trace.stdout + trace.stderr
    out = trace.stdout
    assert f"route {routed.address(dst)}/32 dev" in out and f"{dst} receives" in out
    assert "(no master)" in out
    assert lab.plan.name in out


def test_reattach_repairs_the_host_route(routed):
    """attach of an attached container (the slow path) puts back a deleted /32 route."""
    h1 = routed.host("h1")
    c = routed.status("h1")["containers"][0]
    subprocess.run(["ip", "-n", h1.netns, "route", "del", f"{c['address']}/32"], check=True)
    assert not ping(routed.host("h2").containers[0], c["address"])
    res = routed.run("h1", "attach", c["netns"], "-o", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["changed"] is True and out["gateway"] == GATEWAY and out["cidr"] == f"{c['address']}/32"
    assert ping(routed.host("h2").containers[0], c["address"], count=2)


def veth_filters(netns: str, dev: str) -> list[dict]:
    """`tc -j filter show dev DEV ingress`: what the kernel reports of each filter there."""
    out = subprocess.run(["ip", "netns", "exec", netns, "tc", "-j", "filter", "show", "dev", dev, "ingress"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def test_a_new_veths_program_is_the_one_the_slow_path_attaches(routed):
    """attach's fast path adds clsact and crossnet's filter with raw netlink on the veth it
    has just made: the kernel reports exactly the filter the slow path (pyroute2, as a
    repairing attach does) puts back after it is deleted -- protocol all, pref 1000,
    handle 1, direct-action, named after the pinned program, running it -- and the
    container's traffic takes it."""
    from crossnet import ebpf
    from crossnet.ebpf import host as ebpf_host

    if ebpf.problem() is not None:
        pytest.skip(f"this machine cannot run the eBPF programs: {ebpf.problem()}")
    h1 = routed.host("h1")
    c = routed.status("h1")["containers"][0]
    (route,) = ip_json(h1.netns, "route", "show", f"{c['address']}/32")
    dev = route["dev"]
    prog_id = ebpf_host._pinned_prog_id(ebpf_host.current_pin_dir(h1.state_dir), "cn_from_container")
    fast = veth_filters(h1.netns, dev)
    ours = [f for f in fast if (f.get("options") or {}).get("bpf_name")]
    assert len(ours) == 1, fast
    opts = ours[0]["options"]
    assert (ours[0]["kind"], ours[0]["protocol"], ours[0]["pref"]) == ("bpf", "all", 1000), ours
    assert (opts["handle"], opts["bpf_name"], opts.get("direct-action"), opts["prog"]["id"]) == \
        ("0x1", f"crossnet:cn_from_container:{prog_id}", True, prog_id), opts
    before = ebpf_host.counters_at(h1.state_dir).get("redirect", 0)
    peer = routed.status("h2")["containers"][0]["address"]
    assert ping(os.path.basename(c["netns"]), peer, count=3)
    assert ebpf_host.counters_at(h1.state_dir).get("redirect", 0) > before
    subprocess.run(["ip", "netns", "exec", h1.netns, "tc", "filter", "del", "dev", dev, "ingress", "pref", "1000"],
                   check=True)
    assert not [f for f in veth_filters(h1.netns, dev) if (f.get("options") or {}).get("bpf_name")]
    res = routed.run("h1", "attach", c["netns"], "-o", "json")  # attached already: the slow path repairs
    assert res.returncode == 0, res.stderr
    assert veth_filters(h1.netns, dev) == fast


def test_detach_forgets_its_veth_and_vanished_ones_and_keeps_the_others(routed):
    """Detach (crossnet.ebpf.host.forget_veth, raw netlink) removes the container's
    redirect-target entry and those of veths gone without a detach (a container whose
    namespace was deleted), and keeps every live container's entry."""
    from crossnet import ebpf

    if ebpf.problem() is not None:
        pytest.skip(f"this machine cannot run the eBPF programs: {ebpf.problem()}")
    h1 = routed.host("h1")
    names = [f"{h1.netns}-x{i}" for i in (1, 2)]
    ids = {}
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            res = routed.run("h1", "attach", n, "-o", "json")
            assert res.returncode == 0, res.stderr
            ids[n] = json.loads(res.stdout)["id"]
        index = {}
        for n in names:
            address = next(c["address"] for c in routed.status("h1")["containers"] if c["id"] == ids[n])
            (route,) = ip_json(h1.netns, "route", "show", f"{address}/32")
            index[n] = next(link["ifindex"] for link in ip_json(h1.netns, "link", "show", route["dev"]))
        before = veth_entries(h1.state_dir)
        assert set(index.values()) <= before
        subprocess.run(["ip", "netns", "del", names[1]], check=True)  # its veth pair goes, its entry stays
        assert index[names[1]] in veth_entries(h1.state_dir)
        res = routed.run("h1", "detach", n := names[0])
        assert res.returncode == 0, res.stderr
        ids.pop(n)
        assert veth_entries(h1.state_dir) == before - set(index.values())
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)
        for cid in ids.values():  # the vanished one's address
            routed.run("h1", "detach", cid)


_CNI = ("import json, os, sys\n"
        "from crossnet.cni import plugin\n"
        "code, out = plugin.run(dict(os.environ), sys.stdin.buffer.read())\n"
        "print(json.dumps(out) if out is not None else '')\n"
        "sys.exit(code)\n")


def test_cni_add_check_del(routed):
    """CNI ADD gives a /32 with gateway 169.254.1.1 and the default route via it; CHECK
    passes on the routed veth; DEL removes veth and route."""
    import sys

    h1 = routed.host("h1")
    ns = f"{routed.lab.name}-cni1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "crossnet", "type": "crossnet-cni",
                       "stateDir": h1.state_dir}).encode()

    def cni(command: str, stdin: bytes = conf) -> tuple[int, dict | None]:
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": "routedcni1", "CNI_NETNS": f"/run/netns/{ns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{h1.netns}", sys.executable, "-c", _CNI], input=stdin,
                              env=env, capture_output=True, timeout=60)
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out and out != "null" else None)

    try:
        code, res = cni("ADD")
        assert code == 0, res
        (ip,) = res["ips"]
        assert ip["gateway"] == GATEWAY and ip["address"].endswith("/32")
        assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
        address = ip["address"].split("/")[0]
        assert ping(routed.host("h2").containers[0], address, count=2)
        code, out = cni("CHECK", json.dumps({**json.loads(conf), "prevResult": res}).encode())
        assert code == 0, out
        host_if = res["interfaces"][0]["name"]
        subprocess.run(["ip", "-n", h1.netns, "route", "del", f"{address}/32"], check=True)
        code, out = cni("CHECK", json.dumps({**json.loads(conf), "prevResult": res}).encode())
        assert code != 0 and f"no route {address}/32 dev {host_if}" in json.dumps(out)
        code, out = cni("DEL")
        assert code == 0, out
        assert not [l for l in ip_json(h1.netns, "link", "show") if l["ifname"] == host_if]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_switching_datapath_with_containers_is_refused(routed):
    lab = routed.lab
    h1 = routed.host("h1")
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["datapath"] = "kernel"
    path = Path(lab.plan.lab_dir) / "kernel.yaml"
    path.write_text(yaml.safe_dump(cluster))
    now = snapshot(h1.netns)
    res = routed.run("h1", "apply", "-f", str(path), "--host", "h1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "datapath:" in res.stderr
    assert "detach" in res.stderr
    assert diff(now, snapshot(h1.netns)) == []


ADMIN_BPF = r"""
struct __sk_buff;
__attribute__((section("tc"), used)) int adm(struct __sk_buff *skb) { return -1; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def test_an_admins_filter_in_crossnets_tc_slot_is_refused_by_apply_and_named_by_status(routed, tmp_path):
    """The admin replaces crossnet's filter (pref 1000 handle 1) on the device where the
    to-container program runs (NIC for host-gw, vxlan device for vxlan): `status` says apply
    refuses and why, `apply` and `apply --dry-run` fail with that one line and leave the
    admin's filter; once it is moved away, `apply` repairs and status has no drift."""
    from crossnet import ebpf

    if ebpf.problem() is not None or not shutil.which("clang"):
        pytest.skip("the eBPF programs do not run here (kernel datapath): no tc filter of crossnet's")
    h1 = routed.host("h1")
    st = routed.status("h1")
    dev = st["iface"] if routed.backend == "host-gw" else next(
        l["ifname"] for l in ip_json(h1.netns, "-d", "link", "show")
        if (l.get("linkinfo") or {}).get("info_kind") == "vxlan")
    (tmp_path / "adm.c").write_text(ADMIN_BPF)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(tmp_path / "adm.c"), "-o", str(tmp_path / "adm.o")],
                   check=True)

    def tc(*args: str) -> str:
        return subprocess.run(["tc", "-n", h1.netns, *args], capture_output=True, text=True, check=True).stdout

    tc("filter", "replace", "dev", dev, "ingress", "pref", "1000", "handle", "1", "bpf", "da",
       "obj", str(tmp_path / "adm.o"), "sec", "tc")
    try:
        theirs = tc("filter", "show", "dev", dev, "ingress")
        assert "adm.o:[tc]" in theirs and "crossnet:" not in theirs
        why = (f"ebpf: {dev} ingress already has a tc filter crossnet did not create at crossnet's priority "
               f"(pref 1000): bpf handle 0x1 protocol 0x0003 'adm.o:[tc]'")
        drift = routed.status("h1")["drift"]
        assert len(drift) == 1 and f"tc filter replace dev {dev} ingress" in drift[0], drift
        assert f"  # apply refuses: {why}" in drift[0]
        text = " ".join(routed.run("h1", "status").stdout.split())
        assert "apply refuses to repair 1 of them:" in text and why in text
        for extra in (("--dry-run",), ()):
            res = routed.run("h1", "apply", "-f", routed.lab.plan.cluster_file, "--host", "h1", *extra)
            assert res.returncode != 0
            (line,) = [x for x in res.stderr.splitlines() if x.strip()]
            assert why in line
            assert tc("filter", "show", "dev", dev, "ingress") == theirs
    finally:
        tc("filter", "del", "dev", dev, "ingress", "pref", "1000")
    routed.lab.apply("h1")
    assert routed.status("h1")["drift"] == []
    assert "crossnet:cn_to_container:" in tc("filter", "show", "dev", dev, "ingress")


def test_reset_leaves_nothing(routed):
    """Last: reset on every host (containers detached with it) leaves each host as before apply."""
    for h in routed.lab.hosts:
        res = routed.run(h.name, "reset")
        assert res.returncode == 0, res.stderr
        assert diff(routed.before[h.name], snapshot(h.netns)) == []
        from crossnet.ebpf import host as ebpf_host

        assert not ebpf_host.loaded(h.state_dir)  # no pin left
        filters = subprocess.run(["ip", "netns", "exec", h.netns, "tc", "filter", "show", "dev", h.ifname, "ingress"],
                                 capture_output=True, text=True)
        assert "crossnet" not in filters.stdout  # no program left on the NIC


def test_agent_programs_a_routed_network_from_the_store(lab_factory):
    """The etcd store carries `datapath` (lab: `etcd init`'s config): each agent programs the
    routed layout (no bridge, /32 routes) and the containers of both hosts reach each other."""
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    lab = lab_factory(hosts=2, underlay="l3", backend="vxlan", containers=1, extra={"store": "etcd", "datapath": "ebpf"})
    pairs = lab.check(count=2)
    assert len(pairs) == 2 and all(p.ok for p in pairs), pairs
    for h in lab.hosts:
        st = lab.status(h.name)
        assert st["datapath"]["layout"] == "routed"
        links = ip_json(h.netns, "-d", "link", "show")
        assert not [l for l in links if (l.get("linkinfo") or {}).get("info_kind") == "bridge"]
        (c,) = st["containers"]
        assert any(r["dst"] == c["address"] and r["dev"] == c["host_if"] for r in ip_json(h.netns, "route", "show"))
