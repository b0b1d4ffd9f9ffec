"""Cluster file parsing and validation (crossnet.config)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from crossnet.config import (
    BACKENDS,
    Cluster,
    HostSpec,
    dump_cluster,
    load_cluster,
    parse_cluster,
)
from crossnet.errors import ConfigError

HERE = Path(__file__).parent
REPO = HERE.parents[1]
BAD_DIR = HERE / "bad_clusters"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))

VXLAN3 = """
backend: vxlan
network: 10.32.0.0/16
hosts:
  - {name: h1, address: 192.168.1.1}
  - {name: h2, address: 192.168.1.2, iface: ens3}
  - {name: h3, address: 192.168.1.3}
"""

TUTORIAL_BRIDGE = """
backend: bridge
lan: {cidr: 10.211.55.0/24, gateway: 10.211.55.1}
hosts:
  - {name: host1, address: 10.211.55.10, iface: eth0}
  - {name: host2, address: 10.211.55.20, iface: eth0}
"""


def parse(text: str) -> Cluster:
    return parse_cluster(yaml.safe_load(text), source="cluster.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def names_field(message: str, field: str) -> bool:
    """The message reports a problem for exactly this field path."""
    return re.search(rf"(^|: |; ){re.escape(field)}: ", message) is not None


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message


# --------------------------------------------------------------------------- good files


def test_three_host_vxlan_cluster() -> None:
    c = parse(VXLAN3)
    assert c.backend == "vxlan" and c.name == "crossnet"
    assert c.container_network() == IPv4Network("10.32.0.0/16")
    assert c.host_subnets() == {
        "h1": IPv4Network("10.32.0.0/24"),
        "h2": IPv4Network("10.32.1.0/24"),
        "h3": IPv4Network("10.32.2.0/24"),
    }
    assert c.subnet_of("h2") == IPv4Network("10.32.1.0/24")
    assert c.gateway_of("h3") == IPv4Address("10.32.2.1")
    assert c.container_prefixlen() == 24
    assert c.bridge_name() == "cn0"
    assert c.host("h2").iface == "ens3" and c.host("h1").iface == "eth0"
    assert [h.name for h in c.peers_of("h2")] == ["h1", "h3"]
    assert c.vxlan.vni == 1 and c.vxlan.port == 4789
    assert c.mtu is None and c.masquerade is False and c.lan is None


def test_tutorial_bridge_cluster() -> None:
    c = parse(TUTORIAL_BRIDGE)
    assert c.lan is not None and c.lan.range_len == 26  # default: /24 + 2
    assert c.container_network() == IPv4Network("10.211.55.0/24")
    # exactly the manual tutorial's --fixed-cidr split
    assert c.subnet_of("host1") == IPv4Network("10.211.55.64/26")
    assert c.subnet_of("host2") == IPv4Network("10.211.55.128/26")
    assert c.gateway_of("host1") == IPv4Address("10.211.55.10")
    assert c.gateway_of("host2") == IPv4Address("10.211.55.20")
    assert c.container_prefixlen() == 24
    assert c.bridge_name() == "br0"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "bridge"])
def test_every_overlay_backend_accepted(backend: str) -> None:
    c = parse(VXLAN3.replace("backend: vxlan", f"backend: {backend}"))
    assert c.backend == backend and len(c.host_subnets()) == 3


def test_explicit_options() -> None:
    c = parse(
        VXLAN3
        + "mtu: 9000\nmasquerade: true\nbridge: cbr7\nsubnet_len: 26\n"
        + "vxlan: {vni: 16777215, port: 8472}\nunderlay_networks: [192.168.0.0/16]\n"
    )
    assert c.mtu == 9000 and c.masquerade and c.bridge_name() == "cbr7"
    assert c.vxlan.vni == 16_777_215 and c.vxlan.port == 8472
    assert c.subnet_of("h2") == IPv4Network("10.32.0.64/26")
    assert c.underlay_networks == [IPv4Network("192.168.0.0/16")]


def test_subnets_carved_in_file_order_earlier_pins_avoided() -> None:
    c = parse(
        """
backend: host-gw
network: 10.32.0.0/16
hosts:
  - {name: b, address: 10.0.0.2, subnet: 10.32.0.0/24}
  - {name: a, address: 10.0.0.1}
  - {name: d, address: 10.0.0.4, subnet: 10.32.9.0/24}
  - {name: c, address: 10.0.0.3}
