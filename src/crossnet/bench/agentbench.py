"""Agent programming latency (issue: new host programmed on all of 20 hosts, p95 ≤ 1 s;
agent RSS ≤ 50 MB), in a lab with ``--store etcd`` (one etcd, an agent per host).

Per sample, the last host leaves (its agent, restarted with ``--release``, is
stopped: it gives its subnet back) and joins again as a new host: a fresh agent
process registers and leases a subnet; we poll every other host's kernel routing
table until each has a route to the new subnet. Reported: join → programmed on all
peers (from the agent's start, and from the moment its own API says it is synced),
leave → route gone on all peers, and every agent's peak RSS (VmHWM).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, summary, vm_hwm_kb


def _routes_to(netns: str) -> set[str]:
    from crossnet.netlink import iproute as nl

    with nl.open_ipr(netns) as ipr:
        return {r.dst for r in nl.routes(ipr)}


READY_POLL_S = 0.01  # how often the new agent's status is asked for while it starts


def _wait_all(peers: list[Any], subnet: str, present: bool, timeout: float) -> float | None:
    """Seconds until every peer has (present) / lacks a route to subnet; None on timeout."""
    t0 = time.monotonic()
    pending = list(peers)
    while pending and time.monotonic() - t0 < timeout:
        pending = [h for h in pending if (subnet in _routes_to(h.netns)) != present]
        if pending:
            time.sleep(0.01)
    return None if pending else time.monotonic() - t0


def run(rc: RunContext, hosts: int = 20, joins: int = 5, backend: str = "vxlan") -> dict[str, Any]:
    if not shutil.which("etcd"):
        raise Skip("etcd not installed (apt-get install etcd-server)")
    from crossnet.lab import etcd as etcd_lab
    from crossnet.lab.services import host_env

    out: dict[str, Any] = {"status": "ok", "hosts": hosts, "backend": backend}
    t_lab = time.monotonic()
    rc.log(f"agent: lab with {hosts} hosts, etcd and an agent per host")
    with bench_lab({"hosts": hosts, "containers": 0, "backend": backend, "extra": {"store": "etcd"}}) as lab:
        out["lab_up_s"] = round(time.monotonic() - t_lab, 1)
        srv = etcd_lab.lab_etcd(lab.plan)
        new = lab.hosts[-1]
        peers = list(lab.hosts[:-1])
        log_path = str(Path(lab.plan.lab_dir) / "hosts" / new.name / "agent-bench.log")
        ttl = str(int((lab.plan.extra or {}).get("ttl") or etcd_lab.LAB_TTL))
        env = host_env(lab.plan, new)

        def start():
            return etcd_lab.start_agent(new.netns, new.state_dir, srv.url, new.name, log_path, iface=new.ifname,
                                         extra=["--ttl", ttl, "--release"], env=env)

        # the lab's agent on the last host becomes one that releases its subnet on SIGTERM
        etcd_lab.stop_agent(new.state_dir)
        proc = start()
        st = etcd_lab.wait_agent_ready(new.state_dir, proc=proc, log_path=log_path)
        join_start, join_ready, leave = [], [], []
        for i in range(joins):
            subnet = st["subnet"]
            if _wait_all(peers, subnet, True, 30) is None:
                raise RuntimeError(f"{new.name}'s subnet {subnet} never reached every peer")
            rc.log(f"agent: {new.name} leaves and joins again ({i + 1}/{joins})")
            etcd_lab.stop_agent(new.state_dir)  # --release: gives the subnet back
            gone = _wait_all(peers, subnet, False, 60)
            if gone is not None:
                leave.append(gone)
            t0 = time.monotonic()
            proc = start()
            st = etcd_lab.wait_agent_ready(new.state_dir, proc=proc, log_path=log_path, interval=READY_POLL_S)
            t_ready = time.monotonic()
            done = _wait_all(peers, st["subnet"], True, 30)
            if done is None:
                raise RuntimeError(f"{new.name} re-joined with {st['subnet']} but not every peer programmed it in 30 s")
            join_start.append(t_ready - t0 + done)
            join_ready.append(done)
        out["program_s"] = summary(join_start, 4)
        out["program_s"]["p95"] = round(_p95(join_start), 4)
        out["program_after_ready_s"] = summary(join_ready, 4)
        out["remove_s"] = summary(leave, 4)
        rss = []
        for h in lab.hosts:
            info = etcd_lab.agent_status(h.state_dir) or {}
            kb = vm_hwm_kb(info["pid"]) if info.get("pid") else None
            if kb:
                rss.append(kb)
        if rss:
            out["agent_rss_mb"] = round(max(rss) / 1024, 1)
            out["agent_rss_median_mb"] = round(sorted(rss)[len(rss) // 2] / 1024, 1)
            rc.note_memory("crossnet agent", f"max over {len(rss)} agents of a {hosts}-host lab", max(rss))
    return out


def _p95(values: list[float]) -> float:
    from crossnet.bench.util import percentile

    return percentile(values, 95)
