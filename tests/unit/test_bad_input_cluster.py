"""The cluster-file corpus: hundreds of bad cluster files, each refused with one line
`<file>: ...` (ConfigError, exit code 2) within seconds, never another exception; and
hypothesis fuzzing of the loader (random text, bytes and structures: a Cluster or a
ConfigError, nothing else).

The cases are data: tests/unit/bad_inputs/cluster_mutations.yaml (one field of a valid
cluster changed), tests/unit/bad_inputs/cluster_yaml.yaml (what the YAML loader itself
must refuse: syntax, tags, unhashable keys, depth, alias bombs, size, encodings) and
tests/unit/bad_clusters/*.yaml (tested by test_config.py). The same loader cases run
through the CLI in tests/e2e/test_bad_input_cli.py.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet.config import Cluster, load_cluster, parse_cluster
from crossnet.errors import ConfigError

HERE = Path(__file__).parent
DATA = HERE / "bad_inputs"
MUTATIONS = yaml.safe_load((DATA / "cluster_mutations.yaml").read_text())
YAML_CASES = yaml.safe_load((DATA / "cluster_yaml.yaml").read_text())
MAX_LINE = 4000  # an error is one readable line, however large the input
SECONDS = 10  # every case is refused quickly (an alias bomb took 42 s, then MemoryError)

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _STEP.findall(path)]


def _set(data: Any, path: str, value: Any, delete: bool = False) -> None:
    *parents, last = _steps(path)
    for step in parents:
        data = data[step]
    if delete:
        del data[last]
    else:
        data[last] = value


def mutation_cases() -> list:
    cases = []
    for base_name in ("overlay", "bridge"):
        base = MUTATIONS["bases"][base_name]
        for row in MUTATIONS[base_name]:
            path, value, field, message = (list(row) + [None, None])[:4]
            data = copy.deepcopy(base)
            _set(data, path, value)
            cases.append(pytest.param(data, field or path, message, id=f"{base_name}:{path}={value!r}"[:80]))
        for path, field, message in MUTATIONS[f"{base_name}_deletes"]:
            data = copy.deepcopy(base)
            _set(data, path, None, delete=True)
            cases.append(pytest.param(data, field, message, id=f"{base_name}:del {path}"))
    return cases


def materialize(case: dict, tmp_path: Path) -> Path:
    """The bad file of a cluster_yaml.yaml case."""
    if "path" in case:
        return Path(case["path"])
    target = tmp_path / f"{case['id']}.yaml"
    if "bytes_hex" in case:
        target.write_bytes(bytes.fromhex(case["bytes_hex"]))
    elif "generate" in case:
        g = case["generate"]
        if g.get("indent"):
            text = "".join(" " * i + g["unit"] + "\n" for i in range(g["count"])) + " " * g["count"] + g["tail"]
        else:
            text = g.get("head", "") + g["unit"] * g["count"] + g.get("close", "") * g["count"] + g.get("tail", "")
        target.write_text(text, encoding="utf-8")
    else:
        target.write_text(case["text"], encoding="utf-8", errors="surrogatepass")
    return target


def assert_refused(path: Path, message: str | None, field: str | None = None) -> str:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    elapsed = time.monotonic() - start
    text = str(info.value)
    assert "\n" not in text and "\r" not in text, text
    assert len(text) <= MAX_LINE, len(text)
    assert text.startswith(f"{path}: "), text
    assert info.value.exit_code == 2
    if message:
        assert message in text, text
    if field:
        assert re.search(rf"(^|[ ;]){re.escape(field)}(:|\[| )", text.removeprefix(f"{path}: ")), (field, text)
    assert elapsed < SECONDS, f"{elapsed:.1f}s"
    return text


def test_corpus_size() -> None:
    files = list((HERE / "bad_clusters").glob("*.yaml"))
    assert len(mutation_cases()) + len(YAML_CASES) + len(files) >= 250


@pytest.mark.parametrize(("data", "field", "message"), mutation_cases())
def test_mutated_cluster_refused(tmp_path: Path, data: dict, field: str, message: str | None) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert_refused(path, message, field)


@pytest.mark.parametrize("case", YAML_CASES, ids=lambda c: c["id"])
def test_loader_refuses(tmp_path: Path, case: dict) -> None:
    assert_refused(materialize(case, tmp_path), case["message"])


def test_many_errors_are_counted_not_listed(tmp_path: Path) -> None:
    case = next(c for c in YAML_CASES if c["id"] == "thousand_bad_hosts")
    text = assert_refused(materialize(case, tmp_path), None)
    assert re.search(r"\.\.\. and \d+ more$", text), text


def test_anchors_and_merge_keys_within_bounds_still_load(tmp_path: Path) -> None:
    """The bounds refuse bombs, not ordinary anchors: a host template merged into hosts."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "backend: vxlan\nnetwork: 10.32.0.0/16\nx-defaults: &d {iface: ens3}\n"
        "hosts:\n  - {<<: *d, name: h1, address: 192.168.1.1}\n  - {<<: *d, name: h2, address: 192.168.1.2}\n"
    )
    with pytest.raises(ConfigError, match="x-defaults: unknown key"):  # extra keys stay errors
        load_cluster(path)
    path.write_text(
        "backend: vxlan\nnetwork: 10.32.0.0/16\n"
        "hosts:\n  - &h1 {name: h1, address: 192.168.1.1, iface: &nic ens3}\n"
        "  - {name: h2, address: 192.168.1.2, iface: *nic}\n"
    )
    c = load_cluster(path)
    assert [h.iface for h in c.hosts] == ["ens3", "ens3"]


