"""Cluster file parsing and validation (crossnet.config)."""

from __future__ import annotations

import json
import re
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

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

WG_KEY = "A" * 43 + "="  # 32 zero bytes, base64

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
    text = VXLAN3.replace("backend: vxlan", f"backend: {backend}")
    if backend == "wireguard":  # every host names its public key
        text = text.replace("}\n", f", wireguard_key: '{WG_KEY}'}}\n")
    c = parse(text)
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
        "10.211.55.32/27 of hosts[0] 'host1' (ranges are carved in file order, "
        "use an address outside it)"
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


# --------------------------------------------------------------------------- property tests

OVERLAY_BACKENDS = [b for b in BACKENDS if b != "bridge"]


@st.composite
def overlay_cluster(draw: st.DrawFn) -> dict:
    """A valid overlay cluster: pins in the upper half of the network, at most half
    the blocks for unpinned hosts (they take the lowest ones), underlay in 192.168/16."""
    base = draw(st.integers(12, 24))
    index = draw(st.integers(0, (1 << (base - 8)) - 1))  # which /base of 10.0.0.0/8
    network = IPv4Network((IPv4Address("10.0.0.0") + (index << (32 - base)), base))
    subnet_len = draw(st.integers(base + 1, min(base + 6, 30)))
    blocks = list(network.subnets(new_prefix=subnet_len))
    half = len(blocks) // 2
    n = draw(st.integers(1, min(8, half + 1)))
    addresses = draw(st.lists(st.integers(1, 65534), min_size=n, max_size=n, unique=True))
    pin_blocks = draw(st.lists(st.sampled_from(blocks[half:]), unique=True, max_size=n))
    hosts = []
    for i, offset in enumerate(addresses):
        host = {"name": f"host-{i}", "address": str(IPv4Address("192.168.0.0") + offset)}
        if draw(st.booleans()):
            host["iface"] = draw(st.sampled_from(["eth0", "ens3", "enp0s8", "bond0.10"]))
        hosts.append(host)
    for pin in pin_blocks:
        draw(st.sampled_from(hosts))["subnet"] = str(pin)
    assume(sum("subnet" not in h for h in hosts) <= half)
    data = {"backend": draw(st.sampled_from(OVERLAY_BACKENDS)), "network": str(network),
            "subnet_len": subnet_len, "hosts": hosts}
    optional = {
        "name": st.sampled_from(["crossnet", "prod", "lab-1"]),
        "mtu": st.integers(576, 65535),
        "masquerade": st.booleans(),
        "bridge": st.sampled_from(["cn0", "cbr7"]),
        "vxlan": st.fixed_dictionaries({"vni": st.integers(1, 16_777_215), "port": st.integers(1, 65535)}),
        "underlay_networks": st.lists(st.sampled_from(["192.168.0.0/16", "172.16.0.0/12", "100.64.0.0/10"]), unique=True),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            data[key] = draw(strategy)
    return data


@st.composite
def bridge_cluster(draw: st.DrawFn) -> dict:
    """A valid bridge cluster: the hosts and the gateway in the LAN's first range (which
    holds the network address, so no range is ever carved there), pins in the upper
    half, the unpinned hosts fit in the lower half (they take the lowest free ranges)."""
    prefix = draw(st.integers(20, 26))
    index = draw(st.integers(0, min(15, (1 << (prefix - 16)) - 1)))  # which /prefix of 10.211.0.0/16
    cidr = IPv4Network((IPv4Address("10.211.0.0") + (index << (32 - prefix)), prefix))
    range_len = draw(st.integers(prefix + 2, min(prefix + 5, 30)))
    ranges = list(cidr.subnets(new_prefix=range_len))
    first = ranges[0]
    half = len(ranges) // 2
    n = draw(st.integers(1, min(6, first.num_addresses - 3)))
    offsets = draw(st.lists(st.integers(2, first.num_addresses - 1), min_size=n, max_size=n, unique=True))
    hosts = [{"name": f"h{i}", "address": str(first[o])} for i, o in enumerate(offsets)]
    for pin in draw(st.lists(st.sampled_from(ranges[half:]), unique=True, max_size=n)):
        draw(st.sampled_from(hosts))["subnet"] = str(pin)
    assume(sum("subnet" not in h for h in hosts) <= half - 1)
    lan = {"cidr": str(cidr), "gateway": str(first[1])}
    if range_len != prefix + 2 or draw(st.booleans()):
        lan["range_len"] = range_len
    return {"backend": "bridge", "lan": lan, "hosts": hosts}


any_cluster = st.one_of(overlay_cluster(), bridge_cluster())


def fields_of(message: str) -> list[str]:
    """The field of every problem in a one-line error (source prefix removed)."""
    body = message.split(": ", 1)[1]
    return [part.split(": ", 1)[0] for part in body.split("; ")]


@settings(max_examples=200, deadline=None)
@given(any_cluster)
def test_generated_valid_clusters_validate_and_round_trip(data: dict) -> None:
    c = parse_cluster(json.loads(json.dumps(data)), source="cluster.yaml")
    subnets = c.host_subnets()
    assert list(subnets) == [h["name"] for h in data["hosts"]]
    for h in data["hosts"]:
        if "subnet" in h:
            assert subnets[h["name"]] == IPv4Network(h["subnet"])
    nets = list(subnets.values())
    assert all(n.subnet_of(c.container_network()) for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    # dict -> model -> dict -> model, and YAML file -> model
    again = parse_cluster(c.to_dict())
    assert again == c and again.to_dict() == c.to_dict() and again.host_subnets() == subnets
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.yaml"
        dump_cluster(c, path)
        loaded = load_cluster(path)
    assert loaded == c and loaded.host_subnets() == subnets


def _mutations(data: dict):  # type: ignore[no-untyped-def]
    """(field the error must name, mutate) pairs that make a valid cluster invalid."""
    n = len(data["hosts"])
    bridge = data["backend"] == "bridge"
    out = []
    if n >= 2:
        out.append(("hosts[{j}].name", lambda d, i, j: d["hosts"][j].update(name=d["hosts"][i]["name"])))
        out.append(("hosts[{j}].address", lambda d, i, j: d["hosts"][j].update(address=d["hosts"][i]["address"])))
        # overlapping pins (bridge: overlapping LAN ranges): a later host pinned onto an earlier one's block
        out.append(("hosts[{j}].subnet", "pin-on-earlier"))
        # too long a subnet_len / range_len for the number of hosts, pins dropped
        out.append(("lan.range_len" if bridge else "subnet_len", "too-few-blocks"))
    if bridge:
        out.append(("lan.cidr", lambda d, i, j: d.setdefault("underlay_networks", []).append(
            str(IPv4Network(d["lan"]["cidr"]).supernet(new_prefix=16)))))
        out.append(("lan.range_len", lambda d, i, j: d["lan"].update(range_len=33)))
    else:
        # the container network overlapping the underlay: an underlay network, or a host address
        out.append(("network", lambda d, i, j: d.setdefault("underlay_networks", []).append(
            str(IPv4Network(d["network"]).subnets(new_prefix=min(IPv4Network(d["network"]).prefixlen + 1, 30)).__next__()))))
        out.append(("network", lambda d, i, j: d["hosts"][j].update(address=str(IPv4Network(d["network"])[5]))))
        out.append(("subnet_len", lambda d, i, j: d.update(subnet_len=31)))
    return out


@settings(max_examples=300, deadline=None)
@given(any_cluster, st.data())
def test_generated_invalid_clusters_name_the_field(data: dict, draw) -> None:  # type: ignore[no-untyped-def]
    c = parse_cluster(json.loads(json.dumps(data)))
    field, mutate = draw.draw(st.sampled_from(_mutations(data)))
    n = len(data["hosts"])
    j = draw.draw(st.integers(1, n - 1)) if n >= 2 else 0
    i = draw.draw(st.integers(0, j - 1)) if j else 0
    bad = json.loads(json.dumps(data))
    if mutate == "pin-on-earlier":
        bad["hosts"][j]["subnet"] = str(c.subnet_of(data["hosts"][i]["name"]))
    elif mutate == "too-few-blocks":
        for h in bad["hosts"]:
            h.pop("subnet", None)
        if data["backend"] == "bridge":
            cidr = IPv4Network(data["lan"]["cidr"])
            bad["lan"]["range_len"] = cidr.prefixlen + 1  # 2 ranges, the first holding the hosts
        else:
            network = IPv4Network(data["network"])
            bits = (n - 1).bit_length() - 1  # 2**bits < n
            bad["subnet_len"] = network.prefixlen + max(bits, 0)
            assume(bad["subnet_len"] > network.prefixlen)
    else:
        mutate(bad, i, j)
    with pytest.raises(ConfigError) as info:
        parse_cluster(bad, source="cluster.yaml")
    message = str(info.value)
    assert_one_line(message)
    assert names_field(message, field.format(j=j)), (field.format(j=j), message)


@st.composite
def appended_host(draw: st.DrawFn, data: dict, subnets: dict[str, IPv4Network]) -> dict:
    """Any new host: a fresh or taken name, an address anywhere it may be (bridge: in
    the LAN, often inside an existing range), no pin or a pin anywhere (often on an
    existing host's block)."""
    bridge = data["backend"] == "bridge"
    outer = IPv4Network(data["lan"]["cidr"] if bridge else data["network"])
    length = (data["lan"].get("range_len") or outer.prefixlen + 2) if bridge else data.get("subnet_len", 24)
    names = [h["name"] for h in data["hosts"]]
    name = draw(st.sampled_from(["newcomer"] * 4 + names[:1]))
    used = list(subnets.values())
    if bridge:
        area = draw(st.sampled_from([outer, *used]))
        address = area[draw(st.integers(0, area.num_addresses - 1))]
    else:
        address = IPv4Address("192.168.0.0") + draw(st.integers(1, 65534))
    host = {"name": name, "address": str(address)}
    blocks = list(outer.subnets(new_prefix=length))
    taken = [*used, *(IPv4Network(h["address"]) for h in data["hosts"]), IPv4Network(address)]
    if bridge:
        taken += [IPv4Network(data["lan"]["gateway"]), IPv4Network(outer[0]), IPv4Network(outer[-1])]
    free = [b for b in blocks if not any(b.overlaps(t) for t in taken)]
    pins = [st.none(), st.sampled_from(blocks), st.sampled_from(used)] + ([st.sampled_from(free)] if free else [])
    pin = draw(st.one_of(*pins))  # none, anywhere, an existing host's, a free one
    if pin is not None:
        host["subnet"] = str(pin)
    return host


@settings(max_examples=300, deadline=None)
@given(any_cluster, st.data())
def test_appending_any_host_keeps_every_subnet_or_names_the_new_host(data: dict, draw) -> None:  # type: ignore[no-untyped-def]
    before = parse_cluster(json.loads(json.dumps(data))).host_subnets()
    new = draw.draw(appended_host(data, before))
    n = len(data["hosts"])
    grown = json.loads(json.dumps(data))
    grown["hosts"].append(new)
    try:
        after = parse_cluster(grown, source="cluster.yaml").host_subnets()
    except ConfigError as exc:
        space = "lan.range_len" if data["backend"] == "bridge" else "subnet_len"
        for field in fields_of(str(exc)):  # the newcomer's field, or: no room for one more host
            assert field.startswith(f"hosts[{n}].") or field == space, str(exc)
        return
    assert {name: after[name] for name in before} == before
    if "subnet" in new:
        assert after[new["name"]] == IPv4Network(new["subnet"])
