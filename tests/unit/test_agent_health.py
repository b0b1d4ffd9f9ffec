"""crossnet.agent.health: what `crossnet status` says of the agent — running, synced,
store reachable, lease TTL (left) — and a clear "NOT RUNNING" when the state dir says an
agent (agent.json, applied.json written by an agent) or `crossnet launch` manages the
host while its socket does not answer; nothing for a host `crossnet apply` manages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from crossnet.agent import health

AGENT = {"pid": 42, "synced": True, "synced_at": 0.0, "store": "etcd http://10.0.0.1:2379", "ttl": 10,
         "ttl_left": 7.25, "healthy": True, "errors": {}}
BY_AGENT = {"source": {"store": {"kind": "etcd", "where": "etcd http://10.0.0.1:2379"}}}


def plain(markup: str) -> str:
    console = Console(width=400, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(markup)
    return console.export_text().strip()


def test_applied_host_without_agent_says_nothing(tmp_path):
    assert health.expected(tmp_path, {"source": {"cluster_file": "/etc/c.yaml"}}) is None
    assert health.summary(tmp_path, None, None) is None
    assert health.text(None) is None


@pytest.mark.parametrize("setup,applied,why", [
    ("agent.json", None, "an agent holds this host's lease (agent.json)"),
    (None, BY_AGENT, "this host was programmed by an agent on etcd http://10.0.0.1:2379"),
    ("mesh/launch.json", None, "this host belongs to a mesh (crossnet launch)"),
])
def test_not_running_where_it_should_is_said_clearly(tmp_path, setup, applied, why):
    if setup:
        (tmp_path / setup).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / setup).write_text("{}")
    h = health.summary(tmp_path, applied, None)
    assert h["running"] is False and h["expected"] is True
    assert why in h["problem"]
    line = plain(health.text(h))
    assert line.startswith("agent: NOT RUNNING — the agent is not running: " + why)
    assert ("crossnet launch" if "mesh" in why else "systemctl start crossnet-agent") in line


def test_running_agent_line():
    h = health.summary("/nonexistent", BY_AGENT, AGENT)
    assert h == {"running": True, "expected": True, "pid": 42, "synced": True, "synced_at": "1970-01-01T00:00:00.000Z",
                 "store": AGENT["store"], "store_reachable": True, "lease_ttl": 10, "lease_ttl_left": 7.25,
                 "healthy": True, "errors": {}, "problem": None}
    assert plain(health.text(h)) == ("agent: running (pid 42), synced 1970-01-01T00:00:00.000Z, "
                                     "store etcd http://10.0.0.1:2379 reachable, lease ttl 10 s (7.2 s left)")


def test_store_unreachable_and_not_synced():
    h = health.summary("/x", None, {**AGENT, "healthy": False, "errors": {"watch": "[Errno 111] refused"}})
    assert h["store_reachable"] is False and h["problem"].startswith("store unreachable (watch: [Errno 111] refused)")
    text = plain(health.text(h))
    assert "store etcd http://10.0.0.1:2379 unreachable" in text and "[Errno 111] refused" in text  # not markup
    h = health.summary("/x", None, {**AGENT, "synced": False, "errors": {"sync": "peer h2: no route"}})
    text = plain(health.text(h))
    assert "not synced" in text and "errors: sync: peer h2: no route" in text and "has not synced yet" in text


def test_lease_left():
    assert health.lease_left(SimpleNamespace(lease=None)) is None
    assert health.lease_left(SimpleNamespace(lease=SimpleNamespace(ttl=10), lease_renewed=time.monotonic() - 3)) \
        == pytest.approx(7, abs=0.5)


def test_status_says_the_agent_is_not_running(tmp_path):
    """`crossnet status` on a host whose state says an agent manages it (agent.json) but
    nothing is programmed and no agent answers: the error says the agent is not running
    and how to start it (it said "run `crossnet apply` first")."""
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    (state / "agent.json").write_text(json.dumps({"subnet": "10.32.1.0/24"}))
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(state), "status"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("crossnet: error: the agent is not running: an agent holds this host's lease "
                                  "(agent.json); start it: `systemctl start crossnet-agent`"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
