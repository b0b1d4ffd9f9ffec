"""One network model (crossnet.netmodel): the store's network config is the cluster
file's network settings (same pydantic models, same checks, same messages), with the
store's JSON format unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet import backends
from crossnet.config import Cluster, parse_cluster
from crossnet.errors import ConfigError
from crossnet.netmodel import NetworkConfig, NetworkSettings
from crossnet.store.static import StaticStore

# `<prefix>/config` values as crossnet wrote them before the network model was shared
# (generated with the NetworkConfig dataclass of commit 8980b44, json.dumps(sort_keys=True)
# as EtcdStore.init_config writes them): `crossnet etcd init` with its defaults, the lab,
# `crossnet launch`, and every field set.
TODAYS_RECORDS = [
    (
        '{"backend": "vxlan", "bridge": null, "masquerade": false, "mtu": null, "name": "crossnet", '
        '"network": "10.32.0.0/16", "subnet_len": 24, "ttl": 60, "vxlan": {"port": 4789, "vni": 1}, '
        '"wireguard": {"keepalive": 0, "port": 51820}}'
    ),
    (
        '{"backend": "host-gw", "bridge": null, "masquerade": false, "mtu": 1400, "name": "lab7", '
        '"network": "10.33.0.0/16", "subnet_len": 26, "ttl": 5, "vxlan": {"port": 4789, "vni": 1}}'
    ),
    (
        '{"backend": "ovs-vxlan", "bridge": null, "masquerade": false, "mtu": null, "name": "crossnet", '
        '"network": "10.32.0.0/12", "subnet_len": 24, "ttl": 30, "vxlan": {"port": 4789, "vni": 1}}'
    ),
    (
        '{"backend": "wireguard", "bridge": "cnbr7", "masquerade": true, "mtu": null, "name": "wg", '
        '"network": "10.40.0.0/16", "subnet_len": 24, "ttl": 60, "vxlan": {"port": 8472, "vni": 42}, '
        '"wireguard": {"device": "wg9", "implementation": "userspace", "keepalive": 25, "port": 6000}}'
    ),
]


@pytest.mark.parametrize("text", TODAYS_RECORDS)
def test_todays_records_load_and_are_written_back_byte_for_byte(text):
    cfg = NetworkConfig.from_json(json.loads(text), source="etcd /crossnet/config")
    assert json.dumps(cfg.to_json(), sort_keys=True) == text
    assert NetworkConfig.from_json(cfg.to_json()) == cfg


def test_what_the_agent_reads_from_a_record():
    cfg = NetworkConfig.from_json(json.loads(TODAYS_RECORDS[3]))
    assert (str(cfg.network), cfg.subnet_len, cfg.backend, cfg.ttl, cfg.masquerade, cfg.mtu) == (
        "10.40.0.0/16", 24, "wireguard", 60, True, None)
    assert (cfg.vni, cfg.port, cfg.bridge_name) == (42, 8472, "cnbr7")
    assert dict(cfg.wireguard) == {"port": 6000, "device": "wg9", "keepalive": 25, "implementation": "userspace"}
    assert NetworkConfig(network="10.32.0.0/16").bridge_name == "cn0"


def test_null_sections_mean_the_defaults():
    cfg = NetworkConfig.from_json({"network": "10.32.0.0/16", "vxlan": None, "wireguard": None})
    assert (cfg.vni, cfg.port) == (1, 4789)
    assert "wireguard" not in cfg.to_json()


def test_a_cluster_file_and_its_store_config_are_one_model(tmp_path: Path):
    """The static store's config is the file's NetworkSettings (and, like before, the
    WireGuard settings only for backend wireguard)."""
    assert issubclass(Cluster, NetworkSettings) and issubclass(NetworkConfig, NetworkSettings)
    f = tmp_path / "c.yaml"
    f.write_text("name: t6\nbackend: wireguard\nnetwork: 10.32.0.0/16\nvxlan: {vni: 7}\nwireguard: {port: 6000}\n"
                 "hosts:\n  - {name: a, address: 192.0.2.1}\n")
    assert json.dumps(StaticStore(f).get_config().to_json(), sort_keys=True) == (
        '{"backend": "wireguard", "bridge": null, "masquerade": false, "mtu": null, "name": "t6", '
        '"network": "10.32.0.0/16", "subnet_len": 24, "ttl": 60, "vxlan": {"port": 4789, "vni": 7}, '
        '"wireguard": {"device": "cnwg0", "implementation": "auto", "keepalive": 0, "port": 6000}}')
    f.write_text("name: t6\nbackend: vxlan\nnetwork: 10.32.0.0/16\nmtu: 9000\nbridge: cnbr1\nmasquerade: true\n"
                 "wireguard: {port: 6000}\nhosts:\n  - {name: a, address: 192.0.2.1}\n")
    assert json.dumps(StaticStore(f).get_config().to_json(), sort_keys=True) == (
        '{"backend": "vxlan", "bridge": "cnbr1", "masquerade": true, "mtu": 9000, "name": "t6", '
        '"network": "10.32.0.0/16", "subnet_len": 24, "ttl": 60, "vxlan": {"port": 4789, "vni": 1}}')


CLUSTER = {"backend": "vxlan", "network": "10.32.0.0/16", "hosts": [{"name": "h1", "address": "192.0.2.1"}]}
STORE = {"backend": "vxlan", "network": "10.32.0.0/16"}


def _with(data: dict, path: str, value: object) -> dict:
    out = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


@pytest.mark.parametrize(("path", "value"), [
    ("mtu", 100),
    ("mtu", "big"),
    ("name", ""),
    ("backend", "nope"),
    ("network", "10.32.0.1/16"),
    ("network", "banana"),
    ("subnet_len", 16),
    ("subnet_len", 31),
    ("bridge", "cnvx1"),
    ("bridge", "a b"),
    ("bridge", "x" * 16),
    ("masquerade", "maybe"),
    ("vxlan", [1]),
    ("vxlan.vni", 0),
    ("vxlan.port", 70000),
    ("vxlan.colour", "red"),
    ("wireguard", "x"),
    ("wireguard.port", 0),
    ("wireguard.keepalive", -1),
    ("wireguard.device", "a/b"),
    ("wireguard.implementation", "magic"),
    ("wireguard.psk", "x"),
    ("colour", "red"),
])
def test_a_bad_field_gets_the_same_message_from_the_file_and_from_the_store(path, value):
    with pytest.raises(ConfigError) as from_file:
        parse_cluster(_with(CLUSTER, path, value), source="c.yaml")
    with pytest.raises(ConfigError) as from_store:
        NetworkConfig.from_json(_with(STORE, path, value), source="etcd /crossnet/config")
    file_msg = str(from_file.value).removeprefix("c.yaml: ")
    store_msg = str(from_store.value).removeprefix("etcd /crossnet/config: ")
    assert store_msg.startswith(f"{path}: ")  # names the field
    if path == "backend":  # the store names its own choices (no bridge: it needs the cluster file)
        assert file_msg == f"backend: unknown backend 'nope' (choices: {', '.join(backends.backend_names())})"
        assert store_msg == ("backend: 'nope' is not supported with a store; "
                             f"choose from {', '.join(backends.store_backend_names())}")
    elif path == "colour":  # the allowed keys differ (hosts / ttl)
        assert file_msg.startswith("colour: unknown key (allowed: name, backend, network, subnet_len, mtu,")
        assert store_msg.startswith("colour: unknown key (allowed: name, backend, network, subnet_len, mtu,")
    else:
        assert store_msg == file_msg


def test_a_malformed_vxlan_section_is_a_config_error_not_a_crash():
    """Before: `"vxlan": [1]` in the store's record raised AttributeError out of the
    agent's config read (it only handles ConfigError/StoreError)."""
    with pytest.raises(ConfigError, match=r"^etcd /x/config: vxlan: expected a mapping, got \[1\]$"):
        NetworkConfig.from_json({"network": "10.32.0.0/16", "vxlan": [1]}, source="etcd /x/config")


