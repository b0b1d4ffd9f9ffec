"""The agent's local API (unix socket, JSON over HTTP) with a stand-in agent."""

from __future__ import annotations

import os
import stat

import pytest

from crossnet.agent import api as agentapi
from crossnet.errors import CrossnetError
from crossnet.state import StateDir


class FakeAgent:
    def __init__(self, root):
        self.state = StateDir(root)

    def info(self):
        return {"host": "h1", "synced": True, "peers": [{"name": "h2", "subnet": "10.32.1.0/24", "programmed": True}]}

    def containers_changed(self):
        pass

    def cluster_containers(self):
        return {"host": "h1", "store": "static", "known": False, "hosts": {}}


@pytest.fixture
def api(tmp_path):
    # a deep directory: longer than the 107-byte AF_UNIX limit
    root = tmp_path / ("d" * 60) / ("e" * 60) / "state"
    root.mkdir(parents=True)
    handle = agentapi.serve(FakeAgent(root), str(root / "agent.sock"))
    yield root
    handle.close()


def test_status_peers_and_socket_mode(api):
    sock = api / "agent.sock"
    assert len(str(sock)) > 107
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    st = agentapi.call(api, "GET", "/v1/status")
    assert st["agent"]["host"] == "h1"
    assert "not configured" in st["host"]["error"]
    assert agentapi.call(api, "GET", "/v1/peers")[0]["name"] == "h2"
    assert agentapi.agent_running(api)


def test_errors_are_one_line(api):
    with pytest.raises(CrossnetError, match="no such endpoint"):
        agentapi.call(api, "GET", "/v2/nothing")
    with pytest.raises(CrossnetError, match="give \"container\""):
        agentapi.call(api, "POST", "/v1/attach", {})
    with pytest.raises(CrossnetError, match="not allowed"):
        agentapi.call(api, "GET", "/v1/attach")
    with pytest.raises(CrossnetError, match="not configured yet"):
        agentapi.call(api, "POST", "/v1/detach", {"id": "c1"})


def test_no_agent(tmp_path):
    assert not agentapi.agent_running(tmp_path)
    with pytest.raises(CrossnetError, match="no crossnet agent is running"):
        agentapi.call(tmp_path, "GET", "/v1/status")


def test_close_removes_socket(tmp_path):
    handle = agentapi.serve(FakeAgent(tmp_path), str(tmp_path / "agent.sock"))
    handle.close()
    assert not (tmp_path / "agent.sock").exists()


# ---------------------------------------------------------------------- containers


class PublishingAgent(FakeAgent):
    def __init__(self, root):
        super().__init__(root)
        self.changed = 0

    def containers_changed(self):
        self.changed += 1

    def cluster_containers(self):
        return {"host": "h1", "store": "etcd", "known": True,
                "hosts": {"h2": [{"id": "c1", "address": "10.32.1.2"}]}}


def test_containers_endpoint(tmp_path):
    handle = agentapi.serve(PublishingAgent(tmp_path), str(tmp_path / "agent.sock"))
    try:
        got = agentapi.call(tmp_path, "GET", "/v1/containers")
        assert got["known"] is True and got["hosts"]["h2"][0]["address"] == "10.32.1.2"
        with pytest.raises(CrossnetError, match="not allowed"):
            agentapi.call(tmp_path, "POST", "/v1/containers", {})
    finally:
        handle.close()


class RecordingStore:
    kind = "etcd"

    def __init__(self):
        self.published = []
        self.fail = None

    def describe(self):
        return "recording"

    def publish_containers(self, lease, containers):
        if self.fail is not None:
            raise self.fail
        self.published.append((lease.lease_id, containers))

    def containers(self):
        return {"h1": self.published[-1][1]} if self.published else {}

    def interrupt_watch(self):
        pass

    def close(self):
        pass


def test_agent_publishes_its_containers_when_they_change(tmp_path):
    """The publisher thread writes the container list once per change (attach/detach
    wait for it, bounded), again after a new lease, and reports a lost lease."""
    import time
    from ipaddress import IPv4Address, IPv4Network

    from crossnet.agent.core import Agent, AgentOptions
    from crossnet.store import HostRecord, LeaseLost, StoreUnavailable, SubnetLease

    store = RecordingStore()
    agent = Agent(store, StateDir(tmp_path), AgentOptions(api=False))
    agent.name = "h1"
    local = [{"id": "c1", "address": "10.32.0.2"}]
    agent._local_containers = lambda: list(local)
    agent._start_thread("containers", agent._publisher_loop)
    try:
        agent.containers_changed()
        assert store.published == []  # not registered/synced yet: nothing to publish
        agent.lease = SubnetLease(HostRecord("h1", IPv4Address("192.0.2.1"), IPv4Network("10.32.0.0/24")), 7, 30)
        agent.synced_at = time.time()
        agent.containers_changed()
        assert store.published == [(7, local)]
        agent.containers_changed()
        assert len(store.published) == 1  # unchanged: no write
        local.append({"id": "c2", "address": "10.32.0.3"})
        agent.containers_changed()
        assert store.published[-1] == (7, local) and len(store.published) == 2
        agent.lease = SubnetLease(agent.lease.record, 8, 30)  # re-registered: the old lease took the list along
        agent.containers_changed(force=True)
        assert store.published[-1][0] == 8
        store.fail = StoreUnavailable("cannot reach etcd")
        local.pop()
        agent.containers_changed()
        assert "cannot reach etcd" in agent.health["containers"]
        store.fail = None
        agent.containers_changed()
        assert agent.health["containers"] is None and store.published[-1] == (8, local)
        store.fail = LeaseLost("gone")
        local.append({"id": "c3", "address": "10.32.0.4"})
        agent.containers_changed()
        assert agent.queue.get_nowait() == ("lease-lost", 8)
        info = agent.cluster_containers()
        assert info["known"] is True and info["hosts"] == {"h1": store.published[-1][1]}
    finally:
        agent._shutdown_threads()


def test_a_cli_command_whose_agent_goes_away_after_the_check_uses_the_state_dir(tmp_path, monkeypatch):
    """`crossnet attach` asks the agent when one answers. An agent stopped or restarting
    between that check and the request (the socket gone: the request was never sent) is
    treated as no agent — the command works on the state dir — instead of failing with
    'no crossnet agent is running' (a CI failure: the mesh restarted its agent then)."""
    import click

    from crossnet.cli import host as clihost

    handle = agentapi.serve(FakeAgent(tmp_path), str(tmp_path / "agent.sock"))
    ctx = click.Context(click.Command("attach"), obj={"state_dir": str(tmp_path)})
    assert clihost._agent(ctx, "GET", "/v1/peers")[0]["name"] == "h2"  # the agent answers
    real = agentapi.agent_running

    def running_then_gone(state_dir):
        answered = real(state_dir)
        handle.close()  # the agent stops right after answering the check
        return answered

    monkeypatch.setattr(agentapi, "agent_running", running_then_gone)
    assert clihost._agent(ctx, "POST", "/v1/attach", {"container": "c1"}) is None
    assert not (tmp_path / "agent.sock").exists()
    with pytest.raises(agentapi.AgentNotRunning, match="no crossnet agent is running"):
        agentapi.call(tmp_path, "POST", "/v1/attach", {"container": "c1"})
