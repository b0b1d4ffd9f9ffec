"""`crossnet bench datapath` (issue 18, docs/datapath.md): `datapath: ebpf` against
`datapath: kernel` and the underlay, interleaved in the same rounds.

Per backend (host-gw, vxlan) and MTU, two labs up at the same time, one switch each (l2):

* lab K, 6 hosts, `datapath: kernel`: h1, h2 run `crossnet apply` + `attach` with one
  container each; h3 → h4, never configured, is the underlay; h5 → h6 is the floor
  (manual.RoutedVethFloor: a container veth and a route by hand, host-gw's shape, or
  flannel's L3 vxlan layout for vxlan, nothing of crossnet's) -- the least a container
  path of that shape costs here, so the figures say how much of the gap to the underlay
  is the veth and namespace crossing every container path has;
* lab E, 2 hosts, `datapath: ebpf` (`lab up --datapath ebpf`): h1, h2 the same, with
  routed container veths and the tc eBPF programs (crossnet.ebpf).

Every round runs one iperf3 TCP run on each of the four paths (the order reversed every
other round, dataplane.paired), so load changes on this shared machine hit all alike;
then ping RTT on each. Figures: throughput ÷ underlay, ebpf ÷ kernel (median over pairs of
rounds, util.median_ratio), RTT p50 overhead vs the underlay in µs; for kernel and ebpf
also ÷ the floor and the RTT p50 over the floor's. When this machine
cannot run the programs (crossnet.ebpf.problem()), lab E is not built and the ebpf path
says ``skipped: <why>``; when lab E's hosts fell back to kernel forwarding, the row says so.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, clean_error, loadavg, ratio

BACKENDS = ("host-gw", "vxlan")
PATHS = ("kernel", "floor", "underlay", "ebpf")  # a round's order, reversed every other one: kernel and ebpf at the two ends, so a pair of rounds gives each both ends


def ebpf_unavailable() -> str | None:
    """Why this machine cannot run the ebpf datapath's programs (None: it can)."""
    from crossnet import ebpf

    return ebpf.problem()


def rtt_overhead_us(path: dict[str, Any], underlay: dict[str, Any]) -> float | None:
    """RTT p50 of a path minus the underlay's, in µs."""
    try:
        return round((path["rtt"]["p50_ms"] - underlay["rtt"]["p50_ms"]) * 1000, 1)
    except (KeyError, TypeError):
        return None


def finish_row(row: dict[str, Any]) -> dict[str, Any]:
    """From the paths' measurements (gbps/rtt of kernel, ebpf, underlay): each path ÷
    the underlay (median, worst/best pairing), its RTT p50 overhead in µs, and ebpf ÷
    kernel over the interleaved rounds."""
    from crossnet.bench.util import median_ratio, pair_ratios, round_ratios

    paths = row.get("paths") or {}
    u = paths.get("underlay")
    if not u or "gbps" not in u:
        return row
    ug = u["gbps"]
    f = paths.get("floor") or {}
    for name in ("kernel", "ebpf", "floor"):
        p = paths.get(name)
        if not p or "gbps" not in p:
            continue
        g = p["gbps"]
        p["ratio"] = ratio(g["median"], ug["median"])
        p["ratio_min"] = ratio(g["min"], ug["max"])
        p["ratio_max"] = ratio(g["max"], ug["min"])
        p["round_ratio"] = median_ratio(g["samples"], ug["samples"])
        p["rtt_overhead_us"] = rtt_overhead_us(p, u)
        if name != "floor" and "gbps" in f:
            p["vs_floor"] = {"median_round_ratio": median_ratio(g["samples"], f["gbps"]["samples"]),
                             "rtt_over_floor_us": rtt_overhead_us(p, f)}
    k, e = paths.get("kernel") or {}, paths.get("ebpf") or {}
    if "gbps" in k and "gbps" in e:
        ks, es = k["gbps"]["samples"], e["gbps"]["samples"]
        row["ebpf_vs_kernel"] = {
            "median_round_ratio": median_ratio(es, ks),
            "round_ratios": [round(x, 3) for x in round_ratios(es, ks)],
            "pair_ratios": [round(x, 3) for x in pair_ratios(es, ks)],
            "ratio_of_medians": ratio(e["gbps"]["median"], k["gbps"]["median"]),
        }
    return row


def lab_opts(backend: str, mtu: int, hosts: int, datapath: str) -> dict[str, Any]:
    """A bench lab of `hosts` on one switch, one container each, with `datapath`
    (also `bench networks`' lab)."""
    return {"hosts": hosts, "underlay": "l2", "backend": backend, "containers": 1,
            "mtu": None if mtu == 1500 else mtu, "extra": {"datapath": datapath} if datapath != "kernel" else {}}


