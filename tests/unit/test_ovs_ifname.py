"""Interface names from input never reach the OVS backend's nft script or flow text
unchecked, and the agent checks --iface (crossnet.ifname is the one check).

The reported case: an OVS host's `iface` was pasted into the nft script as is."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.backends.ovs import OvsBackend
from crossnet.errors import ConfigError
from crossnet.ifname import nft_ifname, valid_ifname
from crossnet.plan.resources import NftTable
from tests.unit.test_ovs_backend import ctx_for


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_nft_quoting_never_lets_a_quote_through(name: str) -> None:
    try:
        quoted = nft_ifname(name, "f")
    except ConfigError:
        return
    inner = quoted[1:-1]
    assert quoted == f'"{inner}"' and '"' not in inner and "\\" not in inner and valid_ifname(inner)


@pytest.mark.parametrize("iface", ['eth0";flush', "a b", "x" * 16, "eth0\\", "e\x01"])
def test_ovs_nft_script_refuses_a_bad_iface(iface: str) -> None:
    b = OvsBackend("ovs-gre", "gre", 38)
    b._datapath = "netdev"
    ctx = ctx_for("ovs-gre")
    ctx.iface = iface
    with pytest.raises(ConfigError, match=r"^hosts\[h1\]\.iface: "):
        b.resources(ctx)


def test_ovs_nft_script_quotes_a_good_iface() -> None:
    b = OvsBackend("ovs-gre", "gre", 38)
    b._datapath = "netdev"
    ctx = ctx_for("ovs-gre")
    ctx.iface = "ens3"
    (table,) = [r for r in b.resources(ctx) if isinstance(r, NftTable)]
    assert 'type filter hook ingress device "ens3" priority filter; policy drop;' in table.body


def test_ovs_tunnel_port_of_an_odd_peer_name_is_hashed() -> None:
    """A peer name (from the store) is used as a port name in OpenFlow text: anything
    but [A-Za-z0-9_.-] gets the hashed name, so no flow syntax can ride in on it."""
    b = OvsBackend("ovs-gre", "gre", 38)
    ctx = ctx_for("ovs-gre", names=["h2", "x,actions=al"])
    names = [b.tunnel_port(p) for p in ctx.peers]
    assert names[0] == "gre-h2"
    assert names[1].startswith("gre-") and len(names[1]) == 12 and "," not in names[1]
    assert all(valid_ifname(n) for n in names)


def test_agent_refuses_a_bad_iface_with_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", "/nonexistent/crossnet-ifname-test", "agent",
                        "-f", "/nonexistent.yaml", "--iface", "eth0/x", "--no-api"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == "crossnet: error: --iface: interface name 'eth0/x' must not contain '/' or ':'\n"
