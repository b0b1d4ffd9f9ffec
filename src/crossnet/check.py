"""Reachability matrix: every endpoint pings every other one.

An endpoint is a name, the network namespace it lives in (a name under /run/netns,
an absolute path such as /proc/PID/ns/net, or "" for the current namespace) and its
address. Probes run in parallel (bounded worker pool); each one is bounded in count
and time.

Probing uses ``ip netns exec NS ping -c COUNT -W TIMEOUT -q ADDR`` when `ping` is
installed; without it, a built-in ICMP echo over a raw socket opened inside the
namespace (same result, no iputils needed).
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from crossnet.netlink.ns import socket_in_netns
from crossnet.transport.probe import checksum

PING_INTERVAL = 0.2  # seconds between probes when count > 1
MAX_COUNT = 100
MAX_TIMEOUT = 30.0

_RTT_RE = re.compile(r"=\s*([\d.]+)/([\d.]+)/([\d.]+)")


@dataclass(frozen=True)
class Endpoint:
    name: str
    netns: str  # netns name, /path/to/netns, or "" for the current namespace
    address: str


@dataclass(frozen=True)
class Pair:
    src: str
    dst: str
    ok: bool
    rtt_ms: float | None
    error: str | None = None


def netns_prefix(netns: str | None) -> list[str]:
    """argv prefix that runs a command in `netns` (a name, a path, or "" for here)."""
    if not netns:
        return []
    if netns.startswith("/run/netns/") and netns.count("/") == 3:
        return ["ip", "netns", "exec", os.path.basename(netns)]
    if netns.startswith("/"):
        return ["nsenter", f"--net={netns}"]
    return ["ip", "netns", "exec", netns]


# ---- probe via iputils ping ---------------------------------------------------------
def _probe_ping(src: Endpoint, address: str, count: int, timeout: float) -> tuple[bool, float | None, str | None]:
    argv = [*netns_prefix(src.netns), "ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}"]
    if count > 1:
        argv += ["-i", f"{PING_INTERVAL:g}"]
    argv.append(address)
    limit = count * (PING_INTERVAL + timeout) + 5.0
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return False, None, f"ping timed out after {limit:.0f}s"
    except OSError as exc:
        return False, None, str(exc)
    m = _RTT_RE.search(proc.stdout)
    rtt = float(m.group(2)) if m else None
    if proc.returncode == 0:
        return True, rtt, None
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    err = next((ln for ln in lines if "packet loss" in ln), lines[-1] if lines else f"exit {proc.returncode}")
    if proc.stderr.strip():
        err = proc.stderr.strip().splitlines()[-1]
    return False, None, err


# ---- built-in ICMP echo (no iputils) ------------------------------------------------
def _probe_icmp(src: Endpoint, address: str, count: int, timeout: float) -> tuple[bool, float | None, str | None]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False, None, f"invalid address {address!r}"
    v6 = ip.version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    try:
        sock = socket_in_netns(src.netns, family, socket.SOCK_RAW, proto)
    except OSError as exc:
        return False, None, f"cannot open ICMP socket in {src.netns or 'this namespace'}: {exc.strerror or exc}"
    ident = (os.getpid() ^ threading.get_ident() ^ int(time.monotonic_ns())) & 0xFFFF
    rtts: list[float] = []
    last_err = None
    with sock:
        for seq in range(1, count + 1):
            if seq > 1:
                time.sleep(PING_INTERVAL)
            payload = struct.pack("!d", time.monotonic()) + b"crossnet-check"
            hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
            csum = 0 if v6 else checksum(hdr + payload)  # kernel fills the ICMPv6 checksum
            pkt = struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + payload
            sent = time.monotonic()
            try:
                sock.sendto(pkt, (address, 0))
            except OSError as exc:
                last_err = exc.strerror or str(exc)
                continue
            deadline = sent + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    last_err = last_err or "no reply"
                    break
                r, _, _ = select.select([sock], [], [], left)
                if not r:
                    continue
                data, peer = sock.recvfrom(65535)
                off = 0 if v6 else (data[0] & 0x0F) * 4
                if len(data) < off + 8 or ipaddress.ip_address(peer[0].split("%")[0]) != ip:
                    continue
                typ, _code, _c, rid, rseq = struct.unpack("!BBHHH", data[off:off + 8])
                if typ == rep_type and rid == ident and rseq == seq:
                    rtts.append((time.monotonic() - sent) * 1000.0)
                    break
    if rtts:
        return True, round(sum(rtts) / len(rtts), 3), None
    return False, None, f"{count} packets transmitted, 0 received ({last_err or 'no reply'})"


# ---- matrix -------------------------------------------------------------------------
def probe(src: Endpoint, address: str, count: int = 1, timeout: float = 1.0,
          method: str = "auto") -> tuple[bool, float | None, str | None]:
    """One bounded reachability probe from `src` to `address`: (ok, avg rtt ms, error)."""
    count = max(1, min(int(count), MAX_COUNT))
    timeout = max(0.1, min(float(timeout), MAX_TIMEOUT))
    if method == "auto":
        method = "ping" if shutil.which("ping") else "icmp"
    if method == "ping":
        return _probe_ping(src, address, count, timeout)
    if method == "icmp":
        return _probe_icmp(src, address, count, timeout)
    raise ValueError(f"unknown probe method {method!r}")


def ping_matrix(endpoints: Iterable[Endpoint], count: int = 1, timeout: float = 1.0,
                workers: int = 8, method: str = "auto") -> list[Pair]:
    """Every endpoint pings every other endpoint. Pairs in (src, dst) endpoint order."""
    eps = list(endpoints)
    jobs = [(s, d) for s in eps for d in eps if s is not d]
    if not jobs:
        return []

    def run(job: tuple[Endpoint, Endpoint]) -> Pair:
        s, d = job
        ok, rtt, err = probe(s, d.address.split("/")[0], count, timeout, method)
        return Pair(s.name, d.name, ok, rtt, err)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        return list(pool.map(run, jobs))


def all_ok(pairs: Iterable[Pair]) -> bool:
    return all(p.ok for p in pairs)


def pairs_to_json(pairs: Iterable[Pair]) -> list[dict[str, Any]]:
    return [asdict(p) for p in pairs]


def summary_line(pairs: list[Pair]) -> str:
    bad = [p for p in pairs if not p.ok]
    if not pairs:
        return "no pairs to check"
    if not bad:
        return f"OK: all {len(pairs)} pairs reachable"
    return f"FAILED: {len(bad)} of {len(pairs)} pairs unreachable"


def render_matrix(pairs: list[Pair], title: str | None = None,
                  label: Callable[[str], str] | None = None):
    """A rich Table: rows = source, columns = destination, cells = RTT in ms or ✗.
    `label` shortens endpoint names for display."""
    from rich.table import Table

    label = label or (lambda n: n)
    names: list[str] = []
    for p in pairs:
        for n in (p.src, p.dst):
            if n not in names:
                names.append(n)
    cell = {(p.src, p.dst): p for p in pairs}
    table = Table(title=title, show_lines=False, caption="RTT in ms; ✗ = unreachable")
    table.add_column("src \\ dst", style="bold", no_wrap=True)
    for n in names:
        table.add_column(label(n), justify="right", no_wrap=True)
    for s in names:
        row = []
        for d in names:
            p = cell.get((s, d))
            if s == d or p is None:
                row.append("[dim]·[/dim]")
            elif p.ok:
                row.append(f"[green]{p.rtt_ms:.2f}[/green]" if p.rtt_ms is not None else "[green]✓[/green]")
            else:
                row.append("[bold red]✗[/bold red]")
        table.add_row(label(s), *row)
    return table
