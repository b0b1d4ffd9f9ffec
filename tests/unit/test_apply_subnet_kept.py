"""apply refuses to renumber a host: the subnet recorded by the previous apply must be
the one the cluster file gives now (crossnet.host.check_subnet_kept). The same in a
lab, with real state and kernel: tests/e2e/test_subnet_stability.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
import yaml

from crossnet.backends.base import HostContext
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.host import check_subnet_kept

CLUSTER = """
backend: host-gw
network: 10.32.0.0/16
hosts:
  - {name: a, address: 192.168.1.1}
  - {name: b, address: 192.168.1.2}
"""
INSERTED = """
backend: host-gw
network: 10.32.0.0/16
hosts:
  - {name: c, address: 192.168.1.3}
  - {name: a, address: 192.168.1.1}
  - {name: b, address: 192.168.1.2}
"""


def context(cluster, host: str) -> HostContext:  # type: ignore[no-untyped-def]
    return HostContext(
        cluster_name=cluster.name, backend=cluster.backend, host=host,
        address=cluster.host(host).address, iface="eth0", subnet=cluster.subnet_of(host),
        network=cluster.container_network(), gateway=cluster.gateway_of(host),
        prefixlen=cluster.container_prefixlen(), bridge=cluster.bridge_name(),
        underlay_mtu=1500, mtu=1500, masquerade=False,
    )


def applied_by(text: str, host: str) -> dict:
    cluster = parse_cluster(yaml.safe_load(text))
    return {"version": 1, "host": host, "context": context(cluster, host).to_json()}


def test_first_apply_and_unchanged_subnet_pass() -> None:
    cluster = parse_cluster(yaml.safe_load(CLUSTER))
    check_subnet_kept(cluster, None, context(cluster, "a"))
    check_subnet_kept(cluster, {}, context(cluster, "a"))
    check_subnet_kept(cluster, applied_by(CLUSTER, "a"), context(cluster, "a"))
    appended = parse_cluster(yaml.safe_load(CLUSTER + "  - {name: c, address: 192.168.1.3}\n"))
    check_subnet_kept(appended, applied_by(CLUSTER, "b"), context(appended, "b"))


def test_inserted_host_moves_a_subnet_and_apply_refuses() -> None:
    cluster = parse_cluster(yaml.safe_load(INSERTED))
    assert cluster.subnet_of("a") == IPv4Network("10.32.1.0/24")  # was 10.32.0.0/24
    with pytest.raises(ConfigError) as info:
        check_subnet_kept(cluster, applied_by(CLUSTER, "a"), context(cluster, "a"))
    assert str(info.value) == (
        "hosts[1].subnet: the cluster file now gives host a 10.32.1.0/24, but it was applied with "
        "10.32.0.0/24 (hosts inserted, removed or reordered before it, or network changed); keep it "
        "by pinning 'subnet: 10.32.0.0/24' on host a (and adding new hosts at the end of the list), "
        "or run `crossnet reset` first to renumber this host"
    )
    assert info.value.exit_code == 2


def test_the_suggested_fixes_pass() -> None:
    # the new host at the end instead of the front
    moved = parse_cluster(yaml.safe_load(CLUSTER + "  - {name: c, address: 192.168.1.3}\n"))
    for host in ("a", "b"):
        check_subnet_kept(moved, applied_by(CLUSTER, host), context(moved, host))
    # or pins on the old subnets, with the inserted host pinned out of their way
    pinned = parse_cluster(yaml.safe_load(
        INSERTED.replace("192.168.1.3}", "192.168.1.3, subnet: 10.32.7.0/24}")
        .replace("192.168.1.1}", "192.168.1.1, subnet: 10.32.0.0/24}")
    ))
    assert pinned.subnet_of("b") == IPv4Network("10.32.1.0/24")
    for host in ("a", "b"):
        check_subnet_kept(pinned, applied_by(CLUSTER, host), context(pinned, host))
    assert pinned.gateway_of("a") == IPv4Address("10.32.0.1")
