"""`crossnet bench control`: how fast crossnet reacts.

- attach: latency of ``crossnet.containers.attach`` in one process over ≥ 200
  containers on one simulated host, and of ``crossnet attach NAME`` end to end (one
  CLI process per container, as a user or script runs it); detach too.
- peers: ``crossnet apply`` of a cluster file with N simulated peers (N = 10, 100,
  1,000; their underlay addresses are on the host's LAN), then a second (no-op)
  apply and a reset — CLI wall time and the apply's own time.
- CNI: ADD/DEL latency of crossnet-cni vs the reference bridge + host-local plugins,
  both executed the way a runtime executes a plugin, interleaved.
- podman: ``podman run --rm`` with --network none / reference bridge / crossnet.
- agent: programming latency of the etcd agent, when it exists.
- mesh: `crossnet launch --token` join latency, idle etcd+agent footprint (meshbench).

Peak RSS of every crossnet process involved is recorded in RunContext.memory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from crossnet.bench import CONTROL_PARTS
from crossnet.bench.util import (
    RunContext,
    Skip,
    bench_lab,
    clean_error,
    crossnet_cli,
    interleaved_runs,
    loadavg,
    ratio,
    run_measured,
    runtime_run_bench,
    summary,
)

REFERENCE_PLUGIN_DIR = "/usr/lib/cni"


def _worker(lab: Any, host: Any, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    argv = lab.argv(host.name, [sys.executable, "-m", "crossnet.bench.worker"])
    res = run_measured(argv, timeout=timeout, input=json.dumps(request))
    if not res.ok:
        raise RuntimeError(f"bench worker ({request.get('mode')}) failed: {res.error_line()}")
    try:
        data = json.loads(res.stdout)
    except ValueError:
        raise RuntimeError(f"bench worker ({request.get('mode')}) printed no JSON: {res.error_line()}") from None
    data["_worker_maxrss_kb"] = res.maxrss_kb
    return data


def _make_netns(names: list[str]) -> None:
    from crossnet.lab import netns as ns

    for n in names:
        ns.create_netns(n)


# ---------------------------------------------------------------- attach


def _lab(backend: str, datapath: str) -> dict[str, Any]:
    """A one-host lab; `datapath: ebpf` (docs/datapath.md) as `lab up --datapath ebpf`."""
    return {"hosts": 1, "containers": 0, "backend": backend,
            "extra": {"datapath": datapath} if datapath != "kernel" else {}}


def bench_attach(rc: RunContext, count: int = 200, cli_count: int = 200, backend: str = "vxlan",
                 datapath: str = "kernel") -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend, "datapath": datapath, "status": "ok", "load_before": loadavg()}
    t0 = time.monotonic()
    try:
        with bench_lab(_lab(backend, datapath)) as lab:
            h = lab.hosts[0]
            names = [f"{h.netns}-a{i}" for i in range(max(count, cli_count))]
            rc.log(f"attach: creating {len(names)} container namespaces")
            _make_netns(names)
            rc.log(f"attach: {count} in-process attaches on one host")
            r = _worker(lab, h, {"mode": "attach", "state_dir": h.state_dir, "names": names[:count],
                                 "detach": True}, timeout=60 + count * 2)
            out["inprocess"] = {"attach_ms": summary(r["attach_ms"], 3), "detach_ms": summary(r["detach_ms"], 3),
                                "distinct_addresses": r["addresses"], "errors": r["errors"][:5],
                                "first_ms": round(r["attach_ms"][0], 3) if r["attach_ms"] else None}
            rc.note_memory("bench worker (in-process attach/detach)", f"{count} attaches + detaches",
                           max(r.get("rss_kb") or [0]) or r["_worker_maxrss_kb"])
            if cli_count:
                rc.log(f"attach: {cli_count} × `crossnet attach` (CLI, one process each)")
                r = _worker(lab, h, {"mode": "attach", "state_dir": h.state_dir, "names": names[:cli_count],
                                     "cli": True, "detach": True, "breakdown": True}, timeout=120 + cli_count * 10)
                out["cli"] = {"attach_ms": summary(r["attach_ms"], 3), "detach_ms": summary(r["detach_ms"], 3),
                              "errors": r["errors"][:5]}
                if r.get("breakdown"):
                    # where a CLI attach's time goes (interpreter, site, imports: worker._breakdown_probes)
                    out["cli"]["breakdown"] = r["breakdown"]
                rc.note_memory("crossnet attach (CLI)", f"max over {cli_count} runs", max(r.get("rss_kb") or [0]))
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        out.update(status="failed", reason=clean_error(exc))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


# ---------------------------------------------------------------- N peers


def peers_cluster(name: str, backend: str, host: Any, n: int) -> dict[str, Any]:
    """h1 (the lab host) + n simulated peers with addresses on h1's LAN."""
    lan = ipaddress.ip_network(host.subnet)
    first = lan.network_address + 1024  # well above the lab's own hosts (.10, .11 ...)
    if n + 1024 + 2 > lan.num_addresses:
        raise Skip(f"the lab LAN {lan} is too small for {n} simulated peers")
    hosts = [{"name": host.name, "address": host.address, "iface": host.ifname}]
    hosts += [{"name": f"p{i}", "address": str(first + i), "iface": "eth0"} for i in range(n)]
    subnets_needed = n + 1
    prefix = 24 - max(0, (subnets_needed - 1).bit_length())
    return {"name": name, "backend": backend, "network": f"10.32.0.0/{min(prefix, 16)}", "subnet_len": 24,
            "hosts": hosts}


