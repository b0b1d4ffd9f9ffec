"""HostContext.applied: this host's applied context, shared by crossnet.host.load_context
and crossnet.containers (which no longer imports crossnet.host)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.backends.base import HostContext, Peer
from crossnet.errors import CrossnetError
from crossnet.state import StateDir


def _ctx() -> HostContext:
    return HostContext(
        cluster_name="c", backend="vxlan", host="h1", address=IPv4Address("10.9.0.10"), iface="eth0",
        subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"),
        gateway=IPv4Address("10.32.0.1"), prefixlen=24, bridge="cn0", underlay_mtu=1500, mtu=1450,
        masquerade=False, vni=7, port=4789, nic_mac="02:00:00:00:00:10",
        peers=[Peer("h2", IPv4Address("10.9.0.11"), IPv4Network("10.32.1.0/24"), {"vtep_mac": "02:00:00:00:00:11"})],
    )


def test_not_configured_names_the_file(tmp_path):
    state = StateDir(tmp_path)
    with pytest.raises(CrossnetError, match=r"not configured yet \(no .*applied\.json\)"):
        HostContext.applied(state)


def test_round_trip_and_same_as_load_context(tmp_path):
    from crossnet.host import load_context

    state = StateDir(tmp_path)
    ctx = _ctx()
    state.save_applied({"context": ctx.to_json()})
    assert HostContext.applied(state) == ctx
    got, backend = load_context(state)
    assert got == ctx and backend.name == "vxlan"


def test_containers_list_uses_the_applied_context(tmp_path):
    from crossnet import containers

    state = StateDir(tmp_path)
    assert containers.list_containers(state) == []  # no IPAM file: nothing attached