def test_depth_and_size_limits_are_exact(tmp_path: Path) -> None:
    from crossnet import config

    ok = tmp_path / "ok.yaml"
    # 64 levels: the top mapping + 63 nested lists is within the bound (refused by the schema)
    ok.write_text("hosts: " + "[" * 63 + "]" * 63 + "\n")
    with pytest.raises(ConfigError) as info:
        load_cluster(ok)
    assert "nested deeper" not in str(info.value)
    ok.write_text("backend: vxlan\n" + "#" * (config.MAX_BYTES - 16) + "\n")
    assert ok.stat().st_size == config.MAX_BYTES
    with pytest.raises(ConfigError) as info:
        load_cluster(ok)
    assert "larger than" not in str(info.value)


# ---------------------------------------------------------------------- fuzzing

FIELDS = ["name", "backend", "network", "subnet_len", "lan", "mtu", "masquerade", "bridge", "vxlan",
          "underlay_networks", "hosts", "cidr", "gateway", "range_len", "vni", "port", "address", "iface", "subnet"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.sampled_from(["vxlan", "bridge", "host-gw", "ovs-gre", "10.32.0.0/16", "10.211.55.0/24", "10.211.55.1",
                     "192.168.1.1", "eth0", "cnvx1", "br0", "cn0", "", "h1", "24", "::1", "1.2.3.4/33"]),
    st.text(max_size=20),
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=25,
)
CLUSTERISH = st.fixed_dictionaries(
    {},
    optional={k: STRUCTURES for k in ("name", "backend", "network", "subnet_len", "lan", "mtu", "masquerade",
                                      "bridge", "vxlan", "underlay_networks", "hosts")},
)
YAML_TOKENS = st.sampled_from([
    "backend: ", "vxlan", "bridge", "hosts:", "\n", "  ", "- ", "{", "}", "[", "]", ", ", ": ", "? ", "&a ", "*a",
    "!!int ", "!!str ", "!!binary ", "!!timestamp ", "!!set ", "!!python/object ", "!x ", "<<: ", "'", '"', "#",
    "---\n", "...\n", "%YAML 1.1\n", "\t", "|\n", ">\n", "~", "10.32.0.0/16", "name: h1", "address: 1.2.3.4",
    "network: ", "lan: ", "cidr: ", "vni: ", "iface: ", "abc", "0x1f", "1e400", "\\", "\0", "é",
])


def _outcome(path: Path) -> None:
    try:
        cluster = load_cluster(path)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) <= MAX_LINE and text.startswith(f"{path}: "), text
    else:
        assert isinstance(cluster, Cluster)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(tokens=st.lists(YAML_TOKENS, max_size=40))
