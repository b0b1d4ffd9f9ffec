"""`crossnet bench dataplane`: per backend a 4-host lab on one switch. h1, h2 run
crossnet with one container each (the path under test: TCP throughput with iperf3
and ping RTT container→container); h3 → h4 are two more hosts of the same lab that
crossnet never touches: the underlay, i.e. the physical limit of that lab. The two
paths are measured interleaved run by run; results are ratios to that underlay.

Why the underlay is a separate pair and not h1 → h2: crossnet rebuilds h1's and h2's
own networking (the bridge backend enslaves the NIC to a bridge, the OVS backends
move the host's address onto an OVS bridge), so host→host between them would cross
crossnet's data path, not the bare wire; and measuring it before `apply` would not be
interleaved with the container runs. h3, h4 sit on the same switch with the same
veths and MTU, untouched.

Each backend's hand-built twin (crossnet.bench.manual: the same design typed by hand,
built on h1, h2 of a second lab without crossnet, up at the same time on its own
switch) is measured in the same rounds: every round runs crossnet's path, the underlay
and the twin's one after the other (the order reversed every other round), so the
figure crossnet ÷ twin (`twin_comparison`: the median over pairs of rounds of the
per-round ratio, with its spread) carries no drift between two labs measured minutes
apart. A backend without a twin (or --no-manual) runs alone with its underlay; a
diagnostic layout (full runs) in a lab of its own, compared through each one's
underlay. Peak RSS of the crossnet processes that build the labs
(`crossnet apply`, `crossnet attach`) and of any long-lived crossnet process in the
hosts is recorded in RunContext.memory.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Callable

from crossnet.bench import manual, traffic
from crossnet.bench.util import (
    RunContext,
    Skip,
    bench_lab,
    clean_error,
    loadavg,
    median_ratio,
    pair_ratios,
    ratio,
    round_ratios,
    run_measured,
    summary,
    vm_hwm_kb,
)

DEFAULT_MTUS = (1500, 9000)
# the order rows appear in (hand-built baseline right before its crossnet equivalent)
ORDER = ("manual-bridge-routes", "host-gw", "manual-bridge-nic", "bridge", "manual-vxlan", "vxlan", "manual-ovs-gre", "manual-ovs-gre-via",
         "ovs-gre", "ovs-vxlan", "manual-wireguard", "wireguard")


# run only when asked for (--backends wireguard, with its hand-built manual-wireguard); the
# wireguard target is measured interleaved in one lab by `crossnet bench wireguard` (wgbench)
NOT_BY_DEFAULT = ("wireguard", "auto")  # auto: `crossnet bench transport`, or --backends auto,host-gw


def all_backends() -> list[str]:
    from crossnet.backends import backend_names

    names = [n for n in backend_names() if n not in NOT_BY_DEFAULT]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def backend_unavailable(name: str) -> str | None:
    """Why backend `name` cannot be benchmarked here (None: it can)."""
    from crossnet.backends import BACKENDS

    if name not in BACKENDS:
        return f"unknown backend {name!r}"
    if name.startswith("ovs") and not shutil.which("ovs-vswitchd"):
        return "openvswitch-switch not installed"
    if name in ("wireguard", "auto") and not shutil.which("wireguard-go") and not os.path.exists("/sys/module/wireguard"):
        return "no wireguard kernel module and wireguard-go not installed"
    return None


def round_order(labels: list[str], i: int) -> list[str]:
    """The order of round i (from 0): the paths as given, reversed every other round, so
    that over a pair of rounds each path runs once before and once after each other."""
    return list(labels) if i % 2 == 0 else list(reversed(labels))


def paired(paths: dict[str, tuple[str, str, str]], repeats: int, duration: float, ping_count: int,
           cpu: int | None = None) -> dict[str, dict[str, Any]]:
    """iperf3 + ping on several paths {label: (client netns, server netns, address)},
    interleaved run by run (`round_order`), so load changes on this shared machine hit
    every path alike; sample i of every path comes from round i. `cpu`: every iperf3
    client and server pinned to that CPU (`RunContext.cpu`, `--cpu`)."""
    for client, _server, addr in paths.values():
        traffic.wait_reachable(client, addr)
    gbps: dict[str, list[float]] = {k: [] for k in paths}
    retr: dict[str, list[int | None]] = {k: [] for k in paths}
    servers = [traffic.IperfServer(server, cpu=cpu) for _c, server, _a in paths.values()]
    try:
        for srv in servers:
            srv.start()
        labels = list(paths)
        for i in range(repeats):
            for label in round_order(labels, i):
                client, _server, addr = paths[label]
                g, r = traffic.iperf_gbps(client, addr, duration, cpu=cpu)
                gbps[label].append(g)
                retr[label].append(r)
    finally:
        for srv in servers:
            srv.stop()
    out = {}
    for label, (client, _server, addr) in paths.items():
        rtts = traffic.ping_rtts(client, addr, ping_count)
        out[label] = {"gbps": summary(gbps[label]), "retransmits": retr[label], "rtt": traffic.rtt_summary(rtts)}
    return out


def at_once(fn: Callable[[Any], Any], hosts: tuple[Any, ...]) -> None:
    """fn on every host at once (as `lab up` does); the first error is raised."""
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = [pool.submit(fn, h) for h in hosts]
    for f in futures:
        f.result()


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    u, o = row.get("underlay"), row.get("overlay")
    if u and o:
        row["ratio"] = ratio(o["gbps"]["median"], u["gbps"]["median"])
        row["ratio_min"] = ratio(o["gbps"]["min"], u["gbps"]["max"])
        row["ratio_max"] = ratio(o["gbps"]["max"], u["gbps"]["min"])
        row["rtt_p50_ratio"] = ratio(o["rtt"]["p50_ms"], u["rtt"]["p50_ms"])
    return row


def crossnet_measured(lab: Any, host: Any, args: list[str], timeout: float) -> int:
    """`crossnet ARGS` in a host namespace, as the lab runs it (this interpreter);
    returns the peak RSS (kB) of that process (wait4)."""
    from crossnet.lab.manager import crossnet_argv

    res = run_measured(lab.argv(host.name, crossnet_argv(*args)), timeout=timeout)
    if not res.ok:
        raise RuntimeError(f"{host.name}: crossnet {args[0]} failed: {res.error_line()}")
    return res.maxrss_kb


def _long_lived_rss(netns_names: list[str]) -> dict[str, int]:
    """Peak RSS (VmHWM, kB) of crossnet processes still running in these namespaces
    (an agent, a CNI helper), by command: {command: max kB}."""
    from crossnet.lab import netns as ns

    out: dict[str, int] = {}
    for pids in ns.netns_pids(netns_names).values():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    args = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            except OSError:
                continue
            if not args or not os.path.basename(args[0]).startswith(("python", "crossnet")):
                continue  # not ours (ovsdb-server, ovs-vswitchd: their paths may contain "crossnet")
            # the crossnet entry: `python -m crossnet[.mod] CMD`, or the crossnet / crossnet-cni script
            i = next((i for i, a in enumerate(args) if a == "crossnet" or a.startswith("crossnet.")
                      or os.path.basename(a) in ("crossnet", "crossnet-cni")), None)
            if i is None or args[i].startswith("crossnet.bench"):
                continue
            key = os.path.basename(args[i])
            rest = args[i + 1:]
            while rest and rest[0].startswith("-"):  # top-level options: --state-dir DIR
                rest = rest[1:] if "=" in rest[0] else rest[2:]
            if rest:
                key += f" {rest[0]}"  # the command: `crossnet agent`
            kb = vm_hwm_kb(pid)
            if kb:
                out[key] = max(out.get(key, 0), kb)
    return out


def _lab_opts(mtu: int, backend: str, containers: int) -> dict[str, Any]:
    """4 hosts on one switch: h1, h2 carry the path under test, h3 → h4 (never
    configured) is the underlay, measured in the same minutes, interleaved."""
    return {"hosts": 4, "underlay": "l2", "backend": backend, "containers": containers,
            "mtu": None if mtu == 1500 else mtu}


def _crossnet_row(backend: str, mtu: int) -> dict[str, Any]:
    return {"name": backend, "kind": "crossnet", "mtu": mtu, "status": "ok"}


def _manual_row(name: str, mtu: int) -> dict[str, Any]:
    cls = manual.LAYOUTS[name]
    return {"name": name, "kind": "manual", "mtu": mtu, "status": "ok", "description": cls.description,
            "compares_with": cls.compares_with, "diagnoses": cls.diagnoses}


def apply_and_attach(rc: RunContext, lab: Any, hosts: tuple[Any, ...], where: str) -> dict[str, list[int]]:
    """`crossnet apply` + `attach` of every container on ``hosts`` (the hosts at once, as
    `lab up` does); the commands' peak RSS noted in rc under ``where`` and returned (KiB)."""
    from crossnet.lab.manager import APPLY_TIMEOUT, ATTACH_TIMEOUT

    rss: dict[str, list[int]] = {"apply": [], "attach": []}
    at_once(lambda h: rss["apply"].append(
        crossnet_measured(lab, h, ["apply", "-f", lab.plan.cluster_file, "--host", h.name], APPLY_TIMEOUT)), hosts)
    at_once(lambda h: rss["attach"].extend(
        crossnet_measured(lab, h, ["attach", c], ATTACH_TIMEOUT) for c in h.containers), hosts)
    rc.note_memory("crossnet apply (CLI)", where, max(rss["apply"]))
    rc.note_memory("crossnet attach (CLI)", where, max(rss["attach"]))
    return rss


