"""`crossnet launch` mesh (issue 13): join latency and the per-host footprint, in a lab
with ``--store mesh`` (every host launched by token, etcd members in the host
namespaces).

Join: the last host leaves (`crossnet stop --release`: it gives its subnet back and
leaves the mesh) and joins again as a new host: `crossnet launch --token T ADDR`, then
`crossnet attach` of its container; the time runs from the launch command's start
until every existing host's container pings the new container (each existing host
reaching the new host's first container; the hosts not there yet are probed all at once,
each ping waiting PROBE_WAIT for its reply: the samples' resolution). p95 over the samples.

Footprint: after the joins, with nothing happening, on every voter (etcd member + the
`crossnet launch` process that runs the agent, the join endpoint and the supervision;
all measured over the same window) and on a client (that process only): RSS now (VmRSS)
and CPU % over an idle window (utime + stime from /proc, all threads). ``voter`` is the
busiest voter (the most CPU), ``voters`` has each one; the targets take the worst voter
for each figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, percentile, summary

LAB_TTL = 30  # the default lease TTL of `crossnet launch` (keepalive traffic as in real use)


def _pids(state_dir: str) -> dict[str, int]:
    """{'launch': pid, 'etcd': pid?} of a launched lab host."""
    launch = int((Path(state_dir) / "mesh" / "launch.pid").read_text().strip())
    out = {"launch": launch}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if int(fields[1]) == launch and comm == "etcd":
            out["etcd"] = int(d)
    return out


def _role(state_dir: str) -> str | None:
    import json

    return json.loads((Path(state_dir) / "mesh" / "launch.json").read_text()).get("role")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def footprint(pids: dict[str, int], idle_s: float) -> dict[str, Any]:
    """RSS (MB, now) and CPU % over idle_s of each process and of all together."""
    return footprints({"": pids}, idle_s)[""]


def footprints(groups: dict[str, dict[str, int]], idle_s: float) -> dict[str, dict[str, Any]]:
    """:func:`footprint` of several groups of processes (one per host) over one window."""
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    before = {(g, k): _cpu_ticks(p) for g, pids in groups.items() for k, p in pids.items()}
    time.sleep(idle_s)
    dt = time.monotonic() - t0
    result: dict[str, dict[str, Any]] = {}
    for g, pids in groups.items():
        out: dict[str, Any] = {}
        for k, p in pids.items():
            out[k] = {"rss_mb": round(_rss_kb(p) / 1024, 1),
                      "cpu_pct": round(100.0 * (_cpu_ticks(p) - before[(g, k)]) / hz / dt, 2)}
        out["total"] = {"rss_mb": round(sum(v["rss_mb"] for v in out.values()), 1),
                        "cpu_pct": round(sum(v["cpu_pct"] for v in out.values()), 2)}
        out["idle_s"] = round(dt, 1)
        result[g] = out
    return result


PROBE_WAIT = 0.2  # s a probe waits for its echo reply: the resolution of a join sample


def reached(pending: dict[str, str], addr: str, wait: float = PROBE_WAIT) -> set[str]:
    """The hosts of ``pending`` ({host: its container's netns}) whose container got an echo
    reply from ``addr`` within ``wait`` s: one ping per host, all at once. (One ping after
    the other with a 1 s timeout made each unreachable host cost a whole second, so a
    sample could be up to a second later than the moment every host reached the container.)"""
    procs = {h: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-c1", "-W", f"{wait:g}", "-q", addr],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for h, ns in pending.items()}
    return {h for h, p in procs.items() if p.wait() == 0}


def run(rc: RunContext, hosts: int = 5, joins: int = 10, idle_s: float = 30.0) -> dict[str, Any]:
    """hosts: the mesh the new host joins (the lab has hosts + 1)."""
    if not shutil.which("etcd"):
        raise Skip("etcd not installed (apt-get install etcd-server)")
    out: dict[str, Any] = {"status": "ok", "hosts": hosts, "joins": joins, "backend": "vxlan"}
    t_lab = time.monotonic()
    rc.log(f"mesh: lab with {hosts + 1} hosts, `crossnet launch` on each")
    with bench_lab({"hosts": hosts + 1, "containers": 1, "backend": "vxlan",
                    "extra": {"store": "mesh", "ttl": LAB_TTL}}) as lab:
        out["lab_up_s"] = round(time.monotonic() - t_lab, 1)
        new, peers = lab.hosts[-1], list(lab.hosts[:-1])
        line = lab.crossnet(peers[0].name, "token", "create", "--ttl", "2h").stdout
        parts = next(ln for ln in line.splitlines() if "--token" in ln).split()
        token, addr = parts[parts.index("--token") + 1], parts[-1]
        cid = new.containers[0]
        peer_ctr = {h.name: h.containers[0] for h in peers}
        samples = []
        for i in range(joins):
            rc.log(f"mesh: {new.name} leaves and joins again by token ({i + 1}/{joins})")
            lab.crossnet(new.name, "stop", "--release", timeout=120)
            t0 = time.monotonic()
            lab.crossnet(new.name, "launch", "--name", new.name, "--token", token, addr, timeout=180)
            # the address from attach's own answer: a `status` call in between (~0.4 s of
            # CLI start-up) was counted in the sample, not part of the join
            ip = json.loads(lab.crossnet(new.name, "attach", cid, "-o", "json", timeout=60).stdout)["address"]
            pending = dict(peer_ctr)
            deadline = t0 + 60
            while pending and time.monotonic() < deadline:
                ok = reached(pending, ip)
                pending = {h: c for h, c in pending.items() if h not in ok}
            if pending:
                raise RuntimeError(f"{', '.join(pending)} did not reach {new.name}'s container {ip} within 60 s")
            samples.append(time.monotonic() - t0)
        out["join_s"] = summary(samples, 3)
        out["join_s"]["p95"] = round(percentile(samples, 95), 3)
        voters = [h for h in lab.hosts if _role(h.state_dir) == "voter"]
        rc.log(f"mesh: idle footprint of the voters ({', '.join(h.name for h in voters)}), {idle_s:.0f} s")
        out["voters"] = footprints({h.name: _pids(h.state_dir) for h in voters}, idle_s)
        busiest = max(out["voters"], key=lambda n: out["voters"][n]["total"]["cpu_pct"])
        out["voter"] = {**out["voters"][busiest], "host": busiest}
        client = next((h for h in lab.hosts if _role(h.state_dir) == "client"), None)
        if client is not None:  # a mesh of more than 3 hosts
            out["client"] = footprint({"launch": _pids(client.state_dir)["launch"]}, min(idle_s, 10.0))
        rc.note_memory("crossnet launch (agent inside)", "mesh voter, idle", int(out["voter"]["launch"]["rss_mb"] * 1024))
    return out
