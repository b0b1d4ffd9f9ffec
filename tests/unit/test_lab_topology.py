"""Lab planning (crossnet.lab.topology) and the pure parts of crossnet.check / lab CLI."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.check import Endpoint, Pair, pairs_to_json, ping_matrix, render_matrix, summary_line
from crossnet.errors import ConfigError, CrossnetError
from crossnet.lab.topology import (
    DEFAULT_NETWORK,
    MAX_HOSTS,
    SLOTS,
    LabOptions,
    LabPlan,
    free_slot,
    plan_lab,
    underlay_block,
    validate_name,
)

OVERLAY = ipaddress.ip_network(DEFAULT_NETWORK)


def plan(**kw) -> LabPlan:
    slot = kw.pop("slot", 0)
    return plan_lab(LabOptions(**kw), slot, f"/run/crossnet/lab/{kw.get('name', 'cnlab')}")


# ---- options ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnlab", "a", "abc12345", "t0a9zz"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab-1", "abcdefghi", "la b", "lab_1", "lab\n"])
def test_invalid_names(name):
    with pytest.raises(ConfigError, match="--name"):
        validate_name(name)


@pytest.mark.parametrize(
    "kw, option",
    [
        ({"hosts": 0}, "--hosts"),
        ({"hosts": MAX_HOSTS + 1}, "--hosts"),
        ({"underlay": "l4"}, "--underlay"),
        ({"backend": "nope"}, "--backend"),
        ({"backend": "bridge", "underlay": "l3"}, "--backend bridge"),
        ({"containers": -1}, "--containers"),
        ({"mtu": 100}, "--mtu"),
        ({"network": "10.32.0.0/33"}, "--network"),
        ({"network": "10.32.0.1/16"}, "--network"),
        ({"subnet_len": 16}, "--subnet-len"),
        ({"name": "Bad"}, "--name"),
    ],
)
def test_option_errors_name_the_option(kw, option):
    with pytest.raises(ConfigError) as exc:
        LabOptions(**kw).validate()
    msg = str(exc.value)
    assert msg.startswith(option)
    assert "\n" not in msg


def test_unknown_backend_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown backend 'nope' \(choose from .*vxlan"):
        LabOptions(backend="nope").validate()


# ---- address slots ------------------------------------------------------------------
def test_blocks_are_disjoint_from_default_overlay_and_each_other():
    blocks = [underlay_block(s) for s in range(SLOTS)]
    assert len(set(blocks)) == SLOTS
    assert not any(b.overlaps(OVERLAY) for b in blocks)
    assert all(b.subnet_of(ipaddress.ip_network("10.0.0.0/8")) for b in blocks)


def test_free_slot_skips_used_and_overlapping():
    assert free_slot(set()) == 0
    assert free_slot({0, 1, 3}) == 2
    assert free_slot(set(), network="10.56.0.0/15") == 2  # slots 0 and 1 overlap the overlay
    with pytest.raises(ConfigError, match="no free lab address slot"):
        free_slot(set(range(SLOTS)))
    with pytest.raises(ConfigError):
        free_slot(set(), network="10.0.0.0/8")


def test_plan_refuses_overlay_overlapping_its_block():
    with pytest.raises(ConfigError, match="overlaps"):
        plan(network="10.56.0.0/16", slot=0)


# ---- l2 / l3 plans ------------------------------------------------------------------
def test_l2_plan():
    p = plan(name="lab", hosts=3, underlay="l2", containers=2, slot=4)
    assert p.block == "10.60.0.0/16"
    assert p.fabric.netns == "lab-sw" and p.fabric.bridge == "sw0" and p.fabric.kind == "switch"
    assert p.fabric.address == "10.60.0.1/20"
    assert [h.name for h in p.hosts] == ["h1", "h2", "h3"]
    assert [h.netns for h in p.hosts] == ["lab-h1", "lab-h2", "lab-h3"]
    assert [h.address for h in p.hosts] == ["10.60.0.10", "10.60.0.11", "10.60.0.12"]
    assert {h.subnet for h in p.hosts} == {"10.60.0.0/20"}
    assert {h.gateway for h in p.hosts} == {"10.60.0.1"}
    assert all(h.ifname == "eth0" for h in p.hosts)
    assert [h.fabric_ifname for h in p.hosts] == ["sw-h1", "sw-h2", "sw-h3"]
    assert p.hosts[0].containers == ("lab-h1-c1", "lab-h1-c2")
    assert p.hosts[1].state_dir == "/run/crossnet/lab/lab/hosts/h2/state"
    assert p.namespaces()[:4] == ["lab-sw", "lab-h1", "lab-h2", "lab-h3"]
    assert len(p.namespaces()) == 1 + 3 + 6
    assert all(n.startswith("lab-") for n in p.namespaces())


def test_l3_plan_puts_each_host_in_its_own_subnet():
    p = plan(name="lab", hosts=3, underlay="l3", containers=0, slot=0)
    assert p.fabric.netns == "lab-rt" and p.fabric.bridge is None
    subnets = [ipaddress.ip_network(h.subnet) for h in p.hosts]
    assert len(set(subnets)) == 3
    for k, (h, net) in enumerate(zip(p.hosts, subnets), start=1):
        assert str(net) == f"10.56.{k}.0/24"
        assert h.address == f"10.56.{k}.2" and h.prefixlen == 24
        assert h.gateway == f"10.56.{k}.1" and h.fabric_address == f"10.56.{k}.1/24"
        assert h.fabric_ifname == f"rt-h{k}"
        for other in subnets:
            if other != net:
                assert ipaddress.ip_address(h.address) not in other


@given(hosts=st.integers(1, MAX_HOSTS), slot=st.integers(0, SLOTS - 1),
       underlay=st.sampled_from(["l2", "l3"]), containers=st.integers(0, 3))
def test_plan_invariants(hosts, slot, underlay, containers):
    p = plan(name="x", hosts=hosts, underlay=underlay, containers=containers, slot=slot)
    block = ipaddress.ip_network(p.block)
    addrs = [ipaddress.ip_address(h.address) for h in p.hosts]
    assert len(set(addrs)) == hosts
    for h, a in zip(p.hosts, addrs):
        net = ipaddress.ip_network(h.subnet)
        assert a in net and a in block and a not in OVERLAY
        assert ipaddress.ip_address(h.gateway) in net and h.gateway != h.address
        assert a not in (net.network_address, net.broadcast_address)
    if underlay == "l2":
        assert max(addrs) < block.network_address + 64  # bridge ranges stay free
    names = p.namespaces()
    assert len(set(names)) == len(names) == 1 + hosts * (1 + containers)
    assert all(len(h.fabric_ifname) <= 15 for h in p.hosts)


def test_two_labs_share_no_names_or_addresses():
    a = plan(name="aa", hosts=3, underlay="l2", slot=0)
    b = plan(name="aab", hosts=3, underlay="l3", slot=1)
    assert not set(a.namespaces()) & set(b.namespaces())
    assert not any(n.startswith(a.prefix) for n in b.namespaces())  # 'aa-' vs 'aab-'
    assert not ipaddress.ip_network(a.block).overlaps(ipaddress.ip_network(b.block))


def test_mtu_and_extra_carried():
    p = plan(mtu=1400, extra={"runtime": "podman"})
    assert p.mtu == 1400 and p.extra == {"runtime": "podman"}


# ---- cluster file / manifest --------------------------------------------------------
def test_cluster_dict_overlay_backend():
    p = plan(name="lab", hosts=2, backend="vxlan", slot=0)
    d = p.cluster_dict()
    assert d == {
        "name": "lab", "backend": "vxlan", "network": "10.32.0.0/16", "subnet_len": 24,
        "mtu": None, "masquerade": False,
        "hosts": [{"name": "h1", "address": "10.56.0.10", "iface": "eth0"},
                  {"name": "h2", "address": "10.56.0.11", "iface": "eth0"}],
    }


def test_cluster_dict_bridge_backend_uses_the_lan():
    d = plan(name="lab", hosts=3, backend="bridge", slot=2).cluster_dict()
    assert "network" not in d
    assert d["lan"]["cidr"] == "10.58.0.0/20" and d["lan"]["gateway"] == "10.58.0.1"


@pytest.mark.parametrize("backend,underlay", [("vxlan", "l2"), ("vxlan", "l3"), ("bridge", "l2"),
                                              ("host-gw", "l2")])
def test_cluster_dict_is_a_valid_cluster(backend, underlay):
    config = pytest.importorskip("crossnet.config")
    d = plan(name="lab", hosts=5, backend=backend, underlay=underlay, slot=3).cluster_dict()
    config.parse_cluster(d)


def test_manifest_roundtrip():
    p = plan(name="lab", hosts=2, underlay="l3", containers=1, mtu=1400, slot=7, extra={"k": 1})
    d = p.to_dict()
    assert d["namespaces"] == p.namespaces() and d["version"] == 1
    assert LabPlan.from_dict(d) == p


def test_host_and_namespace_lookup():
    p = plan(name="lab", hosts=2, containers=1)
    assert p.host("h2").netns == "lab-h2"
    assert p.host("lab-h1").name == "h1"
    with pytest.raises(ConfigError, match="no host 'h3'"):
        p.host("h3")
    assert p.resolve_netns("h1") == "lab-h1"
    assert p.resolve_netns("h2-c1") == "lab-h2-c1"
    assert p.resolve_netns("sw") == "lab-sw"
    assert p.resolve_netns("lab-h2") == "lab-h2"
    with pytest.raises(ConfigError):
        p.resolve_netns("rt")


# ---- check (pure parts) -------------------------------------------------------------
def test_render_and_json():
    pairs = [Pair("a", "b", True, 0.25), Pair("b", "a", False, None, "no reply")]
    assert pairs_to_json(pairs)[1] == {"src": "b", "dst": "a", "ok": False, "rtt_ms": None, "error": "no reply"}
    assert summary_line(pairs) == "FAILED: 1 of 2 pairs unreachable"
    assert summary_line(pairs[:1]) == "OK: all 1 pairs reachable"
    table = render_matrix(pairs, title="t", label=str.upper)
    assert [c.header for c in table.columns] == ["src \\ dst", "A", "B"]
    assert table.row_count == 2


def test_ping_matrix_trivial():
    assert ping_matrix([]) == []
    assert ping_matrix([Endpoint("a", "", "127.0.0.1")]) == []


# ---- CLI input errors (no root needed: rejected before anything is built) -----------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["lab", "up", "--hosts", "0"], "--hosts"),
        (["lab", "up", "--name", "Bad-Name"], "--name"),
        (["lab", "up", "--backend", "frobnicate"], "lab up: invalid value for '--backend'"),
        (["lab", "demo", "--underlay", "l9"], "lab demo: invalid value for '--underlay'"),
        (["lab", "up", "-o", "yaml"], "lab up: invalid value for '-o' / '--output'"),
        (["lab", "down", "--name", "x-y"], "--name"),
    ],
)
def test_cli_rejects_bad_input(args, needle, capsys):
    from crossnet.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crossnet: error: " + needle), err
    assert "\n" not in err


def test_lab_summary_shows_docker_container_addresses(tmp_path, monkeypatch):
    """`lab up --runtime docker`: Docker's IPAM gives the addresses (crossnet status has
    none), so the summary takes them from `docker inspect` like `lab check` does."""
    from crossnet.lab import docker
    from crossnet.lab.manager import Lab
    from crossnet.lab.topology import LabOptions, plan_lab

    plan = plan_lab(LabOptions(name="tsum", hosts=2, containers=1, extra={"runtime": "docker"}).validate(), 3,
                    str(tmp_path / "lab"))
    lab = Lab({**plan.to_dict(), "apply": True})
    names = [c for h in plan.hosts for c in h.containers]
    fake = [Endpoint(n, f"/proc/{100 + i}/ns/net", f"10.9.{i}.2") for i, n in enumerate(names)]
    monkeypatch.setattr(docker, "endpoints", lambda p: fake)
    got = {c["id"]: (c["address"], c["netns"]) for h in lab.summary({})["hosts"] for c in h["containers"]}
    assert got == {e.name: (e.address, e.netns) for e in fake}
    monkeypatch.setattr(docker, "endpoints", lambda p: (_ for _ in ()).throw(CrossnetError("daemon down")))
    assert all(c["address"] is None for h in lab.summary({})["hosts"] for c in h["containers"])
