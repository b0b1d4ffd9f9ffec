"""The agent API's socket <state-dir>/agent.sock (crossnet.unixsock), with a stand-in
agent: a second API on a live one's path is refused in one line and the first keeps
serving (was: the path was unlinked and taken, the first agent unreachable); close()
leaves a successor's socket (was: unlinked whatever was at the path); a regular file,
directory or symlink at the path is refused and left (was: deleted)."""

from __future__ import annotations

import os
import stat

import pytest

from crossnet.agent import api as agentapi
from crossnet.errors import ConfigError
from crossnet.state import StateDir
from tests.unit import planted


class FakeAgent:
    def __init__(self, root):
        self.state = StateDir(root)

    def info(self):
        return {"host": "h1", "peers": []}


def test_second_api_on_a_live_socket_is_refused_and_first_keeps_serving(tmp_path):
    path = str(tmp_path / "agent.sock")
    first = agentapi.serve(FakeAgent(tmp_path), path)
    try:
        ino = os.lstat(path).st_ino
        with pytest.raises(ConfigError) as err:
            agentapi.serve(FakeAgent(tmp_path), path)
        assert str(err.value) == (f"--state-dir: {path} is served by a running process (another crossnet agent?); "
                                  "stop it first")
        assert os.lstat(path).st_ino == ino and agentapi.agent_running(tmp_path)
    finally:
        first.close()
    assert not os.path.lexists(path)  # the first one's own socket: removed at close


def test_socket_mode_0600(tmp_path):
    path = str(tmp_path / "agent.sock")
    handle = agentapi.serve(FakeAgent(tmp_path), path)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        handle.close()


def test_close_leaves_a_successors_socket(tmp_path):
    """The first agent's socket was removed (by hand, or a restart script) and a second
    agent serves the path: the first one's close() must not unlink the second's."""
    path = str(tmp_path / "agent.sock")
    first = agentapi.serve(FakeAgent(tmp_path), path)
    os.unlink(path)
    second = agentapi.serve(FakeAgent(tmp_path), path)
    try:
        first.close()
        assert os.path.exists(path) and agentapi.agent_running(tmp_path)
    finally:
        second.close()
    assert not os.path.lexists(path)


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "agent.sock")
    killed = agentapi.serve(FakeAgent(tmp_path), path).server
    killed.shutdown()
    killed.server_close()  # closed, not released: a killed agent's socket file stays
    assert os.path.lexists(path) and not agentapi.agent_running(tmp_path)
    handle = agentapi.serve(FakeAgent(tmp_path), path)
    try:
        assert agentapi.agent_running(tmp_path)
    finally:
        handle.close()


@pytest.mark.parametrize("kind", planted.KINDS)
def test_not_a_socket_is_refused_and_left(tmp_path, kind):
    path = tmp_path / "agent.sock"
    target = tmp_path / "target"
    target.write_text("keep")
    planted.plant(path, kind, target)
    with pytest.raises(ConfigError) as err:
        agentapi.serve(FakeAgent(tmp_path), str(path))
    assert str(err.value) == f"--state-dir: {path} exists and is not a socket"
    assert planted.left_as_planted(path, kind) and target.read_text() == "keep"