def _up(rc: RunContext, lab: Any, hosts: tuple[Any, ...], what: str) -> str:
    """apply + attach on `hosts` (at once, as `lab up` does); the server container's address."""
    from crossnet.bench.dataplane import apply_and_attach

    apply_and_attach(rc, lab, hosts, f"datapath lab: {what}")
    st = lab.status(hosts[1].name)
    return next(c for c in st["containers"] if c["netns"].endswith(hosts[1].containers[0]))["address"].split("/")[0]


def datapath_status(lab: Any, hosts: tuple[Any, ...]) -> dict[str, Any]:
    """`status`'s datapath part of each host (what runs, the programs' counters)."""
    return {h.name: lab.status(h.name).get("datapath") for h in hosts}


def measure(rc: RunContext, backend: str, mtu: int, repeats: int, duration: float, ping_count: int,
            ebpf_why: str | None) -> dict[str, Any]:
    from crossnet.bench.dataplane import paired
    from crossnet.bench.manual import RoutedVethFloor

    row: dict[str, Any] = {"backend": backend, "mtu": mtu, "status": "ok", "load_before": loadavg()}
    t0 = time.monotonic()
    try:
        with ExitStack() as stack:
            lk = stack.enter_context(bench_lab(lab_opts(backend, mtu, 6, "kernel"), apply=False))
            k1, k2, u1, u2, f1, f2 = lk.hosts[:6]
            paths = {"kernel": (k1.containers[0], k2.containers[0], _up(rc, lk, (k1, k2), f"{backend} kernel, MTU {mtu}")),
                     "underlay": (u1.netns, u2.netns, u2.address)}
            floor = RoutedVethFloor(lk, (f1, f2), encap="vxlan" if backend == "vxlan" else None)
            built = floor.build(mtu)
            paths["floor"] = (built.client_ns, built.server_ns, built.server_addr)
            row["paths"] = {"kernel": {"container_mtu": lk.status(k2.name).get("mtu")}, "ebpf": {},
                            "floor": {"layout": floor.name, "container_mtu": built.container_mtu,
                                      "steps": built.steps}, "underlay": {}}
            le = None
            if ebpf_why is None:
                le = stack.enter_context(bench_lab(lab_opts(backend, mtu, 2, "ebpf"), apply=False))
                e1, e2 = le.hosts[:2]
                paths["ebpf"] = (e1.containers[0], e2.containers[0], _up(rc, le, (e1, e2), f"{backend} ebpf, MTU {mtu}"))
                row["paths"]["ebpf"].update(container_mtu=le.status(e2.name).get("mtu"))
            else:
                row["paths"]["ebpf"].update(status="skipped", reason=ebpf_why)
            order = [p for p in PATHS if p in paths]
            rc.log(f"datapath {backend} mtu {mtu}: {repeats} interleaved rounds of {', '.join(order)}")
            res = paired({p: paths[p] for p in order}, repeats, duration, ping_count, cpu=rc.cpu)
            for p in order:
                row["paths"][p].update(res[p])
            row["paths"]["kernel"]["datapath"] = datapath_status(lk, (k1, k2))
            if le is not None:  # after the traffic: the counters show the programs ran
                desc = datapath_status(le, le.hosts[:2])
                row["paths"]["ebpf"]["datapath"] = desc
                ran = {h: (d or {}).get("datapath") for h, d in desc.items()}
                if any(v != "ebpf" for v in ran.values()):
                    why = next(((d or {}).get("why") for d in desc.values() if (d or {}).get("why")), None)
                    row["paths"]["ebpf"]["fell_back"] = f"kernel forwarding ran ({why or ran})"
    except Skip as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the suite
        row.update(status="failed", reason=clean_error(exc))
    row["elapsed_s"] = round(time.monotonic() - t0, 1)
    return finish_row(row)


def run(rc: RunContext, backends: tuple[str, ...] | list[str] = BACKENDS, mtus: tuple[int, ...] = (1500,),
        repeats: int = 5, duration: float = 5.0, ping_count: int = 200,
        skip: dict[str, str] | None = None) -> dict[str, Any]:
    """`skip`: {backend: reason} rows not measured in this run (`bench all --quick`)."""
    if not shutil.which("iperf3"):
        raise Skip("iperf3 not installed")
    t0 = time.monotonic()
    why = ebpf_unavailable()
    rows = []
    for mtu in mtus:
        for backend in backends:
            if backend in (skip or {}):
                rows.append({"backend": backend, "mtu": mtu, "status": "skipped", "reason": skip[backend]})
                continue
            rows.append(measure(rc, backend, mtu, repeats, duration, ping_count, why))
    return {"suite": "datapath", "status": "ok", "ebpf_problem": why,
            "params": {"backends": list(backends), "mtus": list(mtus), "repeats": repeats, "duration_s": duration,
                       "ping_count": ping_count, "cpu": rc.cpu},
            "rows": rows, "elapsed_s": round(time.monotonic() - t0, 1)}


__all__ = ["BACKENDS", "datapath_status", "finish_row", "lab_opts", "rtt_overhead_us", "run"]
