"""End to end: `crossnet launch --token T ADDR` (a joining host) killed at every step.

The join writes the member certificate, the host's launch.json, then (under the voter
lock) runs etcd's `member add`, records its role and starts the supervisor (etcd with
--initial-cluster-state existing, the agent). Killed anywhere (test hook
CROSSNET_TEST_CRASH_AT=N: the command SIGKILLs itself at its N-th crash point), the
cluster must not stay without quorum: a 1-voter cluster that got a second voter which
never started has lost it. `crossnet launch` run again on that host completes the join
(killed before launch.json, with the certificate only, the cluster untouched: the join
command again, which removes that state first; `crossnet launch` alone is refused in one
line); then `stop --release` gives the 1-voter cluster back.
A 3-host L3 lab: h1 the first host, h2 the joiner (h3 the third voter for `forget`); a
1-host lab for the first launch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.agentlab import launched_lab, wait_for
from tests.e2e.crashsteps import killed_at_every_step

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

MAX_STEPS = 10
KILLED = (-9, 137)  # SIGKILL: the process itself, or a shell's report of it


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    yield from launched_lab(request, hosts=3)


def _launch(lab, host: str, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run(host, ["env", *env, sys.executable, "-m", "crossnet", "launch", "--name", host, *args],
                   timeout=150)


def _tree(path: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under path: its lstat mode and a file's bytes."""
    return {str(p.relative_to(path)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in sorted(path.rglob("*"))}


def _mesh(lab, host: str) -> dict:
    return json.loads(lab.crossnet(host, "status", "-o", "json", timeout=60).stdout)["mesh"]


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
    half_made: list[int] = []  # the steps killed before launch.json

    def recover(n: int) -> None:
        # whatever step it was killed at, h1 keeps its quorum: a member added by a join is a
        # learner until its host promotes it (an unstarted voter had cost the 1-voter cluster it)
        assert _mesh(lab, "h1")["store"] == "ok", (n, _mesh(lab, "h1"))
        if not (h2_mesh / "launch.json").exists():  # killed before it: nothing of the cluster's was touched
            assert (h2_mesh / "pki" / "member.crt").exists(), n  # (the state the rerun must complete)
            half_made.append(n)
            before = _tree(h2_mesh)
            alone = _launch(lab, "h2")  # never the first host of a new mesh: one line naming the join command
            err = alone.stderr.strip().splitlines()
            assert alone.returncode == 2 and err == [
                f"crossnet: error: --token: {h2_mesh} holds the half-made state of an interrupted join; run the join "
                f"command again to complete it (`crossnet launch --token TOKEN ADDR`)"], (n, err)
            assert _tree(h2_mesh) == before and _members(lab) == ["h1"], n
            again = _launch(lab, "h2", "--token", token, h1)  # the same join again (its name and address reserved)
            assert "removing the half-made mesh state of an interrupted launch" in again.stderr, (n, again.stderr)
        else:
            again = _launch(lab, "h2", *(("--token", token, h1) if n % 2 else ()))  # either command the user may type
        assert again.returncode == 0, (n, again.stderr)
        assert "mesh as a voter" in again.stdout, (n, again.stdout)
        wait_for(lambda: _members(lab) == ["h1", "h2"], 60, f"step {n}: h2 a started member", interval=0.5)
        st = _mesh(lab, "h2")
        assert st["store"] == "ok" and all(m["healthy"] for m in st["members"]), (n, st)
        rel = lab.crossnet("h2", "stop", "--release", timeout=90, check=False)
        assert rel.returncode == 0, (n, rel.stderr)
        wait_for(lambda: _members(lab) == ["h1"], 60, f"step {n}: h2 released, h1 alone with its quorum", interval=0.5)
        assert not h2_mesh.exists(), n

    n = killed_at_every_step(lambda n: _launch(lab, "h2", "--token", token, h1, crash_at=n), recover, MAX_STEPS,
                             "the join", killed=KILLED)
    assert n > 4, f"the join passed only {n - 1} crash points"
    assert half_made == [1], half_made  # (the first crash point: certificate saved, launch.json not yet)
    wait_for(lambda: _members(lab) == ["h1", "h2"], 60, "the uninterrupted join", interval=0.5)


def _join(lab, host: str, token: str, via: str, members: tuple[str, ...] = ("h1", "h2")) -> None:
    res = _launch(lab, host, "--token", token, via)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: _members(lab) == list(members), 60, f"{host} joined", interval=0.5)


