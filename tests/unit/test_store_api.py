"""The agent's local API (unix socket, JSON over HTTP) with a stand-in agent."""

from __future__ import annotations

import os
import stat

import pytest

from crossnet import agentapi
from crossnet.errors import CrossnetError
from crossnet.state import StateDir


class FakeAgent:
    def __init__(self, root):
        self.state = StateDir(root)

    def info(self):
        return {"host": "h1", "synced": True, "peers": [{"name": "h2", "subnet": "10.32.1.0/24", "programmed": True}]}


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