def test_masquerade_no_means_no():
    """Before: `"masquerade": "no"` in a record turned NAT on (bool("no") is True)."""
    assert NetworkConfig.from_json({"network": "10.32.0.0/16", "masquerade": "no"}).masquerade is False
    assert NetworkConfig.from_json({"network": "10.32.0.0/16", "masquerade": True}).masquerade is True


def test_store_only_fields_and_rules():
    with pytest.raises(ConfigError, match=r"^config: ttl: 1 is out of range 2\.\.2147483647 seconds$"):
        NetworkConfig(network="10.32.0.0/16", ttl=1)
    with pytest.raises(ConfigError, match=r"^config: network: required$"):
        NetworkConfig.from_json({"backend": "vxlan"})
    with pytest.raises(ConfigError, match=r"^config: backend: 'bridge' is not supported with a store \(bridge needs"):
        NetworkConfig(network="10.32.0.0/16", backend="bridge")
    with pytest.raises(ConfigError, match=r"^etcd /x/config: expected a JSON object, got \[\]$"):
        NetworkConfig.from_json([], source="etcd /x/config")
    with pytest.raises(ConfigError, match=r"^config: subnet_len: 16 must be longer than the /16 of network "):
        NetworkConfig(network="10.32.0.0/16", subnet_len=16)