def _set_up_crossnet(rc: RunContext, lab: Any, backend: str, mtu: int, row: dict[str, Any]
                     ) -> tuple[str, str, str]:
    """`crossnet apply` + `attach` on h1, h2 of `lab` (peak RSS noted in rc and row);
    the container→container path (client netns, server netns, address)."""
    h1, h2 = lab.hosts[:2]
    rc.log(f"{backend} mtu {mtu}: crossnet apply + attach on {h1.name}, {h2.name}")
    rss = apply_and_attach(rc, lab, (h1, h2), f"data plane lab: {backend}, MTU {mtu} (max over {h1.name}, {h2.name})")
    row["crossnet_rss_mb"] = {k: round(max(v) / 1024, 1) for k, v in rss.items() if v}
    st2 = lab.status(h2.name)
    dst = next(c for c in st2["containers"] if c["netns"].endswith(h2.containers[0]))
    row["container_mtu"] = st2.get("mtu")
    row["datapath"] = st2.get("datapath")
    return h1.containers[0], h2.containers[0], dst["address"].split("/")[0]


def _note_long_lived(rc: RunContext, lab: Any, backend: str, mtu: int, row: dict[str, Any]) -> None:
    """Agent, helpers: their peak RSS after the traffic."""
    for cmd, kb in _long_lived_rss([h.netns for h in lab.hosts[:2]]).items():
        rc.note_memory(cmd, f"data plane lab: {backend}, MTU {mtu}", kb)
        row.setdefault("crossnet_rss_mb", {})[cmd] = round(kb / 1024, 1)


