"""crossnet.expose, the pure part: the network lookup, the hostile expose.json, the resources."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, strategies as st

from crossnet import expose, program
from crossnet.backends.base import HostContext
from crossnet.errors import ConfigError


def ctx(tmp_path, backend="host-gw") -> HostContext:
    return HostContext(cluster_name="prod", backend=backend, host="h1", address=IPv4Address("192.168.1.10"),
                       iface="eth0", subnet=IPv4Network("10.32.3.0/24"), network=IPv4Network("10.32.0.0/16"),
                       gateway=IPv4Address("10.32.3.1"), prefixlen=16, bridge="cn0", underlay_mtu=1500, mtu=1500,
                       masquerade=False, state_dir=str(tmp_path))


def test_lookup_names_the_option(tmp_path):
    c = ctx(tmp_path)
    assert expose.lookup(c, None) == "prod" and expose.lookup(c, "prod") == "prod"
    with pytest.raises(ConfigError, match=r"^--network: this host has no network 'other' \(its networks: prod\)"):
        expose.lookup(c, "other")


def test_not_exposed_adds_nothing(tmp_path):
    c = ctx(tmp_path)
    assert expose.resources(c) == []
    assert not any(r.key() == f"nft:ip:{expose.NFT_TABLE}" for r in program.common_resources(c))


def test_exposed_is_one_snat_table_in_common_resources(tmp_path):
    c = ctx(tmp_path)
    expose.save(tmp_path, ["prod"])
    (res,) = expose.resources(c)
    assert res.key() == "nft:ip:crossnet-expose"
    assert ("ip daddr 10.32.0.0/16 ip saddr != 10.32.0.0/16 fib saddr type local snat to 10.32.3.1"
            in res.body)
    assert res.key() in {r.key() for r in program.common_resources(c)}  # apply and the agent keep it
    assert expose.status_of(c, [res])["networks"] == [
        {"network": "prod", "exposed": True, "address": "10.32.3.1", "programmed": True}]
    assert expose.status_of(c, [])["networks"][0]["programmed"] is False
    expose.save(tmp_path, [])
    assert not (tmp_path / expose.FILE).exists() and expose.resources(c) == []


def test_bridge_backend_is_already_in_the_network(tmp_path):
    c = ctx(tmp_path, backend="bridge")
    expose.save(tmp_path, ["prod"])
    assert expose.resources(c) == [] and expose.address(c) == IPv4Address("192.168.1.10")
    assert expose.status_of(c, [])["networks"][0]["programmed"] is True


def test_another_networks_name_exposes_nothing(tmp_path):
    expose.save(tmp_path, ["other"])
    assert expose.resources(ctx(tmp_path)) == []


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.text(), st.integers()),
                 st.fixed_dictionaries({"networks": st.one_of(st.text(), st.integers(), st.lists(st.integers()))})))
def test_hostile_file_exposes_nothing(tmp_path_factory, value):
    d = tmp_path_factory.mktemp("x")
    (d / expose.FILE).write_text(json.dumps(value))
    assert expose.resources(ctx(d)) == []


def test_damaged_file_exposes_nothing(tmp_path):
    (tmp_path / expose.FILE).write_text("{not json")
    assert expose.load(tmp_path) == [] and expose.resources(ctx(tmp_path)) == []


def test_agent_resync_endpoint(tmp_path):
    """POST /v1/resync (what `crossnet expose`/`hide` send): the agent's main loop syncs
    at once; a field it does not know is refused; GET is not allowed."""
    from crossnet.agent import api as agentapi
    from crossnet.state import StateDir

    class Agent:
        state = StateDir(tmp_path)
        asked = 0

        def resync_soon(self):
            self.asked += 1

    agent = Agent()
    assert agentapi.handle(agent, "POST", "/v1/resync", {}) == (200, {"resync": True})
    assert agent.asked == 1
    with pytest.raises(agentapi.BadRequest, match="unknown field 'x'"):
        agentapi.handle(agent, "POST", "/v1/resync", {"x": 1})
    assert agentapi.handle(agent, "GET", "/v1/resync", {})[0] == 405


def blue_ctx(tmp_path) -> HostContext:
    """A named network's context (vxlan) on the same host."""
    return HostContext(**{**ctx(tmp_path, "vxlan").__dict__, "subnet": IPv4Network("10.33.3.0/24"),
                          "network": IPv4Network("10.33.0.0/16"), "gateway": IPv4Address("10.33.3.1"),
                          "bridge": "cn-blue", "mtu": 1450})


