"""End to end: `crossnet expose` / `crossnet hide` killed at every step.

expose records the choice (expose.json), then programs the host through apply's path
(journal, the SNAT table, applied.json). Killed at its N-th crash point (test hook
CROSSNET_TEST_CRASH_AT=N, the process SIGKILLs itself), the host is completed by running
the command again, undone by the opposite command, or reset to exactly what it was before
its first apply. One host lab (host-gw: exposing gives it an SNAT table); the comparisons
are of links, addresses, routes of every table and the whole nft ruleset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet.lab.manager import Lab

from .crashsteps import killed_at_every_step
from .kstate import diff, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

MAX_STEPS = 30


def crossnet(lab: Lab, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run("h1", ["env", *env, sys.executable, "-m", "crossnet", *args], timeout=60)


def state_files(lab: Lab) -> set[str]:
    d = Path(lab.plan.host("h1").state_dir)
    return {p.name for p in d.iterdir() if p.name in ("applied.json", "journal.json", "expose.json")}


def exposed(lab: Lab) -> bool:
    out = crossnet(lab, "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    (net,) = json.loads(out.stdout)["expose"]["networks"]
    return net["exposed"] and net["programmed"]


@pytest.fixture
def expose_lab(make_lab):
    """(lab, h1 before its apply, h1 applied and not exposed, h1 applied and exposed)."""
    lab = make_lab(hosts=1, underlay="l2", backend="host-gw", containers=0, apply=False)
    netns = lab.plan.host("h1").netns
    original = snapshot(netns)
    lab.apply("h1")
    hidden = snapshot(netns)
    assert crossnet(lab, "expose").returncode == 0
    shown = snapshot(netns)
    assert "crossnet-expose" in shown["nft"] and "crossnet-expose" not in hidden["nft"]
    assert crossnet(lab, "hide").returncode == 0
    assert diff(hidden, snapshot(netns)) == []
    return lab, original, hidden, shown


@pytest.mark.parametrize("command", ["expose", "hide"])
def test_killed_at_every_step_then_again_undone_or_reset(expose_lab, command):
    """For N = 1, 2, ...: `expose` (or `hide` of an exposed host) killed at its N-th crash
    point, then (a) the same command again: the host as it completes it, status agrees;
    (b) killed again, the opposite command: the host as before the first; (c) killed
    again, reset: the host as before its apply, no state file left."""
    lab, original, hidden, shown = expose_lab
    netns = lab.plan.host("h1").netns
    start, done, other = (hidden, shown, "hide") if command == "expose" else (shown, hidden, "expose")

    def prepare() -> None:
        if command == "hide":
            assert crossnet(lab, "expose").returncode == 0
        assert diff(start, snapshot(netns)) == []

    def recover(n: int) -> None:
        again = crossnet(lab, command)
        assert again.returncode == 0, (n, again.stderr)
        assert diff(done, snapshot(netns)) == [], f"{command} killed at step {n}, then {command}"
        assert exposed(lab) == (command == "expose") and "journal.json" not in state_files(lab), n

        assert crossnet(lab, other).returncode == 0
        prepare()
        assert crossnet(lab, command, crash_at=n).returncode == -signal.SIGKILL
        back = crossnet(lab, other)
        assert back.returncode == 0, (n, back.stderr)
        assert diff(start, snapshot(netns)) == [], f"{command} killed at step {n}, then {other}"
        assert exposed(lab) == (command == "hide") and "journal.json" not in state_files(lab), n

        prepare()
        assert crossnet(lab, command, crash_at=n).returncode == -signal.SIGKILL
        assert crossnet(lab, "reset").returncode == 0, n
        assert diff(original, snapshot(netns)) == [], f"{command} killed at step {n}, then reset"
        assert state_files(lab) == set(), n
        lab.apply("h1")
        prepare()

    prepare()
    n = killed_at_every_step(lambda n: crossnet(lab, command, crash_at=n), recover, MAX_STEPS, command)
    assert diff(done, snapshot(netns)) == [] and exposed(lab) == (command == "expose")
    assert n >= 4, n  # expose.json, journal, the table, applied.json