def _apply_json(res) -> dict[str, Any]:
    try:
        return json.loads(res.stdout)
    except ValueError:
        return {}


def profile_apply(backend: str, n: int, top: int = 45) -> str | None:
    """pyinstrument text profile of `crossnet apply` of n peers, on a fresh host (a
    new lab: cheaper than resetting thousands of peers)."""
    if importlib.util.find_spec("pyinstrument") is None:
        return None
    with bench_lab({"hosts": 1, "containers": 0, "backend": "vxlan"}, apply=False) as lab:
        h = lab.hosts[0]
        path = Path(lab.plan.lab_dir) / f"profile-{backend}-{n}.yaml"
        path.write_text(yaml.safe_dump(peers_cluster(lab.name, backend, h, n), sort_keys=False))
        out = Path(lab.plan.lab_dir) / "profile.txt"
        res = run_measured(lab.argv(h.name, [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(out),
                                             "-m", "crossnet", "apply", "-f", str(path), "--host", h.name,
                                             "-o", "json"]), timeout=600)
        text = out.read_text() if res.ok and out.exists() else None
    if not text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:top])


def bench_peers(rc: RunContext, sizes: tuple[int, ...] = (10, 100, 1000), backends: tuple[str, ...] = ("vxlan",),
                profile_over_s: float | None = None, reset_max: int = 1000, repeats: int = 1) -> dict[str, Any]:
    """Per backend and N: `repeats` × (apply, no-op re-apply, reset), medians reported.
    reset is timed up to `reset_max` peers; above, the host is left for `lab down`
    (only possible for the last size)."""
    out: dict[str, Any] = {"status": "ok", "rows": [], "repeats": repeats, "load_before": loadavg()}
    t0 = time.monotonic()
    cli = crossnet_cli()
    sizes = tuple(sorted(sizes))
    med = lambda xs: round(statistics.median(xs), 4) if xs else None  # noqa: E731
    try:
        for backend in backends:
            with bench_lab({"hosts": 1, "containers": 0, "backend": "vxlan"}, apply=False) as lab:
                h = lab.hosts[0]
                for n in sizes:
                    rc.log(f"peers: apply {backend} with {n} peers" + (f" ({repeats}×)" if repeats > 1 else ""))
                    path = Path(lab.plan.lab_dir) / f"peers-{backend}-{n}.yaml"
                    path.write_text(yaml.safe_dump(peers_cluster(lab.name, backend, h, n), sort_keys=False))
                    apply_argv = lab.argv(h.name, [*cli, "apply", "-f", str(path), "--host", h.name, "-o", "json"])
                    row: dict[str, Any] = {"backend": backend, "peers": n, "status": "ok"}
                    aw, ai, nw, ni, rw, rss, changes, noop_changed = [], [], [], [], [], [], None, None
                    for rep in range(repeats):
                        first = run_measured(apply_argv, timeout=900)
                        if not first.ok:
                            row.update(status="failed", reason=first.error_line())
                            run_measured(lab.argv(h.name, [*cli, "reset"]), timeout=900)
                            break
                        fj = _apply_json(first)
                        second = run_measured(apply_argv, timeout=900)
                        sj = _apply_json(second)
                        aw.append(first.wall_s)
                        ai.append(fj.get("elapsed_s") or 0.0)
                        nw.append(second.wall_s)
                        ni.append(sj.get("elapsed_s") or 0.0)
                        rss.append(first.maxrss_kb)
                        changes = len(fj.get("changes") or [])
                        noop_changed = bool(noop_changed) or bool(sj.get("changed"))
                        last = n == sizes[-1] and rep == repeats - 1
                        if n <= reset_max or not last:
                            reset = run_measured(lab.argv(h.name, [*cli, "reset", "-o", "json"]), timeout=900)
                            if reset.ok:
                                rw.append(reset.wall_s)
                    if row["status"] == "ok":
                        row.update(
                            changes=changes,
                            apply_wall_s=med(aw), apply_wall_min_s=round(min(aw), 4), apply_wall_max_s=round(max(aw), 4),
                            apply_internal_s=med(ai),
                            noop_wall_s=med(nw), noop_internal_s=med(ni), noop_changed=noop_changed,
                            reset_wall_s=med(rw),
                            apply_rss_mb=round(max(rss) / 1024, 1),
                        )
                        rc.note_memory("crossnet apply (CLI)", f"{backend}, {n} peers", max(rss))
                        if profile_over_s is not None and n == max(sizes) and med(aw) > profile_over_s:
                            rc.log(f"peers: profiling apply of {n} peers (pyinstrument)")
                            row["profile"] = profile_apply(backend, n)
                    out["rows"].append(row)
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        out.update(status="failed", reason=clean_error(exc))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