"""
    )
    assert c.host_subnets() == {
        "b": IPv4Network("10.32.0.0/24"),
        "a": IPv4Network("10.32.1.0/24"),
        "d": IPv4Network("10.32.9.0/24"),
        "c": IPv4Network("10.32.2.0/24"),
    }


def test_appending_a_pin_on_an_existing_subnet_is_an_error_not_a_move() -> None:
    """The audit's case: a host appended with `subnet: 10.32.0.0/24` used to move h1
    and h2 (pins were reserved first); now it is rejected, naming the new host's pin."""
    message = error_of(VXLAN3 + "  - {name: h4, address: 192.168.1.4, subnet: 10.32.0.0/24}\n")
    assert message == (
        "cluster.yaml: hosts[3].subnet: 10.32.0.0/24 is already the subnet of hosts[0] 'h1': "
        "hosts without a pin take the lowest free subnet in file order, regardless of later pins"
    )
    # a pin on a free subnet is fine and moves nobody
    before = parse(VXLAN3).host_subnets()
    after = parse(VXLAN3 + "  - {name: h4, address: 192.168.1.4, subnet: 10.32.3.0/24}\n").host_subnets()
    assert {k: after[k] for k in before} == before


def test_bridge_appending_a_host_inside_an_existing_range_is_an_error_not_a_move() -> None:
    roomy = TUTORIAL_BRIDGE.replace("gateway: 10.211.55.1}", "gateway: 10.211.55.1, range_len: 27}")
    before = parse(roomy).host_subnets()
    assert before == {"host1": IPv4Network("10.211.55.32/27"), "host2": IPv4Network("10.211.55.64/27")}
    message = error_of(roomy + "  - {name: host3, address: 10.211.55.40}\n")
    assert message == (
        "cluster.yaml: hosts[2].address: 10.211.55.40 is inside the container range "
        "10.211.55.32/27 of hosts[0] 'host1' (ranges are carved in file order); "
        "use an address outside it"
    )
    # with its address outside the existing ranges: nobody moves
    after = parse(roomy + "  - {name: host3, address: 10.211.55.30}\n").host_subnets()
    assert {k: after[k] for k in before} == before
    assert after["host3"] == IPv4Network("10.211.55.96/27")


def test_appending_a_host_keeps_existing_subnets() -> None:
    before = parse(VXLAN3).host_subnets()
    after = parse(VXLAN3 + "  - {name: h4, address: 192.168.1.4}\n").host_subnets()
    assert {k: after[k] for k in before} == before
    assert after["h4"] == IPv4Network("10.32.3.0/24")


def test_bridge_pinned_range_and_explicit_range_len() -> None:
    c = parse(
        """
backend: bridge
lan: {cidr: 10.211.55.0/24, gateway: 10.211.55.1, range_len: 27}
hosts:
  - {name: host1, address: 10.211.55.10}
  - {name: host2, address: 10.211.55.20, subnet: 10.211.55.224/27}
  - {name: host3, address: 10.211.55.30}
"""
    )
    assert c.host_subnets() == {
        "host1": IPv4Network("10.211.55.32/27"),  # .0/27 holds .1 .10 .20 .30
        "host2": IPv4Network("10.211.55.224/27"),  # pinned (may hold the broadcast)
        "host3": IPv4Network("10.211.55.64/27"),
    }


def test_unknown_host() -> None:
    c = parse(VXLAN3)
    with pytest.raises(ConfigError, match=r"^unknown host 'zz' \(hosts: h1, h2, h3\)$"):
        c.host("zz")
    with pytest.raises(ConfigError, match="unknown host"):
        c.subnet_of("zz")
    with pytest.raises(ConfigError, match="unknown host"):
        c.peers_of("zz")


def test_to_dict_round_trips() -> None:
    for text in (VXLAN3, TUTORIAL_BRIDGE):
        c = parse(text)
        data = c.to_dict()
        assert yaml.safe_load(yaml.safe_dump(data)) == data  # JSON/YAML-able
        again = parse_cluster(data)
        assert again == c and again.host_subnets() == c.host_subnets()


def test_dump_and_load(tmp_path: Path) -> None:
    c = parse(TUTORIAL_BRIDGE)
    path = tmp_path / "cluster.yaml"
    dump_cluster(c, path)
    assert load_cluster(path) == c