def test_stop_release_killed_at_every_step_is_completed_by_the_next_stop(lab):
    """stop --release writes its marker, then SIGTERMs the supervisor (which releases the
    host: records, member, data plane, state dir). Killed after the marker, a later plain
    `stop` (or systemd's SIGTERM to a restarted supervisor) must not release the host;
    killed anywhere, `stop --release` again completes the release."""
    token = next(ln for ln in lab.crossnet("h1", "token", "create", "--ttl", "10m").stdout.splitlines()
                 if "--token" in ln).split()
    token, h1 = token[token.index("--token") + 1], token[-1]
    h2_mesh = Path(lab.plan.host("h2").state_dir) / "mesh"
    assert _members(lab) == ["h1", "h2"]  # as the test before left it
    res = lab.run("h2", ["env", "CROSSNET_TEST_CRASH_AT=1", sys.executable, "-m", "crossnet", "stop", "--release"],
                  timeout=90)
    assert res.returncode in (-9, 137), res
    res = lab.crossnet("h2", "stop", timeout=90)
    assert "data plane left in place" in res.stdout
    assert (h2_mesh / "launch.json").exists(), "a plain stop released the host"
    res = _launch(lab, "h2")
    assert res.returncode == 0 and "is back in the mesh as a voter" in res.stdout, res
    wait_for(lambda: _members(lab) == ["h1", "h2"], 60, "h2 back", interval=0.5)

    def release(n: int) -> subprocess.CompletedProcess:
        return lab.run("h2", ["env", f"CROSSNET_TEST_CRASH_AT={n}", sys.executable, "-m", "crossnet", "stop",
                              "--release"], timeout=90)

    def recover(n: int) -> None:
        again = lab.crossnet("h2", "stop", "--release", timeout=90)
        assert again.stdout.strip() in ("stopped and left the mesh", "crossnet launch is not running on this host")
        wait_for(lambda: not h2_mesh.exists(), 60, f"step {n}: h2's mesh state removed", interval=0.5)
        wait_for(lambda: _members(lab) == ["h1"], 60, f"step {n}: h2 released", interval=0.5)
        _join(lab, "h2", token, h1)

    n = killed_at_every_step(release, recover, MAX_STEPS, "stop --release", killed=KILLED)
    assert n > 2, f"stop passed only {n - 1} crash points"
    wait_for(lambda: _members(lab) == ["h1"], 60, "the uninterrupted release", interval=0.5)
    _join(lab, "h2", token, h1)


def test_forget_killed_at_every_step_is_completed_by_the_next_forget(lab):
    """forget revokes the host's certificate, removes its etcd member, then its records;
    killed between, `forget` again finishes (or says there is nothing left to forget)
    and h1 and h3 keep their quorum. (3 voters: with 2, one gone is a lost quorum and
    nothing can be removed.)"""
    token = next(ln for ln in lab.crossnet("h1", "token", "create", "--ttl", "10m").stdout.splitlines()
                 if "--token" in ln).split()
    token, h1 = token[token.index("--token") + 1], token[-1]
    h2_mesh = Path(lab.plan.host("h2").state_dir) / "mesh"
    _join(lab, "h3", token, h1, ("h1", "h2", "h3"))

    def forget(n: int) -> subprocess.CompletedProcess:
        assert _members(lab) == ["h1", "h2", "h3"]
        lab.crossnet("h2", "stop", timeout=90)  # h2 is gone
        return lab.run("h1", ["env", f"CROSSNET_TEST_CRASH_AT={n}", sys.executable, "-m", "crossnet", "forget", "h2"],
                       timeout=90)

    def recover(n: int) -> None:
        again = lab.crossnet("h1", "forget", "h2", timeout=90, check=False)
        if again.returncode != 0:
            err = again.stderr.strip().splitlines()
            assert len(err) == 1 and "no host 'h2' in this mesh" in err[0], (n, err)
        wait_for(lambda: _members(lab) == ["h1", "h3"], 60, f"step {n}: h2 forgotten", interval=0.5)
        st = _mesh(lab, "h1")
        assert [p["name"] for p in st["peers"]] == ["h1", "h3"], (n, st["peers"])
        shutil.rmtree(h2_mesh)  # a forgotten host comes back as a new one
        _join(lab, "h2", token, h1, ("h1", "h2", "h3"))

    n = killed_at_every_step(forget, recover, MAX_STEPS, "forget", killed=KILLED)
    assert n > 2, f"forget passed only {n - 1} crash points"
    wait_for(lambda: _members(lab) == ["h1", "h3"], 60, "the uninterrupted forget", interval=0.5)


