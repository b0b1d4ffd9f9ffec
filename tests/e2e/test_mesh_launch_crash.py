"""End to end: `crossnet launch --token T ADDR` (a joining host) killed at every step.

The join writes the member certificate, the host's launch.json, then (under the voter
lock) runs etcd's `member add`, records its role and starts the supervisor (etcd with
--initial-cluster-state existing, the agent). Killed anywhere (test hook
CROSSNET_TEST_CRASH_AT=N: the command SIGKILLs itself at its N-th crash point), the
cluster must not stay without quorum: a 1-voter cluster that got a second voter which
never started has lost it. `crossnet launch` run again on that host completes the join
(or refuses in one line a state the documented reset -- removing <state-dir>/mesh --
clears, the cluster untouched); then `stop --release` gives the 1-voter cluster back.
A 2-host L3 lab: h1 the first host, h2 the joiner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.agentlab import module_factory

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

MAX_STEPS = 10


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    lab = module_factory(request)(hosts=2, underlay="l3", backend="vxlan", containers=0, apply=False)
    yield lab
    for h in lab.plan.hosts:
        lab.crossnet(h.name, "stop", check=False, timeout=60)


def _launch(lab, host: str, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run(host, ["env", *env, sys.executable, "-m", "crossnet", "launch", "--name", host, *args],
                   timeout=150)


def _mesh(lab, host: str) -> dict:
    return json.loads(lab.crossnet(host, "status", "-o", "json", timeout=60).stdout)["mesh"]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not true within {timeout}s (last: {last!r})")


def _members(lab) -> list[str] | None:
    """h1's view: the member names once its store answers (None: quorum lost)."""
    st = _mesh(lab, "h1")
    return sorted(m["name"] for m in st["members"]) if st["store"] == "ok" else None


def test_a_joiner_killed_at_every_step_completes_on_the_next_launch(lab):
    res = _launch(lab, "h1")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "crossnet launch --token" in ln).split()
    token, h1 = line[line.index("--token") + 1], line[-1]
    h2_mesh = Path(lab.plan.host("h2").state_dir) / "mesh"
    for n in range(1, MAX_STEPS + 1):
        res = _launch(lab, "h2", "--token", token, h1, crash_at=n)
        if res.returncode == 0:
            assert n > 4, f"the join passed only {n - 1} crash points"
            break
        assert res.returncode == -9 or res.returncode == 137, (n, res.returncode, res.stderr)
        again = _launch(lab, "h2", *(("--token", token, h1) if n % 2 else ()))  # either command the user may type
        if again.returncode != 0:  # nothing of the cluster's was touched: one line, the reset path named
            err = again.stderr.strip().splitlines()
            assert len(err) == 1 and "half-made mesh state; remove it first" in err[0], (n, err)
            assert _members(lab) == ["h1"], n
            shutil.rmtree(h2_mesh)
            again = _launch(lab, "h2", "--token", token, h1)
        assert again.returncode == 0, (n, again.stderr)
        assert "mesh as a voter" in again.stdout, (n, again.stdout)
        _wait(lambda: _members(lab) == ["h1", "h2"], 60, f"step {n}: h2 a started member")
        st = _mesh(lab, "h2")
        assert st["store"] == "ok" and all(m["healthy"] for m in st["members"]), (n, st)
        rel = lab.crossnet("h2", "stop", "--release", timeout=90, check=False)
        assert rel.returncode == 0, (n, rel.stderr)
        _wait(lambda: _members(lab) == ["h1"], 60, f"step {n}: h2 released, h1 alone with its quorum")
        assert not h2_mesh.exists(), n
    else:
        raise AssertionError(f"the join still crashed at step {MAX_STEPS}")
    _wait(lambda: _members(lab) == ["h1", "h2"], 60, "the uninterrupted join")
