"""Bounded traffic between two network namespaces: iperf3 TCP throughput and ping
RTT. Every run is limited in count and time; servers are started by us and
stopped by pid.

`cpu`: iperf3's client and server pinned to that one CPU (`-A`), so the whole path
(sender, the veths' softirq work on the sending CPU's backlog, receiver) runs on it
and a run measures the path's CPU cost per byte instead of where the scheduler put
the two processes (docs/benchmarks.md). iperf3 3.12: a server started with `-A N`
stays on N for every test; a client's `-A N,M` runs the client on N and asks the
server to run that one test on M (it returns to its own affinity after). The client
sends `-A N,N`, so both ends are on N even with a server started unpinned."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from crossnet.bench.util import netns_argv, percentile, run_measured

IPERF_PORT = 5201
_TIME_RE = re.compile(r"time[=<]([\d.]+) ms")


class TrafficError(RuntimeError):
    pass


def server_argv(port: int = IPERF_PORT, cpu: int | None = None) -> list[str]:
    """iperf3's server (--idle-timeout: a server we fail to stop still exits on its own)."""
    argv = ["iperf3", "-s", "-p", str(port), "--idle-timeout", "120"]
    return argv if cpu is None else [*argv, "-A", str(cpu)]


def client_argv(server_addr: str, secs: int, port: int = IPERF_PORT, cpu: int | None = None) -> list[str]:
    """One TCP run with JSON output; with `cpu`, `-A cpu,cpu`: the client and this
    test's server side on that CPU."""
    argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(secs), "-J", "--connect-timeout", "3000"]
    return argv if cpu is None else [*argv, "-A", f"{cpu},{cpu}"]


@dataclass
class IperfServer:
    netns: str
    port: int = IPERF_PORT
    cpu: int | None = None  # pinned to this CPU (`-A`), else wherever the scheduler puts it
    proc: subprocess.Popen | None = None

    def start(self) -> "IperfServer":
        argv = netns_argv(self.netns, server_argv(self.port, self.cpu))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise TrafficError(f"iperf3 server in {self.netns} exited with {self.proc.returncode}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> "IperfServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def iperf_gbps(client_ns: str, server_addr: str, duration: float, port: int = IPERF_PORT,
               tries: int = 3, cpu: int | None = None) -> tuple[float, int | None]:
    """One TCP run of `duration` seconds: receiver-side throughput in Gbit/s and the
    sender's TCP retransmissions. `cpu`: client and server pinned to that CPU."""
    secs = max(1, int(round(duration)))
    argv = netns_argv(client_ns, client_argv(server_addr, secs, port, cpu))
    last = ""
    for attempt in range(tries):
        res = run_measured(argv, timeout=secs + 20)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            data = {}
        if res.ok and "end" in data:
            end = data["end"]
            bps = (end.get("sum_received") or end.get("sum") or {}).get("bits_per_second")
            if bps:
                return bps / 1e9, (end.get("sum_sent") or {}).get("retransmits")
        last = data.get("error") or res.error_line()
        if "busy" in str(last) or "connect" in str(last).lower():
            time.sleep(0.5 + attempt)
            continue
        break
    raise TrafficError(f"iperf3 {client_ns} -> {server_addr}: {last}")


def ping_rtts(src_ns: str, addr: str, count: int, interval: float = 0.01, size: int = 56) -> list[float]:
    """`count` echo requests (bounded by -w); the RTT of each reply in ms."""
    deadline = int(count * interval + 5) + 1
    argv = netns_argv(src_ns, ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1",
                               "-w", str(deadline), "-s", str(size), addr])
    res = run_measured(argv, timeout=deadline + 10)
    rtts = [float(m.group(1)) for m in _TIME_RE.finditer(res.stdout)]
    if not rtts:
        raise TrafficError(f"ping {src_ns} -> {addr}: no reply ({res.error_line()})")
    return rtts


def wait_reachable(src_ns: str, addr: str, timeout: float = 10.0) -> float:
    """Ping until the first reply (ARP/FDB/OVS learning warm-up). Seconds waited."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        res = run_measured(netns_argv(src_ns, ["ping", "-n", "-c", "1", "-W", "1", addr]), timeout=5)
        if res.ok:
            return time.monotonic() - t0
        last = res.error_line()
        time.sleep(0.2)
    raise TrafficError(f"{src_ns} cannot reach {addr} within {timeout:.0f}s ({last})")


def rtt_summary(rtts: list[float]) -> dict:
    return {
        "n": len(rtts),
        "p50_ms": round(percentile(rtts, 50), 4),
        "p99_ms": round(percentile(rtts, 99), 4),
        "min_ms": round(min(rtts), 4),
        "max_ms": round(max(rtts), 4),
    }
