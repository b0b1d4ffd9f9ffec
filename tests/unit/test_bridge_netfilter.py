"""Bridge netfilter off on crossnet's own bridges (issue 18, docs/benchmarks-parity.md), on
the fake kernel (tests/unit/fakekernel.py) and a fake /proc/sys: the Bridge resource
wants its nf_call_* attributes at 0 (dry-run line, drift found by check() and repaired);
BridgeNetfilterOff turns the namespace's bridge-nf-call-* sysctls off while crossnet's
bridges are the only ones, leaves them alone when another bridge exists or br_netfilter
is not loaded, and reset puts back what it found (and only a 0/1 from the record).
The real kernel side: tests/e2e/test_networks.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from crossnet import program
from crossnet.backends import get_backend
from crossnet.backends.base import Peer
from crossnet.plan.reconciler import pending, reconcile
from crossnet.plan.resources import Bridge, BridgeNetfilterOff, Resource
from tests.unit.fakekernel import FakeEnv, install, machine

NAMES = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
         "net.bridge.bridge-nf-call-arptables")


def values(root: Path) -> list[str]:
    return [(root / n.replace(".", "/")).read_text().strip() for n in NAMES]


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    k = machine()
    install(monkeypatch, k, tmp_path)
    return k, tmp_path / "sys"


def test_bridge_wants_nf_call_off_and_repairs_drift(kernel):
    k, _root = kernel
    br = Bridge("cn0", 1450)
    assert br.describe().endswith(
        "&& ip link set dev cn0 type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0")
    reconcile([br], [], FakeEnv(k))
    assert {a: k.links["cn0"].info_data[a] for a in ("IFLA_BR_NF_CALL_IPTABLES", "IFLA_BR_NF_CALL_IP6TABLES",
                                                     "IFLA_BR_NF_CALL_ARPTABLES")} == dict.fromkeys(
        ("IFLA_BR_NF_CALL_IPTABLES", "IFLA_BR_NF_CALL_IP6TABLES", "IFLA_BR_NF_CALL_ARPTABLES"), 0)
    assert br.check(FakeEnv(k))
    # someone turns the hooks back on for this bridge (`ip link set dev cn0 type bridge nf_call_iptables 1`)
    k.links["cn0"].info_data["IFLA_BR_NF_CALL_IPTABLES"] = 1
    assert not br.check(FakeEnv(k))
    assert [(c.action, c.resource.key()) for c in pending([br], [br], FakeEnv(k))] == [("repair", "link:cn0")]
    reconcile([br], [br], FakeEnv(k))
    assert k.links["cn0"].info_data["IFLA_BR_NF_CALL_IPTABLES"] == 0 and br.check(FakeEnv(k))


def test_sysctls_off_while_only_our_bridges_then_restored(kernel):
    k, root = kernel
    k.add_link("cn0", "bridge")
    off = BridgeNetfilterOff(["cn0"])
    assert off.describe() == ("sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 "
                              "net.bridge.bridge-nf-call-arptables=0   # while br_netfilter is loaded and this host "
                              "has no bridge but cn0")
    assert values(root) == ["1", "1", "1"] and not off.check(FakeEnv(k))
    out = reconcile([off], [], FakeEnv(k))
    assert values(root) == ["0", "0", "0"] and off.check(FakeEnv(k))
    # recorded in applied.json with what it found; reset (remove) puts it back
    recorded = Resource.from_json(out.resources[0].to_json())
    assert recorded == off and recorded.saved == dict.fromkeys(NAMES, "1")
    recorded.remove(FakeEnv(k))
    assert values(root) == ["1", "1", "1"]


def test_left_alone_with_a_foreign_bridge_or_without_br_netfilter(kernel, tmp_path, monkeypatch):
    k, root = kernel
    k.add_link("cn0", "bridge")
    k.add_link("docker0", "bridge")  # not crossnet's: it may need the hooks
    off = BridgeNetfilterOff(["cn0"])
    assert off.foreign(FakeEnv(k)) == ["docker0"]
    assert off.check(FakeEnv(k))  # nothing to do: no fight over the sysctls
    off.ensure(FakeEnv(k))
    assert values(root) == ["1", "1", "1"] and off.saved == {}
    del k.links["docker0"]
    monkeypatch.setattr(BridgeNetfilterOff, "ROOT", tmp_path / "no-br-netfilter")
    assert off.check(FakeEnv(k))
    off.ensure(FakeEnv(k))
    assert off.saved == {}


def test_reset_writes_only_a_recorded_0_or_1(kernel):
    k, root = kernel
    hostile = Resource.from_json({"kind": "bridge-nf-off", "ours": ["cn0"], "saved": {
        NAMES[0]: "1; reboot", NAMES[1]: "0", "kernel.core_pattern": "|/tmp/x"}})
    hostile.remove(FakeEnv(k))
    assert values(root) == ["1", "0", "1"]


def test_program_lists_every_bridge_of_the_host_as_ours(kernel):
    k, _root = kernel
    b = get_backend("host-gw")
    settings = program.Settings("c", "host-gw", IPv4Network("10.32.0.0/16"), 24, "cn0", None, False, 1, 4789, {})
    peers = [Peer("h2", IPv4Address("10.56.0.2"), IPv4Network("10.32.2.0/24"))]
    ctx = program.context(settings, b, host="h1", address=IPv4Address("10.56.0.1"), iface="eth0",
                          subnet=IPv4Network("10.32.1.0/24"), nic=k.links["eth0"], peers=peers)
    blue = program.context(settings, b, host="h1", address=IPv4Address("10.56.0.1"), iface="eth0",
                           subnet=IPv4Network("10.33.1.0/24"), nic=k.links["eth0"], peers=[])
    blue.bridge, blue.network = "cn-blue", IPv4Network("10.33.0.0/16")
    res = program.desired_resources(ctx, b, program.network_resources(ctx, b, {"blue": blue}))
    offs = [r for r in res if isinstance(r, BridgeNetfilterOff)]
    assert offs == [BridgeNetfilterOff(["cn-blue", "cn0"])]
    # after the last bridge: every bridge it lists exists when it looks for foreign ones
    last_bridge = max(i for i, r in enumerate(res) if isinstance(r, Bridge))
    assert res.index(offs[0]) == last_bridge + 1