def test_fuzz_yaml_token_soup(tmp_path: Path, tokens: list[str]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text("".join(tokens), encoding="utf-8")
    _outcome(path)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    _outcome(path)


@FUZZ
@given(data=CLUSTERISH)
def test_fuzz_structures_through_yaml(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _outcome(path)


@FUZZ
@given(data=STRUCTURES)
def test_fuzz_parse_cluster_any_structure(data: Any) -> None:
    try:
        parse_cluster(data, source="fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= MAX_LINE


def test_merge_key_values_are_overridden_not_duplicates(tmp_path: Path) -> None:
    """`<<: *d` then an explicit key of d: the explicit one wins (YAML merge), no 'duplicate key'."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "backend: vxlan\nnetwork: 10.32.0.0/16\nvxlan: &v {vni: 7, port: 4789}\n"
        "hosts:\n  - {name: h1, address: 192.168.1.1}\n"
    )
    assert load_cluster(path).vxlan.vni == 7
    from crossnet.config import load_yaml_text

    assert load_yaml_text(path, "d: &d {a: 1, b: 1}\nx: {<<: *d, b: 2}\n")["x"] == {"a": 1, "b": 2}


def _net(draw_addr: int, prefix: int) -> str:
    import ipaddress

    return str(ipaddress.IPv4Network((draw_addr, prefix), strict=False))


SMALL_ADDR = st.builds(lambda a, b: f"10.{a}.{b // 256}.{b % 256}", st.sampled_from([0, 32, 211]), st.integers(0, 1023))
SMALL_NET = st.builds(lambda a, b, p: _net((10 << 24) | (a << 16) | b, p),
                      st.sampled_from([0, 32, 211]), st.integers(0, 65535), st.integers(8, 32))
HOST_ADDR = st.one_of(SMALL_ADDR, st.builds(lambda b: f"192.168.1.{b}", st.integers(0, 255)),
                      st.builds(lambda b: f"10.211.55.{b}", st.integers(0, 255)))


LAN_ADDR = st.builds(lambda b: f"10.211.55.{b}", st.integers(0, 255))


def _hosts(address: st.SearchStrategy = HOST_ADDR) -> st.SearchStrategy:
    return st.lists(
        st.fixed_dictionaries(
            {"address": address},
            optional={"subnet": st.one_of(SMALL_NET, st.builds(lambda b, p: _net((10 << 24) | (211 << 16) | (55 << 8) | b, p),
                                                               st.integers(0, 255), st.integers(24, 30))),
                      "iface": st.sampled_from(["eth0", "ens3", "cn0", "br0", "cnvx1"])},
        ),
        min_size=1, max_size=6,
    ).map(lambda hosts: [dict(h, name=f"h{i}") for i, h in enumerate(hosts)])


OVERLAY = st.fixed_dictionaries(
    {"backend": st.sampled_from(["host-gw", "vxlan", "ovs-gre", "ovs-vxlan"]),
     "network": st.builds(lambda b, p: _net((10 << 24) | (32 << 16) | b, p), st.integers(0, 65535), st.integers(14, 26)),
     "hosts": _hosts()},
    optional={"subnet_len": st.integers(14, 31), "bridge": st.sampled_from(["br0", "cn0", "eth0", "cnvx1", "mybr"]),
              "underlay_networks": st.lists(SMALL_NET, max_size=2), "mtu": st.integers(500, 70000)},
)
BRIDGE = st.fixed_dictionaries(
    {"backend": st.just("bridge"),
     "lan": st.fixed_dictionaries(
         {"cidr": st.builds(lambda p: _net((10 << 24) | (211 << 16) | (55 << 8), p), st.integers(22, 28)),
          "gateway": st.builds(lambda b: f"10.211.55.{b}", st.integers(0, 255))},
         optional={"range_len": st.integers(22, 33)}),
     "hosts": _hosts(st.one_of(LAN_ADDR, LAN_ADDR, HOST_ADDR))},
    optional={"bridge": st.sampled_from(["br0", "cn0", "eth0", "cnvx1", "mybr"]),
              "underlay_networks": st.lists(SMALL_NET, max_size=2)},
)
PLAUSIBLE = st.one_of(OVERLAY, BRIDGE)


@settings(max_examples=400, deadline=None)
@given(data=PLAUSIBLE)
def test_fuzz_plausible_clusters(data: dict) -> None:
    """Near-valid clusters reach the cross-field rules and the carving: the result is a
    Cluster whose queries work for every host, or one ConfigError line."""
    try:
        cluster = parse_cluster(data, source="fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= MAX_LINE
        return
    subnets = cluster.host_subnets()
    for h in cluster.hosts:
        assert subnets[h.name].subnet_of(cluster.container_network())
        cluster.gateway_of(h.name)