# ---------------------------------------------------------------- CNI


def _helper_rss_kb(netns: str, needle: str) -> int | None:
    """Peak RSS of a long-lived process of ours in `netns` whose command line has `needle`."""
    from crossnet.bench.util import vm_hwm_kb
    from crossnet.lab import netns as ns

    best = None
    for pid in ns.netns_pids([netns]).get(netns, []):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            kb = vm_hwm_kb(pid)
            if kb and (best is None or kb > best):
                best = kb
    return best


def reference_conf(base: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "benchref",
        "type": "bridge",
        "bridge": "cnref0",
        "isGateway": True,
        "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": str(base / "host-local"),
                 "ranges": [[{"subnet": "10.250.0.0/24", "gateway": "10.250.0.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }


def bench_cni(rc: RunContext, count: int = 50, backend: str = "vxlan", datapath: str = "kernel") -> dict[str, Any]:
    if not all(os.access(f"{REFERENCE_PLUGIN_DIR}/{p}", os.X_OK) for p in ("bridge", "host-local")):
        return {"status": "skipped", "reason": f"reference CNI plugins missing in {REFERENCE_PLUGIN_DIR}"}
    out: dict[str, Any] = {"status": "ok", "backend": backend, "datapath": datapath, "load_before": loadavg()}
    t0 = time.monotonic()
    try:
        from crossnet.cni.install import install

        with bench_lab(_lab(backend, datapath)) as lab:
            h = lab.hosts[0]
            base = Path(lab.plan.lab_dir) / "hosts" / h.name / "bench-cni"
            base.mkdir(parents=True, exist_ok=True)
            log_file = base / "cni.log"
            info = install(h.state_dir, conf_dir=str(base / "net.d"), bin_dir=str(base / "bin"), name="crossnet",
                           portmap=False, log_file=str(log_file), helper="spawn")
            out["client"] = info.get("client")  # native | python
            conflist = json.loads(Path(info["conflist"]).read_text())
            xconf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            xs = [f"{h.netns}-x{i}" for i in range(count)]
            rs = [f"{h.netns}-r{i}" for i in range(count)]
            _make_netns(xs + rs)
            rc.log(f"cni: {count} ADD + DEL each, crossnet-cni vs bridge + host-local (interleaved)")
            req = {"mode": "cni", "cni_path": f"{base / 'bin'}:{REFERENCE_PLUGIN_DIR}", "plugins": [
                {"label": "crossnet-cni", "plugin": info["plugin"], "conf": xconf, "netns": xs},
                {"label": "bridge+host-local", "plugin": f"{REFERENCE_PLUGIN_DIR}/bridge",
                 "conf": reference_conf(base), "netns": rs},
            ]}
            r = _worker(lab, h, req, timeout=120 + count * 10)
            starts = [run_measured(lab.argv(h.name, [sys.executable, "-S", "-c", "pass"]), timeout=30).wall_s * 1000
                      for _ in range(5)]
            out["python_start_ms"] = summary(starts, 2)  # bare `python -S` in the host (ip netns exec included)
            starts = [run_measured(lab.argv(h.name, ["true"]), timeout=30).wall_s * 1000 for _ in range(5)]
            out["netns_exec_ms"] = summary(starts, 2)
            helper_kb = _helper_rss_kb(h.netns, "crossnet.cni.server")
            if helper_kb:
                out["helper_peak_rss_mb"] = round(helper_kb / 1024, 1)
                rc.note_memory("crossnet-cni warm helper (crossnet.cni.server)", f"{count} ADD + {count} DEL",
                               helper_kb)
            for label, rec in r.items():
                if label.startswith("_"):
                    continue
                out[label] = {"add_ms": summary(rec["add_ms"], 3), "del_ms": summary(rec["del_ms"], 3),
                              "first_add_ms": round(rec["add_ms"][0], 3) if rec["add_ms"] else None,
                              "errors": rec["errors"][:5],
                              "peak_rss_mb": round(max(rec["rss_kb"] or [0]) / 1024, 1)}
                if label == "crossnet-cni":
                    rc.note_memory("crossnet-cni", f"max over {count} ADD + {count} DEL", max(rec["rss_kb"] or [0]))
            out.update(_helper_times(log_file))
            x, ref = out.get("crossnet-cni", {}), out.get("bridge+host-local", {})
            with contextlib.suppress(KeyError, TypeError):
                out["add_ratio"] = ratio(x["add_ms"]["median"], ref["add_ms"]["median"])
                out["del_ratio"] = ratio(x["del_ms"]["median"], ref["del_ms"]["median"])
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        out.update(status="failed", reason=clean_error(exc))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


def _helper_times(log_file: Path) -> dict[str, Any]:
    """The plugin's own timing of every call it served (its logFile lines): how much of a
    crossnet-cni call is the helper's work, and how many calls the helper served."""
    by: dict[str, list[float]] = {}
    via: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log_file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("command") in ("ADD", "DEL") and isinstance(rec.get("elapsed_ms"), (int, float)):
                    if rec.get("via") == "server":
                        by.setdefault(rec["command"], []).append(float(rec["elapsed_ms"]))
                    via[str(rec.get("via"))] = via.get(str(rec.get("via")), 0) + 1
    out: dict[str, Any] = {"served_via": via}
    if by.get("ADD"):
        out["helper_add_ms"] = summary(by["ADD"], 3)
    if by.get("DEL"):
        out["helper_del_ms"] = summary(by["DEL"], 3)
    return out


# ---------------------------------------------------------------- podman


def bench_podman(rc: RunContext, runs: int = 10, backend: str = "vxlan") -> dict[str, Any]:
    from crossnet.lab import podman as lp

    def measure(lab: Any, out: dict[str, Any]) -> None:
        p = lp.host_podman(lab.plan, lab.hosts[0])
        if not p.net_dir.exists():  # the lab's podman service did not run: set it up here
            p.setup(portmap=False)
            p.ensure_image()
        ref_name = "benchref"
        ref = {"cniVersion": "1.0.0", "name": ref_name, "plugins": [reference_conf(p.base)]}
        xlist = json.loads(next(p.net_dir.glob(f"*{p.network}.conflist")).read_text())
        # compare plugin with plugin: no portmap in either list
        xlist["plugins"] = [pl for pl in xlist["plugins"] if pl.get("type") != "portmap"]
        xlist["name"] = "benchx"
        (p.net_dir / f"30-{ref_name}.conflist").write_text(json.dumps(ref, indent=2))
        (p.net_dir / "30-benchx.conflist").write_text(json.dumps(xlist, indent=2))
        nets = {"none": "none", "bridge+host-local": ref_name, "crossnet-cni": "benchx"}
        rc.log(f"podman: warm-up, then {runs} × run --rm per network (interleaved)")
        out.update(interleaved_runs(lambda net: p.argv("run", "--rm", "--network", net, lp.IMAGE, "true"), nets,
                                    runs, env=p.env(), what="podman run", ref="bridge+host-local",
                                    mine="crossnet-cni"))

    return runtime_run_bench("podman", "podman not installed", "podman", backend, runs, measure)


# ---------------------------------------------------------------- agent


def bench_agent(rc: RunContext, hosts: int = 20, joins: int = 10) -> dict[str, Any]:
    """New-host programming latency with the etcd agent (lab --store etcd)."""
    from crossnet.bench import agentbench

    try:
        return agentbench.run(rc, hosts=hosts, joins=joins)
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "reason": clean_error(exc)}


def bench_dns(rc: RunContext) -> dict[str, Any]:
    """Container DNS: query latency at 1,000/s, and how fast a change reaches another host."""
    from crossnet.bench import dnsbench

    try:
        return dnsbench.run(rc, queries=1000 if rc.quick else 3000, changes=3 if rc.quick else 5)
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "reason": clean_error(exc)}


def bench_mesh(rc: RunContext, hosts: int = 5, joins: int = 10, idle_s: float = 30.0) -> dict[str, Any]:
    """`crossnet launch --token` join latency and the idle etcd+agent footprint."""
    from crossnet.bench import meshbench

    try:
        return meshbench.run(rc, hosts=hosts, joins=joins, idle_s=idle_s)
    except Skip as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "reason": clean_error(exc)}


# ---------------------------------------------------------------- suite


PARTS = CONTROL_PARTS  # `bench control --only`


def _ebpf_variant(rc: RunContext, what: str, measure: Any) -> dict[str, Any]:
    """Issue 18: a control row again with `datapath: ebpf` (routed veths, the veth's
    program attached), to compare with the kernel row of the same run."""
    from crossnet import ebpf

    why = "--quick (the full control suite measures it)" if rc.quick else ebpf.problem()
    if why:
        return {"status": "skipped", "reason": why}
    rc.log(f"{what} again with datapath ebpf")
    return measure()


def run(rc: RunContext, attach_count: int = 200, cli_count: int = 200, peer_sizes: tuple[int, ...] = (10, 100, 1000),
        peer_backends: tuple[str, ...] = ("vxlan", "host-gw"), cni_count: int = 50, podman_runs: int = 10,
        agent: bool = True, profile: bool = False, reset_max: int = 1000, agent_hosts: int = 20,
        agent_joins: int = 10, peer_repeats: int = 1, mesh: bool = True, mesh_hosts: int = 5, mesh_joins: int = 10,
        mesh_idle: float = 30.0, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """The control suite; ``parts`` (PARTS): the ones measured, the others recorded as
    skipped (attach and cni include their `datapath: ebpf` rows)."""
    t0 = time.monotonic()
    res: dict[str, Any] = {"suite": "control", "params": {
        "attach_count": attach_count, "cli_count": cli_count, "peer_sizes": list(peer_sizes),
        "peer_backends": list(peer_backends), "cni_count": cni_count, "podman_runs": podman_runs,
        "agent": agent, "agent_hosts": agent_hosts, "agent_joins": agent_joins, "mesh": mesh,
        "mesh_hosts": mesh_hosts, "mesh_joins": mesh_joins, "mesh_idle": mesh_idle, "parts": list(parts)}}
    unasked = {"status": "skipped", "reason": "not asked for (--only)"}

    def part(name: str, measure: Any) -> dict[str, Any]:
        return measure() if name in parts else dict(unasked)

    res["attach"] = part("attach", lambda: bench_attach(rc, attach_count, cli_count))
    res["peers"] = part("peers", lambda: bench_peers(rc, peer_sizes, peer_backends,
                                                     profile_over_s=1.0 if profile else None, reset_max=reset_max,
                                                     repeats=peer_repeats))
    res["cni"] = part("cni", lambda: bench_cni(rc, cni_count))
    res["attach_ebpf"] = part("attach", lambda: _ebpf_variant(
        rc, "attach", lambda: bench_attach(rc, attach_count, 0, datapath="ebpf")))
    res["cni_ebpf"] = part("cni", lambda: _ebpf_variant(
        rc, "CNI ADD/DEL", lambda: bench_cni(rc, cni_count, datapath="ebpf")))
    off = {"status": "skipped", "reason": "disabled (--podman-runs 0)"}
    res["podman"] = part("podman", lambda: bench_podman(rc, podman_runs) if podman_runs else dict(off))
    from crossnet.bench import dockerbench

    if rc.quick:  # a dockerd per lab host takes a minute on a loaded 2-core CI machine
        res["docker"] = {"status": "skipped", "reason": "--quick (the full control suite measures it)"}
    else:
        res["docker"] = part("podman", lambda: dockerbench.run(rc, podman_runs) if podman_runs else dict(off))
    disabled = {"status": "skipped", "reason": "disabled for this run"}
    res["agent"] = part("agent", lambda: bench_agent(rc, agent_hosts, agent_joins) if agent else dict(disabled))
    res["dns"] = part("agent", lambda: bench_dns(rc) if agent else {
        "status": "skipped", "reason": "disabled for this run (with the agent)"})
    res["mesh"] = part("mesh", lambda: bench_mesh(rc, mesh_hosts, mesh_joins, mesh_idle) if mesh else dict(disabled))
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


__all__ = ["run", "bench_attach", "bench_peers", "bench_cni", "bench_podman", "bench_agent", "bench_dns", "bench_mesh"]
