"""`crossnet bench transport` (backend auto, docs/transport.md): in an L3 lab on etcd
(3 hosts behind one router, an agent per host, one container each):

* fallback: the router starts dropping UDP 4789 between h1 and h2 (nft in the router
  namespace); measured is the time from the filter going up to the first echo from
  h1's container answered by h2's container again (over WireGuard by then), and, the
  filter lifted, until h1 reports h2 back on VXLAN; `samples` times;
* per-peer throughput: iperf3 h1-c1 → h3-c1 (auto picked vxlan) and, with the filter
  up, h1-c1 → h2-c1 (auto picked wireguard), each against the same path with that
  backend alone (a lab of its own), both divided by their lab's underlay (h1 → h3 host
  to host) measured interleaved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, ratio, summary

FILTER = "cnbenchblk"
FALLBACK_BOUND = 30.0  # s: give up waiting (reported as a failure)


def _container(lab: Any, hname: str) -> tuple[str, str]:
    h = next(x for x in lab.hosts if x.name == hname)
    st = lab.status(hname)
    return h.containers[0], st["containers"][0]["address"].split("/")[0]


def _transport(lab: Any, a: str, b: str) -> str | None:
    h = next(x for x in lab.hosts if x.name == a)
    try:
        doc = json.loads((Path(h.state_dir) / "transport.json").read_text())
        p = doc["peers"][b]
        return p["transport"] if p["state"] == "established" else None
    except (OSError, ValueError, KeyError):
        return None


def _wait_transport(lab: Any, pairs: list[tuple[str, str]], want: str, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(_transport(lab, a, b) == want for a, b in pairs):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def _nft(lab: Any, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", lab.plan.fabric.netns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True, timeout=30)


def _block(lab: Any, a: Any, b: Any) -> None:
    _nft(lab, f"table inet {FILTER} {{ chain forward {{ type filter hook forward priority 0; policy accept;\n"
              f"ip saddr {a.address} ip daddr {b.address} udp dport 4789 drop\n"
              f"ip saddr {b.address} ip daddr {a.address} udp dport 4789 drop\n}}\n}}\n")


def _unblock(lab: Any) -> None:
    _nft(lab, f"delete table inet {FILTER}\n")


def _fallback_once(lab: Any, src_ns: str, dst: str) -> float | None:
    """Filter up now; seconds until an echo from src_ns to dst is answered again."""
    from crossnet.transport.probe import echo

    h1, h2 = lab.hosts[0], lab.hosts[1]
    _block(lab, h1, h2)
    t0 = time.monotonic()
    lost = False
    while time.monotonic() - t0 < FALLBACK_BOUND:
        ok = echo(dst, 84, timeout=0.05, df=False, netns=src_ns) is not None
        if not ok:
            lost = True
        elif lost:
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def _throughput(lab: Any, label: str, dst_host: str, repeats: int, duration: float, ping_count: int) -> dict:
    from crossnet.bench.dataplane import _finish, _paired

    h1 = lab.hosts[0]
    hd = next(x for x in lab.hosts if x.name == dst_host)
    c1, _ = _container(lab, "h1")
    cd, addr = _container(lab, dst_host)
    row = {"name": label, "status": "ok"}
    row.update(_paired({"overlay": (c1, cd, addr), "underlay": (h1.netns, hd.netns, hd.address)},
                       repeats, duration, ping_count))
    return _finish(row)


def run(rc: RunContext, samples: int = 3, repeats: int = 3, duration: float = 3.0, ping_count: int = 50
        ) -> dict[str, Any]:
    for tool in ("etcd", "iperf3", "nft"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        raise Skip("no wireguard kernel module and wireguard-go not installed")
    out: dict[str, Any] = {"suite": "transport", "status": "ok", "rows": []}
    t_all = time.monotonic()
    opts = {"hosts": 3, "underlay": "l3", "backend": "auto", "containers": 1, "extra": {"store": "etcd", "ttl": 5}}
    with bench_lab(opts) as lab:
        everyone = [(a.name, b.name) for a in lab.hosts for b in lab.hosts if a is not b]
        if _wait_transport(lab, everyone, "vxlan", 60) is None:
            raise RuntimeError("backend auto never established vxlan between every pair")
        rc.log("transport: auto h1→h3 (vxlan picked)")
        out["rows"].append(_throughput(lab, "auto (vxlan picked)", "h3", repeats, duration, ping_count))
        c1, _ = _container(lab, "h1")
        _, a2 = _container(lab, "h2")
        fall, back = [], []
        for i in range(samples):
            rc.log(f"transport: fallback sample {i + 1}/{samples}")
            took = _fallback_once(lab, c1, a2)
            if took is None:
                _unblock(lab)
                raise RuntimeError(f"traffic h1-c1 → h2-c1 did not flow again within {FALLBACK_BOUND:.0f} s of the filter")
            fall.append(took)
            if i == samples - 1:
                rc.log("transport: auto h1→h2 (wireguard picked, filter up)")
                out["rows"].append(_throughput(lab, "auto (wireguard picked)", "h2", repeats, duration, ping_count))
            _unblock(lab)
            r = _wait_transport(lab, [("h1", "h2"), ("h2", "h1")], "vxlan", 60)
            if r is not None:
                back.append(r)
        out["fallback_s"] = summary(fall, 3)
        out["recovery_s"] = summary(back, 3)
    for backend, label in (("vxlan", "vxlan alone"), ("wireguard", "wireguard alone")):
        rc.log(f"transport: {label} h1→h2")
        with bench_lab({"hosts": 3, "underlay": "l3", "backend": backend, "containers": 1}) as lab:
            out["rows"].append(_throughput(lab, label, "h2", repeats, duration, ping_count))
    by = {r["name"]: r for r in out["rows"]}
    out["vs_alone"] = {
        "vxlan": ratio((by.get("auto (vxlan picked)") or {}).get("ratio"), (by.get("vxlan alone") or {}).get("ratio")),
        "wireguard": ratio((by.get("auto (wireguard picked)") or {}).get("ratio"),
                           (by.get("wireguard alone") or {}).get("ratio")),
    }
    out["elapsed_s"] = round(time.monotonic() - t_all, 1)
    return out


__all__ = ["run"]