def _netns_pids(lab, host: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", lab.plan.host(host).netns], capture_output=True, text=True,
                          check=True).stdout.split()


def _power_loss(lab, host: str) -> None:
    """SIGKILL to every process left in the host's namespace (its etcd member)."""
    pids = subprocess.run(["ip", "netns", "pids", lab.plan.host(host).netns], capture_output=True, text=True,
                          check=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not subprocess.run(["ip", "netns", "pids", lab.plan.host(host).netns], check=False,
                                       capture_output=True,
                                       text=True).stdout.split(), 10, "no process left")


def _first_launch_ok(lab) -> None:
    """h1 runs a 1-voter mesh: its supervisor runs, store ok, its agent holds h1's subnet
    (peer `up`), a token can be made."""
    def ok():
        st = _mesh(lab, "h1")
        return (st["running"] and st["store"] == "ok" and [m["name"] for m in st["members"]] == ["h1"]
                and [(p["name"], p["state"]) for p in st["peers"]] == [("h1", "up")])

    wait_for(ok, 60, "h1 running, programmed", interval=0.5)
    assert "crossnet launch --token" in lab.crossnet("h1", "token", "create", "--ttl", "5m").stdout


FOREGROUND_STEPS = 5  # launch --foreground's own crash points: launch_first's 2, the bootstrap's 3 (the
# agent's first sync follows in the same process: tests/e2e/test_agent_crash.py kills that one)


def test_a_first_launch_killed_at_every_step_completes_on_the_next_launch(lab_factory):
    """The first host: CA + member certificate, launch.json, the supervisor (detached:
    etcd --initial-cluster-state new, the network config and CA written into etcd, the
    agent), the token. Killed at each step of `crossnet launch` and of `crossnet launch
    --foreground` (whose supervisor is this very process: the bootstrap's steps too; killed
    alone, its etcd left running, or with it, a power loss), `crossnet launch` again
    completes the mesh; killed before launch.json (nothing else knows that CA yet) it
    removes the state the killed run left and makes the mesh anew."""
    lab = lab_factory(hosts=1, underlay="l2", backend="vxlan", containers=0, apply=False)
    h1_mesh = Path(lab.plan.host("h1").state_dir) / "mesh"
    completed: list[tuple[bool, int]] = []  # (foreground, step) of the runs killed before launch.json

    def run(n: int | None, foreground: bool) -> tuple[subprocess.Popen, str]:
        argv = ["env", *([f"CROSSNET_TEST_CRASH_AT={n}"] if n else []), sys.executable, "-m", "crossnet", "launch",
                "--name", "h1", *(["--foreground"] if foreground else [])]
        proc = subprocess.Popen(lab.argv("h1", argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True)
        out = ""
        while proc.poll() is None and "crossnet launch --token" not in out:
            out += proc.stdout.readline()
        return proc, out

    def release() -> None:
        assert lab.crossnet("h1", "stop", "--release", timeout=90).stdout.strip() == "stopped and left the mesh"
        assert not h1_mesh.exists()

    try:
        for foreground, steps in ((False, MAX_STEPS), (True, FOREGROUND_STEPS)):
            for n in range(1, steps + 1):
                proc, out = run(n, foreground)
                if not foreground and "crossnet launch --token" in out:  # every crash point passed
                    assert proc.wait(90) == 0 and n > 3, n
                    _first_launch_ok(lab)
                    release()
                    break
                assert proc.wait(90) == -9, (foreground, n, proc.returncode, out)
                if foreground and n % 2 == 0:  # a power loss takes its etcd member too; odd n: the
                    _power_loss(lab, "h1")  # supervisor alone was killed (OOM killer), its etcd left running
                half_made = not (h1_mesh / "launch.json").exists()  # its CA never shown to anyone
                assert not half_made or (h1_mesh / "pki" / "ca.key").exists(), (foreground, n)
                again = _launch(lab, "h1")
                assert again.returncode == 0, (foreground, n, again.stderr)
                if half_made:  # completed: the state the killed run left removed, the mesh made anew
                    assert "removing the half-made mesh state of an interrupted launch" in again.stderr, (n, again)
                    completed.append((foreground, n))
                _first_launch_ok(lab)
                release()
            else:
                assert foreground, f"the first launch still crashed at step {MAX_STEPS}"
        assert completed == [(False, 1), (True, 1)], completed  # (CA and certificate made, launch.json not yet)
        proc, _ = run(3, True)  # the supervisor killed alone once its etcd runs: `stop` ends that etcd too
        assert proc.wait(90) == -9 and _netns_pids(lab, "h1")
        assert lab.crossnet("h1", "stop").stdout.strip() == "crossnet launch is not running on this host"
        wait_for(lambda: not _netns_pids(lab, "h1"), 20, "the left etcd stopped")
        assert _launch(lab, "h1").returncode == 0
        _first_launch_ok(lab)
        release()
        proc, out = run(None, True)  # uninterrupted, in the foreground
        assert "crossnet launch --token" in out
        _first_launch_ok(lab)
        release()
        assert proc.wait(90) == 0
    finally:
        lab.crossnet("h1", "stop", check=False, timeout=60)


PROMOTE_STEPS = ("promote-recorded", "promote-added", "promote-saved", "learner-promoted")  # labelled crash points


def _role(lab, host: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(lab.plan.host(host).state_dir) / "mesh" / "launch.json").read_text())["role"]
    return None