def test_direct_construction_validates() -> None:
    c = Cluster(
        backend="vxlan",
        network=IPv4Network("10.32.0.0/16"),
        hosts=[HostSpec(name="a", address=IPv4Address("10.0.0.1"))],
    )
    assert c.subnet_of("a") == IPv4Network("10.32.0.0/24")


@pytest.mark.parametrize("name", ["vxlan.yaml", "bridge.yaml"])
def test_examples_load(name: str) -> None:
    c = load_cluster(REPO / "examples" / name)
    assert len(c.host_subnets()) == len(c.hosts) >= 2


def test_example_bridge_is_the_tutorial() -> None:
    c = load_cluster(REPO / "examples" / "bridge.yaml")
    assert c.lan is not None
    assert (c.lan.cidr, c.lan.gateway) == (
        IPv4Network("10.211.55.0/24"),
        IPv4Address("10.211.55.1"),
    )
    assert [(h.name, str(h.address), h.iface) for h in c.hosts] == [
        ("host1", "10.211.55.10", "eth0"),
        ("host2", "10.211.55.20", "eth0"),
    ]
    assert c.subnet_of("host1") == IPv4Network("10.211.55.64/26")
    assert c.subnet_of("host2") == IPv4Network("10.211.55.128/26")


# --------------------------------------------------------------------------- bad files


def _expectation(path: Path) -> tuple[str, str]:
    head = path.read_text().splitlines()[:2]
    field = head[0].removeprefix("# field: ")
    message = head[1].removeprefix("# message: ")
    return field, message


def test_enough_bad_fixtures() -> None:
    assert len(BAD_FILES) >= 12


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_cluster_file(path: Path) -> None:
    field, text = _expectation(path)
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    message = str(info.value)
    assert_one_line(message)
    assert message.startswith(f"{path}: "), message
    assert names_field(message, field), f"{field!r} not named in: {message}"
    assert text in message, message
    assert info.value.exit_code == 2


def test_several_errors_joined_on_one_line() -> None:
    message = error_of(
        """
backend: vxlan
network: 10.32.0.0/16
mtu: 10
vxlan: {vni: 0}
hosts:
  - {name: h1, address: 192.168.1.1, colour: red}
"""
    )
    assert_one_line(message)
    for field in ("mtu", "vxlan.vni", "hosts[0].colour"):
        assert names_field(message, field), message
    assert message.count("; ") == 2


def test_duplicate_address_message_exact() -> None:
    message = error_of(
        """
backend: vxlan
network: 10.32.0.0/16
hosts:
  - {name: h1, address: 10.0.0.2}
  - {name: h2, address: 10.0.0.2}
"""
    )
    assert message == (
        "cluster.yaml: hosts[1].address: duplicate address 10.0.0.2 (also used by hosts[0] 'h1')"
    )


def test_wrong_types_are_named() -> None:
    message = error_of("backend: vxlan\nnetwork: 10.32.0.0/16\nhosts: [just-a-string]\n")
    assert names_field(message, "hosts[0]") and "expected a mapping" in message
    message = error_of(VXLAN3 + "subnet_len: abc\n")
    assert names_field(message, "subnet_len")


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^cluster: expected a mapping"):
        parse_cluster(["backend", "vxlan"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: no such file$"):
        load_cluster(path)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("backend: vxlan\nnetwork: 10.32.0.0/16\nhosts:\n  - name: [h1\n")
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    message = str(info.value)
    assert_one_line(message)
    assert message.startswith(f"{path}: line ") and "invalid YAML" in message


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("backend: vxlan\nnetwork: 10.32.0.0/16\nbackend: bridge\nhosts: []\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: .*duplicate key 'backend'"):
        load_cluster(path)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "- a\n- b\n", "just text\n"])
def test_not_a_mapping(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*mapping"):
        load_cluster(path)


def test_subnets_cached_but_never_stale() -> None:
    c = parse(VXLAN3)
    assert c.host_subnets() is not c.host_subnets()  # callers get a copy
    moved = c.model_copy(update={"hosts": c.hosts[1:]})
    assert moved.subnet_of("h2") == IPv4Network("10.32.0.0/24")
    assert c.subnet_of("h2") == IPv4Network("10.32.1.0/24")
