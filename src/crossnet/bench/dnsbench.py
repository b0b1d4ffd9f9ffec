"""Container DNS (issue 15: p99 ≤ 2 ms at 1,000 queries/s from a container of the same
host; a change visible on all hosts ≤ 2 s after the container change), in a 2-host lab
with ``--store etcd`` (the agents serve DNS).

Load: a client in h1's container sends A queries for a container name to h1's gateway,
paced at ``rate`` per second, each waiting for its answer (latency = send → answer).
Change: a container on h2 is attached with a new name, then detached; a poller in h1's
container asks h1's DNS every 5 ms and notes (CLOCK_MONOTONIC, the same in every
namespace) when the answer changed; the time counts from just before the attach/detach
request to h2's agent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, summary

LOAD = textwrap.dedent("""
    import json, socket, sys, time
    from dnslib import DNSRecord
    server, name, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.settimeout(1.0)
    lat, lost, answered = [], 0, 0
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        q = DNSRecord.question(name)
        wire = q.pack()
        t0 = time.perf_counter()
        s.send(wire)
        try:
            while True:
                data = s.recv(4096)
                if data[:2] == wire[:2]:
                    break
        except TimeoutError:
            lost += 1
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        answered += bool(DNSRecord.parse(data).rr)
    elapsed = time.perf_counter() - start
    print(json.dumps({"lat_ms": lat, "lost": lost, "answered": answered, "rate": count / elapsed}))
""")

POLL = textwrap.dedent("""
    import socket, sys, time
    from dnslib import DNSRecord
    server, name, want = sys.argv[1], sys.argv[2], sys.argv[3] == "present"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.settimeout(0.5)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        q = DNSRecord.question(name)
        s.send(q.pack())
        try:
            r = DNSRecord.parse(s.recv(4096))
        except (TimeoutError, Exception):
            continue
        if bool(r.rr) == want:
            print(time.monotonic(), flush=True)
            sys.exit(0)
        time.sleep(0.005)
    sys.exit(1)
""")


def _served(state_dir: str) -> dict | None:
    from crossnet.dns.resolv import served
    from crossnet.state import StateDir

    return served(StateDir(state_dir))


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"{what} not within {timeout:.0f}s")


def _in(netns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-c", script, *args]


def _change(api, state_dir: str, body: dict, path: str, poll: list[str]) -> float:
    """Seconds from just before ``path`` on h2's agent to the poller seeing the change."""
    proc = subprocess.Popen(poll, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"dns poller: {proc.stderr.read()[-300:]}")
        t0 = time.monotonic()
        api.call(state_dir, "POST", path, body)
        out, err = proc.communicate(timeout=40)
        if proc.returncode != 0:
            raise RuntimeError(f"the change to {body} was not seen within 30 s {err[-200:]}")
        return float(out.strip()) - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def run(rc: RunContext, queries: int = 3000, rate: float = 1000.0, changes: int = 5) -> dict[str, Any]:
    if not shutil.which("etcd"):
        raise Skip("etcd not installed (apt-get install etcd-server)")
    from crossnet.agent import api as agentapi

    out: dict[str, Any] = {"status": "ok", "queries": queries, "rate_asked": rate}
    rc.log("dns: 2-host lab on etcd (the agents serve DNS)")
    with bench_lab({"hosts": 2, "containers": 1, "backend": "vxlan", "extra": {"store": "etcd"}}) as lab:
        h1, h2 = lab.hosts[0], lab.hosts[1]
        c1, c2 = h1.containers[0], h2.containers[0]
        info = _wait(lambda: _served(h1.state_dir), 30, "h1's DNS")
        _wait(lambda: _served(h2.state_dir), 30, "h2's DNS")
        gw, domain = info["listen"][0], info["domain"]
        agentapi.call(h1.state_dir, "POST", "/v1/attach", {"container": c1, "name": "bench-a"})
        rc.log(f"dns: {queries} queries at {rate:.0f}/s from a container of h1")
        load = subprocess.run(_in(c1, LOAD, gw, f"bench-a.{domain}", str(queries), str(rate)), capture_output=True,
                              text=True, timeout=queries / rate + 120, check=False)
        if load.returncode != 0:
            raise RuntimeError(f"dns load client: {load.stderr.strip()[-300:]}")
        res = json.loads(load.stdout)
        out["query_ms"] = summary(res["lat_ms"], 4)
        out["query_ms"].pop("samples", None)
        out["lost"], out["rate_qps"] = res["lost"], round(res["rate"], 1)
        out["answered"] = res["answered"]
        appear, gone = [], []
        for i in range(changes):
            name = f"bench-b{i}"
            rc.log(f"dns: {c2} on h2 named {name}, then detached ({i + 1}/{changes})")
            appear.append(_change(agentapi, h2.state_dir, {"container": c2, "name": name}, "/v1/attach",
                                  _in(c1, POLL, gw, f"{name}.{domain}", "present")))
            gone.append(_change(agentapi, h2.state_dir, {"container": c2}, "/v1/detach",
                                _in(c1, POLL, gw, f"{name}.{domain}", "absent")))
        out["appear_s"] = summary(appear, 4)
        out["gone_s"] = summary(gone, 4)
        out["change_max_s"] = round(max(appear + gone), 4)
    return out
