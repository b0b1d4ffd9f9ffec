"""The Docker driver's DeleteEndpoint on the real kernel (crossnet.runtime.dockerplugin.
NetlinkKernel): the host veth is only marked on the request path (its alias), the writer
thread deletes it by index afterwards, and a plugin killed in between leaves a marked veth
that the next plugin start removes — nothing else. One fresh namespace (unique prefix,
deleted in the finalizer), real netlink, no Docker."""

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

_SCRIPT = r"""
import json, time
from types import SimpleNamespace
from pyroute2 import IPRoute
from crossnet.backends.base import Backend
from crossnet.runtime.dockerplugin import RETIRED_ALIAS, NetlinkKernel

ipr = IPRoute()
ipr.link("add", ifname="xbr", kind="bridge")
ipr.link("set", index=ipr.link_lookup(ifname="xbr")[0], state="up")
ipr.link("add", ifname="keep0", kind="bridge")  # not the driver's: never swept
ctx = SimpleNamespace(bridge="xbr", mtu=1400, datapath=None)
backend = Backend.__new__(Backend)  # a plain bridge port (the fast path)
k = NetlinkKernel()
out = {}
for n in ("cnvaaa", "cnvbbb", "cnvccc"):
    k.create_veth(ctx, backend, n, n.replace("cnv", "cnt"), "0a:58:0a:20:01:03")
t0 = time.perf_counter()
token = k.retire_veth(ctx, backend, "cnvaaa")
out["retire_ms"] = (time.perf_counter() - t0) * 1000
def links():
    return {l.get_attr("IFLA_IFNAME"): l.get_attr("IFLA_IFALIAS") for l in ipr.get_links()}
out["after_retire"] = links()
out["token_is_index"] = token == ipr.link_lookup(ifname="cnvaaa")[0]
k.reap_veth(token)
k.reap_veth(token)  # again: gone already, no error
out["after_reap"] = links()
out["gone"] = k.retire_veth(ctx, backend, "cnvaaa")  # DeleteEndpoint again: nothing there
k.retire_veth(ctx, backend, "cnvbbb")  # ... and the plugin is killed before the writer deletes it
out["swept"] = NetlinkKernel().sweep_retired()  # the next plugin start
out["after_sweep"] = links()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def netns():
    name = "cnxdr" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_retired_veth_is_deleted_after_the_answer_and_swept_after_a_crash(netns):
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _SCRIPT],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # on the request path: marked, still there (with its peer, back from the container)
    assert out["after_retire"]["cnvaaa"] == "crossnet:docker-retired" and "cntaaa" in out["after_retire"]
    assert out["after_retire"]["cnvbbb"] is None and out["token_is_index"]
    # the writer thread: the pair is gone, the others untouched
    assert "cnvaaa" not in out["after_reap"] and "cntaaa" not in out["after_reap"]
    assert {"cnvbbb", "cnvccc", "keep0", "xbr"} <= set(out["after_reap"])
    assert out["gone"] is None
    # a killed plugin's marked veth: removed at the next start, nothing else
    assert out["swept"] == ["cnvbbb"]
    assert "cnvbbb" not in out["after_sweep"] and {"cnvccc", "cntccc", "keep0", "xbr"} <= set(out["after_sweep"])
