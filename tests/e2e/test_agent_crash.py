"""The agent programs a host through the same write-ahead journal as `crossnet apply`:
killed (SIGKILL) at any crash point of its first full sync, `crossnet reset` restores
the host exactly as it was (no crossnet device left, `ip_forward` back to its old value),
and an agent started again completes the job.

Without the journal, a kill after the bridge or the VXLAN device was made and before
applied.json was written left them — and ip_forward=1 — with no record: reset removed
nothing. Uses the test hook CROSSNET_TEST_CRASH_AT=N (crossnet.state.crash_point) and
an agent on the lab's cluster file (no etcd needed); labs named `fg` + 4 characters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossnet.lab.etcd import agent_status
from tests.e2e.agentlab import FgLabFactory
from tests.e2e.crashsteps import killed_at_every_step
from tests.e2e.test_agent_stores import StaticCluster
from tests.e2e.test_bridge_takeover import diff, full_snapshot, ping, run

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

MAX_STEPS = 59  # crash points tried at most


@pytest.fixture
def fg_lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> FgLabFactory:
    return FgLabFactory.for_test(request)


def start_agent(c: StaticCluster, h: str, crash_at: int | None) -> subprocess.Popen:
    hp = c.host(h)
    Path(hp.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    argv = ["ip", "netns", "exec", hp.netns, "env", *env, sys.executable, "-m", "crossnet", "--state-dir",
            hp.state_dir, "agent", "-f", c.cluster_file, "--name", h, "--iface", hp.ifname, "--resync", "60"]
    with open(c.log(h), "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def killed_or_synced(proc: subprocess.Popen, state_dir: str, timeout: float = 60) -> bool:
    """True when the agent killed itself, False when it synced (it is then stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.returncode == -signal.SIGKILL, f"agent exited with {proc.returncode}"
            return True
        st = agent_status(state_dir, timeout=2.0)
        if st and st.get("synced"):
            proc.send_signal(signal.SIGTERM)  # the data plane stays
            proc.wait(timeout=30)
            return False
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("agent neither synced nor killed itself in time")


def state_files(state_dir: str) -> set[str]:
    d = Path(state_dir)
    return {p.name for p in d.iterdir() if p.name in ("applied.json", "journal.json")} if d.exists() else set()


def test_agent_killed_at_every_step_of_its_first_sync_then_reset_restores(fg_lab_factory):
    lab = fg_lab_factory(hosts=2, backend="vxlan", containers=0, apply=False)
    c = StaticCluster(lab, os.path.join(lab.plan.lab_dir, "agents-cluster.yaml"))
    c.write_file(["h1", "h2"])
    h1, h2 = c.host("h1"), c.host("h2")
    original = full_snapshot(h1.netns)
    assert original["sysctls"]["net.ipv4.ip_forward"] == "0"

    def first_sync(n: int) -> int:
        return -signal.SIGKILL if killed_or_synced(start_agent(c, "h1", n), h1.state_dir) else 0

    def recover(n: int) -> None:
        reset = run(lab, "h1", "reset")
        assert reset.returncode == 0, (n, reset.stderr)
        assert diff(original, full_snapshot(h1.netns)) == [], f"agent killed at step {n}, then reset"
        assert state_files(h1.state_dir) == set(), n
        assert ping(h1.netns, h2.address), n
        # an interrupted sync is also completed by the next agent: it must sync and reset clean
        if n % 3 == 1:
            again = start_agent(c, "h1", None)
            assert killed_or_synced(again, h1.state_dir) is False, n
            assert state_files(h1.state_dir) == {"applied.json"}, n
            assert run(lab, "h1", "reset").returncode == 0
            assert diff(original, full_snapshot(h1.netns)) == [], f"agent killed at step {n}, agent again, reset"

    killed = killed_at_every_step(first_sync, recover, MAX_STEPS, "the agent's first sync") - 1
    synced = full_snapshot(h1.netns)
    assert synced["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert run(lab, "h1", "reset").returncode == 0
    assert diff(original, full_snapshot(h1.netns)) == []
    # journal, bridge, its address, vxlan device, sysctl, peer objects, record: several steps
    print(f"agent killed at each of its {killed} steps")
    assert killed >= 4, killed