def measure_backend(rc: RunContext, backend: str, mtu: int, repeats: int, duration: float,
                    ping_count: int) -> dict[str, Any]:
    """A backend without a twin in this run: its path and its lab's underlay."""
    row = _crossnet_row(backend, mtu)
    why = backend_unavailable(backend)
    if why:
        return {**row, "status": "skipped", "reason": why}
    t0 = time.monotonic()
    row["load_before"] = loadavg()
    try:
        with bench_lab(_lab_opts(mtu, backend, 1), apply=False) as lab:
            h3, h4 = lab.hosts[2:4]
            path = _set_up_crossnet(rc, lab, backend, mtu, row)
            rc.log(f"{backend} mtu {mtu}: container→container and underlay {h3.name}→{h4.name}")
            row.update(paired({"overlay": path, "underlay": (h3.netns, h4.netns, h4.address)},
                               repeats, duration, ping_count, cpu=rc.cpu))
            _note_long_lived(rc, lab, backend, mtu, row)
    except Skip as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the suite
        row.update(status="failed", reason=clean_error(exc))
    row["elapsed_s"] = round(time.monotonic() - t0, 1)
    return _finish(row)


def twin_comparison(row: dict[str, Any], twin: dict[str, Any]) -> dict[str, Any] | None:
    """crossnet ÷ its hand-built twin from one interleaved measurement (`measure_with_twin`:
    sample i of both paths comes from round i): the figure is `median_round_ratio`, the
    median over pairs of rounds (one in each order) of the per-round ratio; the per-round
    and per-pair ratios are its spread. `ratio` (= `ratio_of_medians`) is the ratio of
    the medians; `normalised_ratio` the same through the shared underlay."""
    if row.get("status") != "ok" or twin.get("status") != "ok":
        return None
    a, b = row["overlay"]["gbps"]["samples"], twin["overlay"]["gbps"]["samples"]
    of_medians = ratio(row["overlay"]["gbps"]["median"], twin["overlay"]["gbps"]["median"])
    return {"baseline": twin["name"], "interleaved": True,
            "median_round_ratio": median_ratio(a, b),
            "round_ratios": [round(x, 3) for x in round_ratios(a, b)],
            "pair_ratios": [round(x, 3) for x in pair_ratios(a, b)],
            "ratio": of_medians, "ratio_of_medians": of_medians,
            "normalised_ratio": ratio(row.get("ratio"), twin.get("ratio"))}