def test_a_named_network_is_exposed_on_its_own(tmp_path):
    c, blue = ctx(tmp_path, "vxlan"), blue_ctx(tmp_path)
    assert expose.lookup(c, None, ["blue"]) == "prod" and expose.lookup(c, "blue", ["blue"]) == "blue"
    with pytest.raises(ConfigError, match=r"^--network: this host has no network 'red' \(its networks: prod, blue\)"):
        expose.lookup(c, "red", ["blue"])
    assert expose.resources(blue, network="blue") == []  # nothing recorded yet
    expose.save(tmp_path, ["blue"])
    assert expose.resources(c) == []  # the top-level network stays hidden
    (table,) = expose.resources(blue, network="blue")
    assert table.key() == f"nft:ip:{expose.NFT_TABLE}-blue"
    assert "ip daddr 10.33.0.0/16 ip saddr != 10.33.0.0/16 fib saddr type local snat to 10.33.3.1" in table.body
    from crossnet.backends import get_backend

    keys = [r.key() for r in program.network_resources(c, get_backend("vxlan"), {"blue": blue})]
    assert f"nft:ip:{expose.NFT_TABLE}-blue" in keys and f"nft:ip:{expose.NFT_TABLE}" not in keys
    info = expose.status_of(c, [table], {"blue": blue})["networks"]
    assert info == [{"network": "prod", "exposed": False, "address": None, "programmed": False},
                    {"network": "blue", "exposed": True, "address": "10.33.3.1", "programmed": True}]


class _Killed(BaseException):
    """SIGKILL stand-in: no clean-up handler runs."""


def test_reset_killed_after_clearing_its_record_still_undoes_expose_when_run_again(tmp_path, monkeypatch):
    """`reset` removed applied.json, then expose.json: killed in between, the next reset
    found no record and returned at once, leaving expose.json -- the next apply exposed the
    host again though reset had run. expose.json goes before the record does."""
    import contextlib

    from crossnet import host
    from crossnet.netlink import iproute as nl
    from crossnet.state import StateDir
    from tests.unit.fakekernel import FakeIpr, FakeKernel

    c = ctx(tmp_path)
    state = StateDir(tmp_path)
    state.save_applied({"version": 1, "host": "h1", "context": c.to_json(), "resources": []})
    expose.save(tmp_path, ["prod"])
    monkeypatch.setattr(nl, "open_ipr", lambda *a, **kw: contextlib.nullcontext(FakeIpr(FakeKernel())))
    real_clear = StateDir.clear

    def clear_then_die(self):
        real_clear(self)
        raise _Killed

    monkeypatch.setattr(StateDir, "clear", clear_then_die)
    with pytest.raises(_Killed):
        host.reset(state)
    monkeypatch.setattr(StateDir, "clear", real_clear)
    host.reset(state)  # the operator runs it again
    assert not (tmp_path / expose.FILE).exists() and expose.resources(c) == []
    assert not state.applied_path.exists()


def test_a_hide_killed_before_it_programmed_the_host_is_reported_as_still_programmed(tmp_path):
    """`hide` writes expose.json, then programs the host: killed in between, the SNAT table
    is still in the kernel and on record, and status said plainly "not exposed". It says
    the table is still programmed, and how it goes (apply, or hide again)."""
    c = ctx(tmp_path)
    expose.save(tmp_path, ["prod"])
    recorded = expose.resources(c)
    expose.save(tmp_path, [])  # hide: the file first ... killed before program_host
    info = expose.status_of(c, recorded)
    assert info["networks"] == [{"network": "prod", "exposed": False, "address": None, "programmed": True}]
    assert "not exposed" in expose.status_text(info) and "[still programmed: run apply" in expose.status_text(info)
    # once applied, nothing left
    done = expose.status_of(c, [])
    assert done["networks"][0]["programmed"] is False and "still programmed" not in expose.status_text(done)
