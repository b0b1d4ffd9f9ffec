"""Helpers for the agent end-to-end tests in test_agent_backends.py and
test_agent_restart.py: labs named ``fg`` + 4 characters, and test_agent's Cluster
driving agents the lab started (``--store etcd``) or agents on other stores.

Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from crossnet.lab.etcd import lab_etcd, start_agent, wait_agent_ready
from tests.conftest import LabFactory
from tests.e2e.test_agent import AGENT_ARGS, PREFIX, Cluster

MARK = "fg-agent-e2e"  # in the lab manifest's extra: what the sweep may remove


class FgLabFactory(LabFactory):
    """LabFactory whose labs are named `fg` + 4 random characters and marked in their
    manifest; cleanup() removes them, the sweep only removes marked ones."""

    PREFIX = "fg"
    SUFFIX_LEN = 4

    def __call__(self, *args, extra: dict | None = None, **kw):
        return super().__call__(*args, extra={**(extra or {}), "test": MARK}, **kw)

    @classmethod
    def sweepable(cls, manifest: dict) -> bool:
        return (manifest.get("extra") or {}).get("test") == MARK


def module_factory(request: pytest.FixtureRequest) -> FgLabFactory:
    """A factory for a module-scoped fixture (`lab_sweep` is session-scoped: request it too)."""
    return FgLabFactory.for_test(request)


def launched_lab(request: pytest.FixtureRequest, hosts: int = 4, underlay: str = "l3", containers: int = 0):
    """A vxlan lab without any store, for a module-scoped fixture (`yield from`): the
    tests type `crossnet launch` themselves; every host's is stopped at the end."""
    lab = module_factory(request)(hosts=hosts, underlay=underlay, backend="vxlan", containers=containers,
                                  apply=False)
    yield lab
    for h in lab.plan.hosts:
        lab.crossnet(h.name, "stop", check=False, timeout=60)


class LabCluster(Cluster):
    """test_agent's Cluster on a lab built by `lab up --store etcd`: the lab started etcd
    and the agents; restarted agents get the host's service environment (OVS) too."""

    def __init__(self, lab, etcd=None, ttl: int | None = None):
        super().__init__(lab, etcd if etcd is not None else lab_etcd(lab.plan))
        self.ttl = ttl

    def agent_args(self) -> list[str]:
        args = list(AGENT_ARGS)
        if self.ttl is not None:
            args[args.index("--ttl") + 1] = str(self.ttl)
        return args

    def start(self, h, *extra, prefix: str = PREFIX, wait: bool = True):
        from crossnet.lab.services import host_env

        hp = self.host(h)
        proc = start_agent(hp.netns, hp.state_dir, self.etcd.url, h, self.log(h), iface=hp.ifname, prefix=prefix,
                           extra=[*self.agent_args(), *extra], env=host_env(self.plan, hp), plan=self.plan)
        self.procs[h] = proc
        if wait:
            return wait_agent_ready(hp.state_dir, timeout=60, proc=proc, log_path=self.log(h))
        return proc

    def load_containers(self) -> None:
        """host -> address of its first container, from the lab's `crossnet status`."""
        for h, st in self.lab.statuses().items():
            first = self.host(h).containers[0]
            for c in st.get("containers") or []:
                if os.path.basename(str(c.get("netns") or "")) == first or c.get("id") == first:
                    self.containers[h] = str(c["address"]).split("/")[0]

    def log_size(self, h) -> int:
        try:
            return os.path.getsize(self.log(h))
        except OSError:
            return 0

    def log_since(self, h, offset: int) -> str:
        with open(self.log(h), "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")


def synced_changes(log_text: str) -> list[int]:
    """The change counts of the agent's full syncs ("synced at revision N: P peer(s), C change(s)")."""
    return [int(c) for c in re.findall(r"synced at revision \d+: \d+ peer\(s\), (\d+) change\(s\)", log_text)]


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until truthy (bounded); AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def continuous_ping(src_netns: str, dst: str, count: int, interval: float = 0.2,
                    quiet: bool = True) -> subprocess.Popen:
    """A bounded ping (at most `count` packets, `count * interval + 10` s) in a container
    namespace; `quiet=False`: one line per reply too (for :func:`lost_seqs`)."""
    deadline = int(count * interval + 10)
    return subprocess.Popen(["ip", "netns", "exec", src_netns, "ping", "-n", *(["-q"] if quiet else []), "-c",
                             str(count), "-i", str(interval), "-W", "1", "-w", str(deadline), dst],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def end_ping(proc: subprocess.Popen, timeout: float = 30) -> str:
    """Stop a continuous ping early (SIGINT: it prints its summary) and return its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return out


def ping_stats(out: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def lost_seqs(out: str) -> list[int]:
    """The sequence numbers of a `continuous_ping(quiet=False)` that got no reply, the
    last one sent excepted (its reply may still have been on its way when ping was stopped)."""
    sent, _ = ping_stats(out)
    got = {int(m) for m in re.findall(r"icmp_seq=(\d+)", out)}
    return [s for s in range(1, sent) if s not in got]


def crossnet_in(netns: str, state_dir: str, *args: str, env: dict | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    """`crossnet --state-dir STATE ARGS` in a lab namespace."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "crossnet", "--state-dir", state_dir, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)

