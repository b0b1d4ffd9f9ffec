"""`crossnet validate -f FILE` (crossnet.validate) and the suggestions of crossnet.suggest:
offline, no kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crossnet.cli.shapes import check_output
from crossnet.suggest import free_network
from crossnet.validate import validate_file

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def base(**kw) -> dict:
    d = {"name": "t", "backend": "vxlan", "network": "10.32.0.0/16", "subnet_len": 24, "mtu": 1500,
         "hosts": [{"name": "h1", "address": "192.168.56.11"}, {"name": "h2", "address": "192.168.56.12"}]}
    d.update(kw)
    return d


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossnet", *argv], capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, CROSSNET_STATE_DIR="/nonexistent/state"))


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example):
    r = validate_file(example)
    assert r["ok"], r["problems"]
    assert len(set(r["container_mtu"].values())) == 1


def test_good_file_reports_subnets_and_mtu(tmp_path):
    r = validate_file(write(tmp_path, base()))
    assert r["ok"] and r["problems"] == [] and r["warnings"] == []
    assert r["subnets"] == {"h1": "10.32.0.0/24", "h2": "10.32.1.0/24"}
    assert r["container_mtu"] == {"h1": 1450, "h2": 1450}  # vxlan: 50 bytes


def test_every_problem_with_its_field(tmp_path):
    r = validate_file(write(tmp_path, base(subnet_len=40, hosts=[{"name": "H1", "address": "1.2.3.4"}])))
    assert not r["ok"]
    fields = {p["field"] for p in r["problems"]}
    assert "hosts[0].name" in fields


def test_mtu_too_small_for_the_backend(tmp_path):
    r = validate_file(write(tmp_path, base(mtu=600)))
    assert not r["ok"]
    (p,) = r["problems"]
    assert p["field"] == "mtu" and "leaves 550 bytes" in p["message"] and "mtu: 626 or more" in p["message"]


def test_mtu_differs_across_hosts(tmp_path):
    """Hosts that would give their containers different MTUs: a problem naming both sides."""
    from crossnet.config import load_cluster
    from crossnet.validate import mtu_findings

    cluster = load_cluster(write(tmp_path, base()))
    problems, _ = mtu_findings(cluster, {"h1": 1450, "h2": 1390})
    assert [p["field"] for p in problems] == ["mtu"]
    assert "different MTUs (h2: 1390; h1: 1450)" in problems[0]["message"]
    assert mtu_findings(cluster, {"h1": 1450, "h2": 1450}) == ([], [])


def test_wireguard_needs_every_key_offline(tmp_path):
    r = validate_file(write(tmp_path, base(backend="wireguard")))
    assert not r["ok"] and {p["field"] for p in r["problems"]} == {"hosts[0].wireguard_key", "hosts[1].wireguard_key"}


def test_unset_mtu_is_a_warning(tmp_path):
    d = base()
    del d["mtu"]
    r = validate_file(write(tmp_path, d))
    assert r["ok"] and [w["field"] for w in r["warnings"]] == ["mtu"]


@pytest.mark.parametrize("text", ["", "[1, 2]\n", "backend: vxlan: x\n", "a: 1\n"])
def test_bad_files_never_raise(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    r = validate_file(p)
    assert not r["ok"] and r["problems"]


def test_missing_file(tmp_path):
    r = validate_file(tmp_path / "nope.yaml")
    assert not r["ok"] and "no such file" in r["problems"][0]["message"]


def test_cli_ok_and_json(tmp_path):
    p = write(tmp_path, base())
    r = run("validate", "-f", str(p))
    assert r.returncode == 0 and "ok: cluster t, backend vxlan, 2 host(s), container mtu 1450" in r.stdout
    r = run("-o", "json", "validate", "-f", str(p))
    assert r.returncode == 0 and check_output("validate", r.stdout) == []


def test_cli_bad_file(tmp_path):
    """A bad file: every problem on stdout, one `crossnet: error:` line on stderr, exit 2;
    the tutorial's overlapping network gets a free range of the same size."""
    p = write(tmp_path, base(network="192.168.0.0/16"))
    r = run("validate", "-f", str(p))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("crossnet: error: ")
    assert "(a free range: network: 10.0.0.0/16)" in r.stdout
    r = run("validate", "-f", str(p), "-o", "json")
    data = json.loads(r.stdout)
    assert r.returncode == 2 and data["ok"] is False and check_output("validate", r.stdout) == []


def test_validate_touches_no_state(tmp_path):
    r = run("--state-dir", str(tmp_path / "s"), "validate", "-f", str(write(tmp_path, base())))
    assert r.returncode == 0 and not (tmp_path / "s").exists()


def test_suggest_tutorial_network():
    hosts = [IPv4Address("192.168.56.101"), IPv4Address("192.168.56.102"), IPv4Address("192.168.57.10")]
    assert free_network(IPv4Network("192.168.0.0/16"), 24, 3, hosts) == IPv4Network("10.0.0.0/16")


def test_suggest_holds_the_pinned_subnets():
    """With pinned subnets the suggestion holds them all: the same size is impossible
    (it would contain a host), a smaller one around the pins is named."""
    hosts = [IPv4Address("192.168.56.101")]
    pins = [IPv4Network("192.168.200.0/24"), IPv4Network("192.168.201.0/24")]
    got = free_network(IPv4Network("192.168.0.0/16"), 24, 2, hosts, pinned=pins)
    assert got == IPv4Network("192.168.128.0/17")


def test_suggest_none_when_nothing_fits():
    assert free_network(IPv4Network("10.0.0.0/24"), 24, 1, []) is None


@given(st.integers(8, 24), st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=5),
       st.integers(1, 16))
def test_suggest_property(plen, base_addr, avoid, hosts):
    """A suggestion is never the rejected network, is no larger, avoids every address and
    still has a subnet per host."""
    net = IPv4Network((base_addr, plen), strict=False)
    addrs = [IPv4Address(a) for a in avoid]
    got = free_network(net, 26, hosts, addrs)
    if got is not None:
        assert got != net and got.prefixlen >= net.prefixlen
        assert not any(a in got for a in addrs)
        assert 1 << (26 - got.prefixlen) >= hosts