def _twin_lab_opts(mtu: int) -> dict[str, Any]:
    """The twin's lab: 2 hosts on a switch of their own, no crossnet (the backend only names the lab's plan)."""
    return {"hosts": 2, "underlay": "l2", "backend": "vxlan", "containers": 0, "mtu": None if mtu == 1500 else mtu}


def measure_with_twin(rc: RunContext, backend: str, twin: str, mtu: int, repeats: int, duration: float,
                      ping_count: int) -> list[dict[str, Any]]:
    """crossnet's `backend` and its hand-built `twin` in the same rounds: two labs up at
    once (crossnet on h1, h2 of a 4-host lab whose h3 → h4 is the underlay; the twin on
    a 2-host lab of its own), every round one iperf3 run on each of crossnet, the
    underlay and the twin (`round_order`: crossnet and twin swap ends every other round,
    so a pair of rounds gives both every position once). Returns [twin row, crossnet row] (both ÷ the same
    underlay), the crossnet row's `vs_manual` from `twin_comparison`."""
    cls = manual.LAYOUTS[twin]
    row, trow = _crossnet_row(backend, mtu), _manual_row(twin, mtu)
    why = backend_unavailable(backend)
    if why:
        return [{**trow, "status": "skipped", "reason": f"its backend {backend}: {why}"},
                {**row, "status": "skipped", "reason": why}]
    t0 = time.monotonic()
    row["load_before"] = trow["load_before"] = loadavg()
    try:
        with ExitStack() as stack:
            tlab = stack.enter_context(bench_lab(_twin_lab_opts(mtu), apply=False))
            layout = cls(tlab)
            layout.check_available()
            stack.callback(layout.teardown)  # before the labs go (the stack unwinds in reverse)
            lab = stack.enter_context(bench_lab(_lab_opts(mtu, backend, 1), apply=False))
            h3, h4 = lab.hosts[2:4]
            crossnet_path = _set_up_crossnet(rc, lab, backend, mtu, row)
            rc.log(f"{twin} mtu {mtu}: building the tutorial layout by hand")
            built = layout.build(mtu)
            trow["container_mtu"], trow["steps"] = built.container_mtu, built.steps
            # crossnet and twin at the two ends of a round (mirrored every other round):
            # whatever a path's position in a round costs, both pay it alike over a pair
            paths = {"crossnet": crossnet_path, "underlay": (h3.netns, h4.netns, h4.address),
                     "twin": (built.client_ns, built.server_ns, built.server_addr)}
            rc.log(f"{backend} vs {twin} mtu {mtu}: {repeats} interleaved rounds of crossnet, "
                   f"underlay {h3.name}→{h4.name}, twin")
            res = paired(paths, repeats, duration, ping_count, cpu=rc.cpu)
            row.update(overlay=res["crossnet"], underlay=res["underlay"])
            trow.update(overlay=res["twin"], underlay=res["underlay"])
            _note_long_lived(rc, lab, backend, mtu, row)
    except Skip as exc:
        return [{**trow, "status": "skipped", "reason": str(exc)}, {**row, "status": "skipped", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the suite
        for r in (trow, row):
            r.update(status="failed", reason=clean_error(exc))
    row["elapsed_s"] = trow["elapsed_s"] = round(time.monotonic() - t0, 1)
    _finish(trow)
    _finish(row)
    vm = twin_comparison(row, trow)
    if vm:
        row["vs_manual"] = vm
    return [trow, row]


def measure_manual(rc: RunContext, name: str, mtu: int, repeats: int, duration: float,
                   ping_count: int) -> dict[str, Any]:
    """A hand-built layout in a lab of its own with that lab's underlay (a diagnostic layout)."""
    cls = manual.LAYOUTS[name]
    row = _manual_row(name, mtu)
    t0 = time.monotonic()
    row["load_before"] = loadavg()
    try:
        with bench_lab(_lab_opts(mtu, "vxlan", 0), apply=False) as lab:
            layout = cls(lab)
            layout.check_available()
            h3, h4 = lab.hosts[2:4]
            try:
                rc.log(f"{name} mtu {mtu}: building the tutorial layout by hand")
                built = layout.build(mtu)
                row["container_mtu"] = built.container_mtu
                row["steps"] = built.steps
                rc.log(f"{name} mtu {mtu}: container→container and underlay {h3.name}→{h4.name}")
                row.update(paired({"overlay": (built.client_ns, built.server_ns, built.server_addr),
                                    "underlay": (h3.netns, h4.netns, h4.address)}, repeats, duration, ping_count,
                                   cpu=rc.cpu))
            finally:
                layout.teardown()
    except Skip as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", reason=clean_error(exc))
    row["elapsed_s"] = round(time.monotonic() - t0, 1)
    return _finish(row)


def _compare_diagnostics(rows: list[dict[str, Any]]) -> None:
    """A diagnostic layout (own lab) vs the layout it varies at the same MTU, each
    through its own lab's underlay."""
    for r in rows:
        if r["status"] != "ok" or not r.get("diagnoses"):
            continue
        base = next((b for b in rows if b["name"] == r["diagnoses"] and b["mtu"] == r["mtu"]
                     and b["status"] == "ok"), None)
        if base:
            r["vs_manual"] = {"baseline": base["name"],
                              "ratio": ratio(r["overlay"]["gbps"]["median"], base["overlay"]["gbps"]["median"]),
                              "normalised_ratio": ratio(r.get("ratio"), base.get("ratio"))}


def _order(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def plan(backends: list[str], manual_layouts: bool = True, diagnostics: bool = False
         ) -> list[tuple[str | None, str | None]]:
    """What a run measures, in row order: (backend, its twin) measured together
    (`measure_with_twin`); (backend, None) for a backend without a twin or with
    manual_layouts off; (None, layout) for a diagnostic layout whose base twin is in
    the run. Only the given backends and their twins: `--backends X` runs X and X's twin."""
    twins = {cls.compares_with: n for n, cls in manual.LAYOUTS.items() if cls.compares_with and not cls.diagnostic}
    jobs: list[tuple[str | None, str | None]] = [(b, twins.get(b) if manual_layouts else None) for b in backends]
    if manual_layouts and diagnostics:
        have = {t for _b, t in jobs if t}
        jobs += [(None, n) for n, cls in manual.LAYOUTS.items() if cls.diagnostic and cls.diagnoses in have]
    return sorted(jobs, key=lambda j: (min(_order(x) for x in j if x), j[0] or j[1] or ""))


def run(rc: RunContext, backends: list[str] | None = None, mtus: tuple[int, ...] = DEFAULT_MTUS,
        repeats: int = 3, duration: float = 5.0, ping_count: int = 200, manual_layouts: bool = True,
        diagnostics: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    if not shutil.which("iperf3"):
        raise Skip("iperf3 not installed")
    backends = list(dict.fromkeys(backends or all_backends()))
    jobs = plan(backends, manual_layouts, diagnostics)
    t0 = time.monotonic()
    rows = []
    for mtu in mtus:
        for backend, layout in jobs:
            if backend and layout:
                got = measure_with_twin(rc, backend, layout, mtu, repeats, duration, ping_count)
            elif backend:
                got = [measure_backend(rc, backend, mtu, repeats, duration, ping_count)]
            else:
                got = [measure_manual(rc, layout, mtu, repeats, duration, ping_count)]
            for row in got:
                rows.append(row)
                if on_row:
                    on_row(row)
    _compare_diagnostics(rows)
    return {
        "suite": "dataplane",
        "params": {"backends": list(backends), "mtus": list(mtus), "repeats": repeats, "duration_s": duration,
                   "ping_count": ping_count, "manual_layouts": manual_layouts, "diagnostics": diagnostics,
                   "twins_interleaved": True, "cpu": rc.cpu},
        "rows": rows,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


__all__ = ["all_backends", "at_once", "backend_unavailable", "crossnet_measured", "measure_with_twin", "paired", "plan", "round_order",
           "run", "twin_comparison"]