def _run(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), *argv],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "line"), [
    (["--vni", "0"], "--vni: 0 is out of range 1..16777215"),
    (["--port", "0"], "--port: 0 is out of range 1..65535"),
    (["--subnet-len", "8"], "--subnet-len: 8 must be longer than the /16 of network 10.32.0.0/16 and at most 30"),
    (["--mtu", "100", "--ttl", "1"], "--mtu: 100 is out of range 576..65535; --ttl: 1 is out of range 2..2147483647 seconds"),
    (["--name", ""], "--name: must be a non-empty string"),
])
def test_etcd_init_names_the_option(tmp_path, args, line):
    """Checked before etcd is contacted (nothing listens on port 9)."""
    out = _run("etcd", "init", "--etcd", "http://127.0.0.1:9", "--network", "10.32.0.0/16", *args, tmp_path=tmp_path)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [f"crossnet: error: {line}"])


def test_the_store_and_the_model_stay_light():
    """`crossnet.store` (mesh commands, `crossnet check`) loads no pydantic until the
    config is read; the agent's model loads no YAML and no cluster-file models."""
    code = ("import sys, json; import crossnet.store, crossnet.store.etcdclient; a = 'pydantic' in sys.modules; "
            "from crossnet.store import NetworkConfig; import crossnet.netmodel; "
            "print(json.dumps([a, 'pydantic' in sys.modules, 'yaml' in sys.modules, 'crossnet.config' in sys.modules,"
            " NetworkConfig is crossnet.netmodel.NetworkConfig]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, True, False, False, True]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "ovs-gre", "wireguard", "auto"])
def test_one_rule_gives_wireguard_and_auto_settings_to_every_path(backend):
    """WireGuard's settings for wireguard/auto, auto's for auto: the same from the cluster
    file (program.Settings.of_cluster), the store (of_config) and NetworkConfig.of."""
    from crossnet.program import Settings

    cfg = NetworkConfig(network="10.32.0.0/16", backend=backend, wireguard={"port": 51999},
                        auto={"encrypt": True} if backend == "auto" else {})
    wg, auto = cfg.transport_settings()
    assert bool(wg) == (backend in ("wireguard", "auto"))
    assert bool(auto) == (backend == "auto")
    if wg:
        assert wg["port"] == 51999
    if auto:
        assert auto["encrypt"] is True
    s = Settings.of_config(cfg)
    assert (s.wireguard, s.auto) == (wg, auto)
    of = NetworkConfig.of(cfg)
    assert of.transport_settings() == (wg, auto)
    assert (of.wireguard.model_dump() if wg else {}) == wg
