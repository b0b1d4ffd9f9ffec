"""crossnet.backends is the one list of backend names: config, the store, the lab and
the benchmarks derive theirs from it, and listing names imports no backend module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crossnet import backends, config, store
from crossnet.backends.base import Backend
from crossnet.errors import ConfigError
from crossnet.lab.topology import LabOptions


def test_every_registered_name_loads_its_backend():
    assert backends.backend_names() == ("bridge", "host-gw", "vxlan", "ovs-gre", "ovs-vxlan", "wireguard", "auto")
    for name in backends.backend_names():
        b = backends.get_backend(name)
        assert Backend in type(b).__mro__
        assert b.name == name


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError, match=r"backend: unknown backend 'nope' \(choose from bridge, host-gw, vxlan"):
        backends.get_backend("nope")


def test_lists_elsewhere_derive_from_the_registry():
    assert config.BACKENDS == backends.backend_names()
    assert store.STORE_BACKENDS == backends.store_backend_names() == ("host-gw", "vxlan", "ovs-gre", "ovs-vxlan", "wireguard", "auto")
    assert backends.lan_backend_names() == ("bridge",)
    assert set(backends.store_backend_names()) | set(backends.lan_backend_names()) == set(backends.BACKENDS)


def test_etcd_init_offers_the_registry_s_store_backends():
    """`crossnet etcd init --backend` took its choices from a list of its own."""
    from crossnet.cli.agent import etcd_init
    from crossnet.netmodel import BACKENDS, STORE_BACKENDS

    choices = next(p.type.choices for p in etcd_init.params if p.name == "backend")
    assert tuple(choices) == backends.store_backend_names() == STORE_BACKENDS
    assert BACKENDS == backends.backend_names()


def test_lan_range_backends_need_the_cluster_file():
    with pytest.raises(ConfigError, match=r"backend: 'bridge' is not supported with a store \(bridge needs the static"):
        store.NetworkConfig(network="10.32.0.0/16", backend="bridge")
    assert config.parse_cluster({
        "name": "c", "backend": "bridge", "lan": {"cidr": "192.168.0.0/24", "gateway": "192.168.0.1"},
        "hosts": [{"name": "h1", "address": "192.168.0.10"}],
    }).is_bridge
    assert not config.parse_cluster({
        "name": "c", "backend": "vxlan", "network": "10.32.0.0/16",
        "hosts": [{"name": "h1", "address": "192.168.0.10"}],
    }).is_bridge


def test_lab_checks_backends_against_the_registry():
    with pytest.raises(ConfigError, match=r"--backend: unknown backend 'nope' \(choose from bridge, host-gw, vxlan, "
                                          r"ovs-gre, ovs-vxlan, wireguard, auto\)"):
        LabOptions(backend="nope").validate()
    with pytest.raises(ConfigError, match=r"--backend bridge needs --underlay l2"):
        LabOptions(backend="bridge", underlay="l3").validate()
    for name in backends.backend_names():
        if name not in backends.lan_backend_names():
            LabOptions(backend=name, underlay="l3").validate()


def test_protocol_defaults_instead_of_optional_methods():
    """status_info and gw_mac exist on every backend (callers never probe with getattr);
    only OVS derives a peer's gateway MAC and adds status fields."""
    for name in ("bridge", "host-gw", "vxlan"):
        b = backends.get_backend(name)
        assert b.status_info(None, None) == {}
        assert b.gw_mac(None, None) is None
    assert type(backends.get_backend("ovs-gre")).status_info is not Backend.status_info
    assert type(backends.get_backend("ovs-gre")).gw_mac is not Backend.gw_mac


def test_listing_names_imports_no_backend_module():
    """config and store import the registry: it must stay cheap (no backend module, no pyroute2)."""
    code = ("import sys, json; import crossnet.config, crossnet.store; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('crossnet.backends.', 'pyroute2')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
