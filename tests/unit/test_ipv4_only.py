"""IPv4 underlay only: an IPv6 address where crossnet expects the underlay's is refused
with one line naming the field, at every entry point (cluster file, `agent --address`,
`launch --address`), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crossnet.agent.core import Agent, AgentOptions
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.mesh import launch as ml
from crossnet.netmodel import ipv4_address, ipv4_problem
from crossnet.state import StateDir

V6 = ["2001:db8::1", "::1", "fe80::1%eth0", "::ffff:10.0.0.1", "fd00::10"]

CLUSTER = """\
name: t
backend: {backend}
network: 10.32.0.0/16
hosts:
  - {{name: h1, address: "{address}"}}
  - {{name: h2, address: 192.0.2.2}}
"""


@pytest.mark.parametrize("addr", V6)
def test_an_ipv6_address_is_named_as_such(addr):
    problem = ipv4_problem(addr)
    assert problem and "is an IPv6 address" in problem and "IPv4 only" in problem
    with pytest.raises(ConfigError) as exc:
        ipv4_address(addr, "--address")
    assert str(exc.value).startswith("--address: ") and "\n" not in str(exc.value)


@given(st.ip_addresses(v=6))
def test_every_ipv6_address_is_refused_as_ipv6(addr):
    assert "is an IPv6 address" in ipv4_problem(str(addr))


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_passes(addr):
    assert ipv4_problem(str(addr)) is None
    assert ipv4_address(str(addr), "x") == addr


@pytest.mark.parametrize("backend", ["vxlan", "wireguard", "auto", "host-gw"])
def test_cluster_file_names_the_host_field(backend):
    with pytest.raises(ConfigError) as exc:
        parse_cluster(yaml.safe_load(CLUSTER.format(backend=backend, address="2001:db8::1")), source="c.yaml")
    msg = str(exc.value)
    assert "hosts[0].address" in msg and "is an IPv6 address" in msg and "\n" not in msg


def test_launch_address_is_refused():
    with pytest.raises(ConfigError, match=r"^--address: '2001:db8::1' is an IPv6 address"):
        ml.pick_underlay(2, {1: "lo", 2: "eth0"}, {2: ["10.0.0.5"]}, address="2001:db8::1")


def test_agent_address_is_refused_before_any_netlink_socket(tmp_path):
    agent = Agent(None, StateDir(tmp_path), AgentOptions(name="h1", address="2001:db8::1", api=False))
    agent._env = lambda: pytest.fail("the kernel was asked before the address was checked")  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match=r"^--address: '2001:db8::1' is an IPv6 address"):
        agent._identity()


def test_apply_cli_one_line_exit_2(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(CLUSTER.format(backend="vxlan", address="2001:db8::1"))
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "st"), "apply", "-f",
                           str(f), "--host", "h1", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hosts[0].address" in lines[0] and "IPv6" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