def test_a_promotion_killed_at_every_step_completes_on_the_next_launch(lab_factory, tmp_path):
    """A client promotes itself when voters are missing: (under the voter lock) `member
    add`, its role recorded, its etcd started. Killed after `member add` (a 1-voter cluster
    plus this never-started voter has lost its quorum) or before etcd's first start, the
    next `crossnet launch` on that host must start the member it added (not add a second)
    or, killed before `member add`, come back as a client that promotes itself again.
    A 3-host L3 lab, `--voters 2`: h1 and h3 voters, h2 the client; h3 leaves (`stop
    --release`) and h2, its supervisor in the foreground with the test hook (the promotion
    runs in the supervisor; its crash points are labelled), is killed at each step."""
    lab = lab_factory(hosts=3, underlay="l3", backend="vxlan", containers=0, apply=False)
    res = _launch(lab, "h1", "--voters", "2")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "crossnet launch --token" in ln).split()
    token, h1 = line[line.index("--token") + 1], line[-1]
    procs: list[subprocess.Popen] = []
    try:
        for step in PROMOTE_STEPS:
            _join(lab, "h3", token, h1, ("h1", "h3"))  # 1 voter < 2: a voter
            res = _launch(lab, "h2", "--token", token, h1)
            assert res.returncode == 0 and "mesh as a client" in res.stdout, (step, res.stdout, res.stderr)
            lab.crossnet("h2", "stop", timeout=90)
            with open(tmp_path / f"h2-{step}.log", "wb") as logf:  # the foreground supervisor, the hook set
                proc = subprocess.Popen(lab.argv("h2", ["env", f"CROSSNET_TEST_CRASH_AT={step}", sys.executable, "-m",
                                                        "crossnet", "launch", "--foreground"]),
                                        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_for(lambda: (s := _mesh(lab, "h2"))["running"] and any(p["name"] == "h2" and p["last_seen"] is not None
                                                                       for p in s["peers"]),
                     60, f"{step}: h2's supervisor running, alive", interval=0.5)
            assert _role(lab, "h2") == "client"
            rel = lab.crossnet("h3", "stop", "--release", timeout=90, check=False)  # a voter is missing now
            assert rel.returncode == 0, (step, rel.stderr)
            assert proc.wait(120) == -9, (step, proc.returncode, (tmp_path / f"h2-{step}.log").read_text()[-2000:])
            assert _mesh(lab, "h1")["store"] == "ok", (step, _mesh(lab, "h1"))  # h2's member: a learner
            again = _launch(lab, "h2")
            assert again.returncode == 0, (step, again.stderr)
            wait_for(lambda: _role(lab, "h2") == "voter", 60, f"{step}: h2 a voter", interval=0.5)
            wait_for(lambda: _members(lab) == ["h1", "h2"], 60, f"{step}: h2 a started member, none added twice",
                     interval=0.5)
            st = _mesh(lab, "h2")
            assert st["store"] == "ok" and st["role"] == "voter", (step, st)
            assert sorted((m["name"], m["role"], m["healthy"]) for m in st["members"]) == [("h1", "voter", True),
                                                                                    ("h2", "voter", True)], (step, st)
            rel = lab.crossnet("h2", "stop", "--release", timeout=90, check=False)  # back to h1 alone
            assert rel.returncode == 0, (step, rel.stderr)
            wait_for(lambda: _members(lab) == ["h1"], 60, f"{step}: h2 released, h1 alone with its quorum",
                     interval=0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for h in ("h2", "h3", "h1"):
            lab.crossnet(h, "stop", check=False, timeout=60)


STALE_S = 10  # the voters' stale-learner bound for this test (CROSSNET_STALE_LEARNER_S; 300 s by default)


@pytest.mark.parametrize("crash_at,left", [(3, "joining"), (4, "voter")])
def test_a_learner_whose_host_never_started_it_is_removed_by_the_voters(lab_factory, crash_at, left):
    """h2 is killed right after its join's `member add` (crash point 3; 4: after recording
    `voter` + `learner`, before its supervisor started etcd): its learner (no name, never
    started) takes a voter's slot and, etcd 3.4's one learner, would make every join wait
    15 s and come in as a client. h1's supervisor (the bound shortened to STALE_S) removes
    it within the bound + its ticks, logging its peer URL; then h3 joins as a voter, and
    h2, launched again, recovers: `joining` re-adds itself, `voter` + `learner` (its
    member gone) is a client that promotes itself into the free slot."""
    import time

    lab = lab_factory(hosts=3, underlay="l3", backend="vxlan", containers=0, apply=False)
    try:
        res = lab.run("h1", ["env", f"CROSSNET_STALE_LEARNER_S={STALE_S}", sys.executable, "-m", "crossnet", "launch",
                             "--name", "h1"], timeout=150)
        assert res.returncode == 0, res.stderr
        line = next(ln for ln in res.stdout.splitlines() if "crossnet launch --token" in ln).split()
        token, h1 = line[line.index("--token") + 1], line[-1]
        killed = _launch(lab, "h2", "--token", token, h1, crash_at=crash_at)
        assert killed.returncode in KILLED, (killed.returncode, killed.stderr)
        t0 = time.monotonic()
        assert _role(lab, "h2") == left
        assert _members(lab) == ["(starting)", "h1"]  # h2's learner, never started; h1 keeps its quorum
        wait_for(lambda: _members(lab) == ["h1"], STALE_S + 3 * 5 + 10, "h1 removed h2's stale learner",
                 interval=0.5)
        took = time.monotonic() - t0
        assert took >= STALE_S - 1, took  # not before the bound (it was first seen at most a tick after the kill)
        h2 = lab.plan.host("h2").address.split("/")[0]
        log = (Path(lab.plan.host("h1").state_dir) / "mesh" / "launch.log").read_text()
        removed = [ln for ln in log.splitlines() if "removed the etcd learner" in ln]
        assert len(removed) == 1 and f"https://{h2}:2380" in removed[0], removed
        t0 = time.monotonic()
        joined = _launch(lab, "h3", "--token", token, h1)
        join_s = time.monotonic() - t0
        assert joined.returncode == 0 and "mesh as a voter" in joined.stdout, (joined.stdout, joined.stderr)
        wait_for(lambda: _members(lab) == ["h1", "h3"], 60, "h3 a started voter", interval=0.5)
        print(f"stale learner removed {took:.1f}s after the kill (bound {STALE_S}s); h3's join took {join_s:.1f}s")
        again = _launch(lab, "h2")
        assert again.returncode == 0, (again.stdout, again.stderr)
        if left == "joining":
            assert "mesh as a voter" in again.stdout, again.stdout
        voters = [("h1", "voter", True), ("h2", "voter", True), ("h3", "voter", True)]
        wait_for(lambda: (st := _mesh(lab, "h1"))["store"] == "ok" and sorted(
            (m["name"], m["role"], m["healthy"]) for m in st["members"]) == voters, 60, "h2 back, a started voter",
            interval=0.5)
    finally:
        for h in ("h2", "h3", "h1"):
            lab.crossnet(h, "stop", check=False, timeout=60)
