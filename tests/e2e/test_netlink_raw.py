"""The two hand-packed rtnetlink paths (crossnet.netlink.batch for per-peer routes,
neighbours and FDB entries; crossnet.netlink.raw for the attach fast path) must leave
exactly the kernel state pyroute2 leaves for the same objects.

Each test programs the same objects twice in a fresh namespace — once through the
raw path, once through pyroute2 — and compares what `ip -j` / `bridge -j` read back.
Namespaces get a unique prefix and are deleted in the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

_SETUP = r"""
from pyroute2 import IPRoute
ipr = IPRoute()
ipr.link("add", ifname="xbr", kind="bridge")
ipr.link("add", ifname="xvx", kind="vxlan", vxlan_id=7, vxlan_port=4789, vxlan_learning=0)
for name in ("xbr", "xvx"):
    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
ipr.addr("add", index=ipr.link_lookup(ifname="xbr")[0], address="10.77.0.1", prefixlen=24)
"""

_PEERS = [(f"10.32.{i}.0/24", f"10.32.{i}.0", f"0a:58:0a:20:{i:02x}:00", f"192.0.2.{i}") for i in range(1, 6)]

_PROGRAM = _SETUP + r"""
import json, sys
peers = json.loads(sys.argv[2])
vx = ipr.link_lookup(ifname="xvx")[0]
br = ipr.link_lookup(ifname="xbr")[0]
if sys.argv[1] == "raw":
    from crossnet.netlink.batch import Batch
    b = Batch()
    for dst, gw, mac, vtep in peers:
        b.route_replace(dst, gw, vx, True, dst)
        b.neigh_replace(vx, gw, mac, gw)
        b.fdb_append(vx, mac, vtep, mac)
    b.route_replace("10.78.0.0/16", "10.77.0.254", br, False, "via")
    b.route_replace("10.79.0.0/16", None, br, False, "link")
    assert b.commit() == []
else:
    from crossnet.netlink.iproute import RTNH_F_ONLINK
    for dst, gw, mac, vtep in peers:
        net, plen = dst.split("/")
        ipr.route("replace", dst=net, dst_len=int(plen), gateway=gw, oif=vx, flags=RTNH_F_ONLINK, proto=4)
        ipr.neigh("replace", ifindex=vx, dst=gw, lladdr=mac, state=0x80)
        ipr.fdb("append", ifindex=vx, lladdr=mac, dst=vtep)
    ipr.route("replace", dst="10.78.0.0", dst_len=16, gateway="10.77.0.254", oif=br, proto=4)
    ipr.route("replace", dst="10.79.0.0", dst_len=16, oif=br, proto=4, scope=253)
"""

_VETH = r"""
import sys
from pyroute2 import IPRoute
mode, peer_ns = sys.argv[1:3]
ipr = IPRoute()
ipr.link("add", ifname="xbr", kind="bridge")
br = ipr.link_lookup(ifname="xbr")[0]
ipr.link("set", index=br, state="up")
fd = __import__("os").open(peer_ns, __import__("os").O_RDONLY)
if mode == "raw":
    from crossnet.netlink import raw as nlraw
    with nlraw.Rtnl() as rt:
        rt.call([nlraw.veth_create("xv0", 1400, "0a:59:0a:20:00:02", br, "eth0", "0a:58:0a:20:00:02", fd)])
else:
    ipr.link("add", ifname="xv0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": 1400,
                                                      "address": "0a:58:0a:20:00:02"},
             mtu=1400, address="0a:59:0a:20:00:02")
    idx = ipr.link_lookup(ifname="xv0")[0]
    ipr.link("set", index=idx, master=br, state="up")
"""


@pytest.fixture
def netns():
    made: list[str] = []

    def make() -> str:
        name = "tnr" + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run(ns: str, script: str, *args: str) -> None:
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def _read(ns: str, *cmd: str) -> list:
    out = subprocess.run([cmd[0], "-n", ns, "-j", *cmd[1:]], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _state(ns: str) -> dict:
    routes = sorted(json.dumps(r, sort_keys=True) for r in _read(ns, "ip", "-4", "route", "show"))
    neigh = sorted(json.dumps(n, sort_keys=True) for n in _read(ns, "ip", "-4", "neigh", "show", "dev", "xvx"))
    fdb = sorted(json.dumps(f, sort_keys=True) for f in _read(ns, "bridge", "fdb", "show", "dev", "xvx")
                 if f.get("dst"))
    return {"routes": routes, "neigh": neigh, "fdb": fdb}


def test_batched_routes_neighbours_fdb_equal_pyroute2(netns):
    raw, ref = netns(), netns()
    _run(raw, _PROGRAM, "raw", json.dumps(_PEERS))
    _run(ref, _PROGRAM, "pyroute2", json.dumps(_PEERS))
    got, want = _state(raw), _state(ref)
    assert len(want["routes"]) == len(_PEERS) + 3  # peers + via + link + the bridge's own subnet
    assert len(want["neigh"]) == len(want["fdb"]) == len(_PEERS)
    assert got == want


def _link(ns: str, name: str) -> dict:
    (link,) = _read(ns, "ip", "-d", "link", "show", name)
    keep = ("ifname", "mtu", "address", "master", "operstate", "link_type")
    out = {k: link.get(k) for k in keep}
    out["kind"] = (link.get("linkinfo") or {}).get("info_kind")
    out["up"] = "UP" in link.get("flags", [])
    return out


def test_raw_veth_pair_equals_pyroute2(netns):
    results = []
    for mode in ("raw", "pyroute2"):
        host, ctr = netns(), netns()
        _run(host, _VETH, mode, f"/run/netns/{ctr}")
        results.append((_link(host, "xv0"), _link(ctr, "eth0")))
    (raw_host, raw_ctr), (ref_host, ref_ctr) = results
    assert ref_host["master"] == "xbr" and ref_host["mtu"] == 1400 and ref_host["up"]
    assert ref_ctr["kind"] == "veth" and ref_ctr["address"] == "0a:58:0a:20:00:02"
    assert raw_host == ref_host
    assert raw_ctr == ref_ctr


_KINDS = _SETUP + r"""
import json
from crossnet.netlink import iproute as nl
from crossnet.netlink import raw as nlraw
for i in range(300):  # more than one 64 KiB read of the dump
    ipr.link("add", ifname=f"xv{i}", kind="veth", peer={"ifname": f"xp{i}"})
with nlraw.Rtnl() as rt:
    raw = rt.link_kinds()
print(json.dumps({"raw": sorted(raw.items()), "pyroute2": sorted((l.index, l.kind) for l in nl.all_links(ipr))}))
"""


def test_raw_link_kinds_equal_pyroute2(netns):
    """Rtnl.link_kinds (detach's stale-veth check, crossnet.ebpf.host.forget_veth): every
    interface's index and kind from one dump read field by field, as pyroute2 reads them
    (600 veths: the dump spans many reads; lo: no kind)."""
    ns = netns()
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _KINDS], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["raw"] == got["pyroute2"]
    kinds = [k for _, k in got["raw"]]
    assert kinds.count("veth") == 600 and {"bridge", "vxlan", None} <= set(kinds)
