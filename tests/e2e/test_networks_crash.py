"""End to end: adding and removing a named network (docs/networks.md) on a host that has
containers attached, the apply killed at every step.

One host (vxlan), two container namespaces: c1 on the top-level network, c2 on `blue`.
Adding blue (c1 attached) and removing it (c1 and c2 attached) are each killed at their
N-th crash point (test hook CROSSNET_TEST_CRASH_AT=N, the process SIGKILLs itself), for
every N until the apply runs through; then either the same apply again completes it (the
host exactly as an uninterrupted apply leaves it, blue's container detached with it), or
reset leaves the host exactly as before its first apply: links, addresses, routes of
every table, the nft ruleset, no state file, no container interface.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab

from .crashsteps import killed_at_every_step
from .kstate import diff, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

BLUE = "10.33.0.0/16"
MAX_STEPS = 60


def crossnet(lab: Lab, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run("h1", ["env", *env, sys.executable, "-m", "crossnet", *args], timeout=60)


def apply(lab: Lab, path: Path, crash_at: int | None = None) -> subprocess.CompletedProcess:
    return crossnet(lab, "apply", "-f", str(path), "--host", "h1", crash_at=crash_at)


def ok(res: subprocess.CompletedProcess, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stderr.strip()}"


def state_left(lab: Lab) -> list[str]:
    d = Path(lab.plan.host("h1").state_dir)
    return sorted(p.name for p in d.iterdir()
                  if p.name in ("applied.json", "journal.json", "ipam.json", "networks")) if d.exists() else []


def container_links(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True, check=True)
    return sorted(link["ifname"] for link in json.loads(out.stdout))


class NetLab:
    def __init__(self, make_lab):
        self.lab = make_lab(hosts=1, underlay="l2", backend="vxlan", containers=2, apply=False)
        self.netns = self.lab.plan.host("h1").netns
        self.c1, self.c2 = self.lab.plan.host("h1").containers
        cluster = yaml.safe_load(Path(self.lab.plan.cluster_file).read_text())
        self.base = Path(self.lab.plan.lab_dir) / "base.yaml"
        self.base.write_text(yaml.safe_dump(cluster))
        self.blue = Path(self.lab.plan.lab_dir) / "blue.yaml"
        self.blue.write_text(yaml.safe_dump({**cluster, "networks": [{"name": "blue", "network": BLUE}]}))
        self.original = snapshot(self.netns)
        self.c1_original = container_links(self.c1)
        self.base_state()
        self.with_c1 = snapshot(self.netns)  # base applied, c1 attached
        self.blue_state()
        self.with_blue = snapshot(self.netns)  # blue applied, c1 and c2 attached
        ok(apply(self.lab, self.base), "apply without blue")
        assert diff(self.with_c1, snapshot(self.netns)) == []
        assert container_links(self.c2) == self.c1_original  # blue's container detached with it

    def base_state(self) -> None:
        ok(apply(self.lab, self.base), "apply")
        ok(crossnet(self.lab, "attach", self.c1), "attach c1")

    def blue_state(self) -> None:
        ok(apply(self.lab, self.blue), "apply with blue")
        ok(crossnet(self.lab, "attach", self.c2, "--network", "blue"), "attach c2 to blue")

    def reset_is_original(self, n: int, what: str) -> None:
        ok(crossnet(self.lab, "reset"), f"{what} killed at step {n}, then reset")
        assert diff(self.original, snapshot(self.netns)) == [], f"{what} killed at step {n}, then reset"
        assert state_left(self.lab) == [], (n, state_left(self.lab))
        assert container_links(self.c1) == container_links(self.c2) == self.c1_original, n


@pytest.mark.parametrize("then", ["apply", "reset"])
def test_adding_a_network_killed_at_every_step(make_lab, then):
    t = NetLab(make_lab)

    def recover(n: int) -> None:
        if then == "apply":
            ok(apply(t.lab, t.blue), f"adding blue killed at step {n}, then apply")
            ok(crossnet(t.lab, "attach", t.c2, "--network", "blue"), f"step {n}: attach c2 to blue")
            assert diff(t.with_blue, snapshot(t.netns)) == [], f"adding blue killed at step {n}, then apply"
            ok(apply(t.lab, t.base), f"step {n}: remove blue again")
            assert diff(t.with_c1, snapshot(t.netns)) == [], n
        else:
            t.reset_is_original(n, "adding blue")
            t.base_state()

    n = killed_at_every_step(lambda n: apply(t.lab, t.blue, crash_at=n), recover, MAX_STEPS, "apply")
    assert n >= 5, n


@pytest.mark.parametrize("then", ["apply", "reset"])
def test_removing_a_network_with_containers_killed_at_every_step(make_lab, then):
    t = NetLab(make_lab)
    t.blue_state()

    def recover(n: int) -> None:
        if then == "apply":
            ok(apply(t.lab, t.base), f"removing blue killed at step {n}, then apply")
            assert diff(t.with_c1, snapshot(t.netns)) == [], f"removing blue killed at step {n}, then apply"
            assert container_links(t.c2) == t.c1_original, n  # blue's container detached
            assert not (Path(t.lab.plan.host("h1").state_dir) / "networks" / "blue").exists(), n
        else:
            t.reset_is_original(n, "removing blue")
            t.base_state()
        t.blue_state()

    n = killed_at_every_step(lambda n: apply(t.lab, t.base, crash_at=n), recover, MAX_STEPS, "apply")
    assert diff(t.with_c1, snapshot(t.netns)) == []
    assert n >= 5, n


def test_reset_killed_at_every_step_then_reset_again(make_lab):
    """reset of a host with containers on the top-level network and on blue, blue exposed
    too: killed at its N-th crash point (a container's detach, a named network's, each
    resource removed), the next reset leaves the host exactly as before its first apply."""
    t = NetLab(make_lab)

    def reset(n: int) -> subprocess.CompletedProcess:
        t.blue_state()
        ok(crossnet(t.lab, "expose", "--network", "blue"), "expose blue")
        assert "crossnet-expose-blue" in snapshot(t.netns)["nft"]
        return crossnet(t.lab, "reset", crash_at=n)

    def recover(n: int) -> None:
        t.reset_is_original(n, "reset")
        t.base_state()

    n = killed_at_every_step(reset, recover, MAX_STEPS, "reset")
    assert diff(t.original, snapshot(t.netns)) == [] and state_left(t.lab) == []
    assert n >= 10, n
