"""End to end: the isolation tables (crossnet.netiso) as the kernel's nftables takes and
lists them back, in a scratch network namespace (no lab: no packet is sent).

`NftTable.check` must read back exactly what `ensure` loaded, whatever order nft lists a
set's elements in (the bridge verdict map is a hash set), and must still see a changed
rule; sets never hold addresses, which nft would merge (10.250.0.0/16 and 10.251.0.0/16
list back as 10.250.0.0/15).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

DRIVER = r"""
import json, sys
from ipaddress import IPv4Address, IPv4Network
from dataclasses import replace
from crossnet import netiso
from crossnet.backends import get_backend
from crossnet.backends.base import HostContext
from crossnet.plan.resources import NftTable

nets, datapath, backend = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ctxs = {}
for name, (net, sub) in nets.items():
    s = IPv4Network(sub)
    ctx = HostContext("c", backend, "h1", IPv4Address("192.168.9.1"), "eth0", s, IPv4Network(net),
                      s.network_address + 1, s.prefixlen, f"cn-{name}", 1500, 1450, False, vni=len(ctxs) + 1,
                      wireguard={"device": f"cnwg{len(ctxs) + 1}"})
    ctxs[name] = replace(ctx, datapath=datapath) if datapath != "kernel" else ctx
out = {}
own = {name: get_backend(backend).ingress_devices(ctx) for name, ctx in ctxs.items()}  # as crossnet.program passes them
for table in netiso.isolation_resources(ctxs, own):
    table.ensure(None)
    first = table.check(None)
    # one changed rule: the last drop of the table lets through instead
    i = table.body.rindex("drop")
    changed = NftTable(table.family, table.name, table.body[:i] + "accept" + table.body[i + 4:])
    out[table.family] = {"check": first, "changed_check": changed.check(None)}
    table.remove(None)
    out[table.family]["gone"] = not table.check(None)
print(json.dumps(out))
"""


@pytest.fixture
def netns():
    name = f"cnt-iso-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


CASES = {
    "two": {"default": ("10.32.0.0/16", "10.32.3.0/24"), "blue": ("10.41.0.0/16", "10.41.3.0/24")},
    "adjacent networks": {"default": ("10.32.0.0/16", "10.32.0.0/24"), "bench": ("10.250.0.0/16", "10.250.1.0/24"),
                          "next": ("10.251.0.0/16", "10.251.1.0/24")},
    "five, out of order": {f"n{i}": (f"10.{i}.0.0/16", f"10.{i}.7.0/24") for i in (9, 2, 7, 1, 5)},
}


@pytest.mark.parametrize("backend, datapath, family", [
    ("vxlan", "kernel", "netdev"),  # ingress chains on devices the scratch namespace does not have
    ("wireguard", "kernel", "netdev"),
    ("vxlan", "ebpf", "inet"),
    ("host-gw", "kernel", "inet"),
])
@pytest.mark.parametrize("case", list(CASES))
def test_the_tables_read_back_as_loaded_and_a_changed_rule_is_drift(netns, case, backend, datapath, family):
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", DRIVER, json.dumps(CASES[case]), datapath,
                           backend], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == {f: {"check": True, "changed_check": False, "gone": True} for f in (family, "arp")}
