"""`crossnet bench … --cpu N` for real (crossnet.bench.traffic): two lab hosts, one
iperf3 run of 1 s pinned to a CPU and one unpinned; the kernel's Cpus_allowed_list of
the client and the server, read while the data flows, shows where each ran. The
throughput itself is a benchmark figure, never asserted here (only that there was one)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from crossnet.bench import traffic

pytestmark = pytest.mark.e2e


def _allowed(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _clients(netns: str, addr: str) -> list[int]:
    """Pids of `iperf3 -c addr` in namespace netns (after `ip netns exec` exec'd it:
    same pid; other labs on this machine may use the same addresses)."""
    want = os.stat(f"/run/netns/{netns}").st_ino
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if not (argv and os.path.basename(argv[0]) == b"iperf3" and b"-c" in argv and addr.encode() in argv):
                continue
            if os.stat(d / "ns" / "net").st_ino == want:
                out.append(int(d.name))
        except OSError:
            continue
    return out


class Watch:
    """Samples the client's and the server's CPU list every 20 ms while a run goes."""

    def __init__(self, netns: str, addr: str, server_pid: int):
        self.netns, self.addr, self.server_pid = netns, addr, server_pid
        self.client: list[str] = []
        self.server: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.02):
            for pid in _clients(self.netns, self.addr):
                got = _allowed(pid)
                if got:
                    self.client.append(got)
                    srv = _allowed(self.server_pid)
                    if srv:
                        self.server.append(srv)

    def __enter__(self) -> "Watch":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("needs root (lab namespaces)")
    if not shutil.which("iperf3"):
        pytest.skip("needs iperf3")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: pinned and unpinned look alike")
    import secrets

    from crossnet.lab.manager import down, up
    from crossnet.lab.topology import LabOptions

    name = "tf" + secrets.token_hex(3)[:5]
    try:
        lab = up(LabOptions(name=name, hosts=2, underlay="l2", containers=0), apply=False)
        h1, h2 = lab.hosts[:2]
        traffic.wait_reachable(h1.netns, h2.address)
        yield h1, h2
    finally:
        down(name)


def test_pinned_client_and_server_run_on_that_cpu(hosts):
    h1, h2 = hosts
    cpu = min(os.sched_getaffinity(0))
    with traffic.IperfServer(h2.netns, cpu=cpu) as srv:
        assert _allowed(srv.proc.pid) == str(cpu)  # pinned from its start, before any client
        with Watch(h1.netns, h2.address, srv.proc.pid) as watch:
            gbps, _retr = traffic.iperf_gbps(h1.netns, h2.address, 1.0, cpu=cpu)
        after = _allowed(srv.proc.pid)
    assert gbps > 0
    # iperf3 pins itself once started: every sample after the first few is the CPU
    assert len(watch.client) >= 10, watch.client
    assert set(watch.client[3:]) == {str(cpu)}, watch.client
    assert set(watch.server[3:]) == {str(cpu)} and after == str(cpu), (watch.server, after)


def test_unpinned_by_default(hosts):
    h1, h2 = hosts
    every = _allowed(os.getpid())
    with traffic.IperfServer(h2.netns) as srv:
        with Watch(h1.netns, h2.address, srv.proc.pid) as watch:
            gbps, _retr = traffic.iperf_gbps(h1.netns, h2.address, 1.0)
    assert gbps > 0 and len(watch.client) >= 10
    assert set(watch.client) == {every} and set(watch.server) == {every}, (watch.client, watch.server, every)
