"""`crossnet bench dataplane|control|all|report`: measure crossnet against its
baselines in the same run, and write docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from typing import Any, Callable, Iterator

import click

from crossnet.backends import backend_names
from crossnet.bench import CONTROL_PARTS
from crossnet.cli.contract import CommaChoice
from crossnet.errors import ConfigError

QUICK = {
    "mtus": (1500,), "repeats": 2, "duration": 1.0, "ping_count": 20,
    "attach_count": 200, "cli_count": 10, "peer_sizes": (10, 100, 1000), "peer_backends": ("vxlan",),
    "reset_max": 1000, "peer_repeats": 1, "cni_count": 10, "podman_runs": 3, "agent": True, "agent_hosts": 4,
    "agent_joins": 5, "diagnostics": False, "mesh": True, "mesh_hosts": 2, "mesh_joins": 2, "mesh_idle": 5.0,
    # `bench datapath` in `bench all --quick`: one short round of host-gw only
    "datapath_repeats": 1, "datapath_skip": {"vxlan": "--quick: host-gw only (`crossnet bench datapath` measures it)"},
}
FULL = {
    "mtus": (1500, 9000), "repeats": 5, "duration": 5.0, "ping_count": 200,
    "attach_count": 250, "cli_count": 200, "peer_sizes": (10, 100, 1000), "peer_backends": ("vxlan", "host-gw"),
    "reset_max": 1000, "peer_repeats": 3, "cni_count": 50, "podman_runs": 10, "agent": True, "agent_hosts": 20,
    "agent_joins": 10, "diagnostics": True, "mesh": True, "mesh_hosts": 5, "mesh_joins": 10, "mesh_idle": 30.0,
    "datapath_repeats": 5, "datapath_skip": {},
}


def _ints(value: str | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers, got {value!r}") from None
    if not out or any(x <= 0 for x in out):
        raise ConfigError(f"{what}: expected positive integers, got {value!r}")
    return out


def _cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (as Cpus_allowed_list writes them)."""
    out: list[str] = []
    for c in cpus:
        if out and out[-1].rpartition("-")[2] == str(c - 1):
            out[-1] = f"{out[-1].partition('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def _cpu_option(_ctx: Any, _param: Any, value: str | None) -> int | None:
    """--cpu: a CPU this process may run on (os.sched_getaffinity), else unpinned (None)."""
    if value is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"--cpu: expected one CPU number ({_cpu_ranges(allowed)}), got {value!r}")
    cpu = int(text)
    if cpu not in allowed:
        raise ConfigError(f"--cpu: CPU {cpu} is not one this machine lets crossnet run on ({_cpu_ranges(allowed)})")
    return cpu


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [x.strip() for x in value.split(",") if x.strip()]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every lab is torn down by its `finally`.

    Only in this process: pyroute2 forks helpers (netns creation, sockets in other
    namespaces) that inherit the handler, and `lab down` SIGTERMs whatever runs in
    a lab namespace. A forked copy that unwound the copied stack would run our
    `finally` blocks (tearing down labs still in use), so forks just exit."""
    main_pid = os.getpid()

    def handler(_sig: int, _frame: Any) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signal.SIGTERM)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("crossnet bench builds lab namespaces and needs root")


def _logger(output: str) -> Callable[[str], None]:
    if output == "json":
        return lambda _m: None
    from rich.console import Console

    con = Console(stderr=True)
    t0 = time.monotonic()
    return lambda m: con.print(f"[dim]{time.monotonic() - t0:6.1f}s[/dim] · {m}", highlight=False)


def _header(quick: bool) -> dict[str, Any]:
    from crossnet.bench.util import git_revision, machine_facts, now_iso
    from crossnet.lab import manager

    argv = ["crossnet", *sys.argv[1:]] if sys.argv and os.path.basename(sys.argv[0]) in ("crossnet", "__main__.py") \
        else ["crossnet", *sys.argv[1:]]
    return {
        "command": " ".join(shlex.quote(a) for a in argv),
        "started": now_iso(),
        "quick": quick,
        "machine": machine_facts(),
        "git": git_revision(os.path.dirname(os.path.abspath(__file__))),
        "other_labs_at_start": [n for n in manager.lab_names()],
    }


def _finish(res: dict[str, Any], rc: Any, t0: float) -> dict[str, Any]:
    from crossnet.bench.targets import evaluate
    from crossnet.bench.util import loadavg
    from crossnet.lab import manager

    res["memory"] = rc.memory
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    res["load_after"] = loadavg()
    res["other_labs_at_end"] = manager.lab_names()
    from crossnet.bench.util import CREATED_LABS

    res["labs_created"] = list(CREATED_LABS)
    cores = res["machine"].get("cores") or 1
    loads = [(res["machine"].get("loadavg") or [0])[0], *res["load_after"][:1]]
    for row in (res.get("dataplane") or {}).get("rows", []) + (res.get("datapath") or {}).get("rows", []):
        loads += (row.get("load_before") or [])[:1]
    for part in (res.get("control") or {}).values():
        if isinstance(part, dict):
            loads += (part.get("load_before") or [])[:1]
    loads = sorted(loads)
    others = sorted(set(res["other_labs_at_start"]) | set(res["other_labs_at_end"]))
    res["load_samples"] = loads
    res["load_note"] = (
        f"Load: 1-min load average sampled before each measurement: median {loads[len(loads) // 2]}, "
        f"max {loads[-1]} on {cores} cores (this benchmark's own iperf3 pairs keep about 2 runnable while they "
        "run, so ~1–2 is the benchmark itself; more means other work shared the machine). "
        + (f"Other labs present during the run: {', '.join(others)}." if others
           else "No other lab was present at the start or the end of the run."))
    res["targets"] = evaluate(res)
    return res


def _emit(res: dict[str, Any], output: str, save: str | None, report: bool, docs: str) -> None:
    if save:
        with open(save, "w") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
    written = None
    if report:
        from crossnet.bench.report import write_report

        written = write_report(res, docs)
    if output == "json":
        click.echo(json.dumps(res, indent=1))
        return
    _print_human(res)
    if written:
        click.echo(f"wrote {', '.join(written.values())}")


def _vs_hand_built(vs: dict[str, Any] | None) -> str:
    """crossnet ÷ its twin: the median over pairs of interleaved rounds (with their range),
    else (a diagnostic layout, an older run) the ratio of the medians."""
    if not vs:
        return ""
    if vs.get("median_round_ratio") is not None:
        each = vs.get("pair_ratios") or vs.get("round_ratios") or []
        return f"{vs['median_round_ratio']:.3f}" + (f" ({min(each)}–{max(each)})" if each else "")
    return f"{vs['ratio']:.3f}" if vs.get("ratio") is not None else ""


def _print_human(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from crossnet.bench.report import pinned_cpu
    from crossnet.bench.targets import verdict

    con = Console(width=None if sys.stdout.isatty() else 160)
    cpu = pinned_cpu(res)
    if cpu is not None:
        con.print(f"iperf3 client and server pinned to CPU {cpu} (--cpu {cpu})")
    dp = res.get("dataplane")
    if dp and dp.get("rows"):
        t = Table(title="data plane: TCP throughput and RTT, container→container vs host→host (same lab)",
                  header_style="bold")
        for col in ("path", "MTU", "ctr MTU", "Gbit/s (min–max)", "underlay Gbit/s", "ratio", "vs hand-built",
                    "RTT p50/p99 ms", "underlay RTT"):
            t.add_column(col)
        for r in dp["rows"]:
            if r["status"] != "ok":
                t.add_row(r["name"], str(r["mtu"]), "", f"[yellow]{r['status']}[/yellow]: {r.get('reason', '')}",
                          "", "", "", "", "")
                continue
            o, u = r["overlay"], r["underlay"]
            vs = r.get("vs_manual")
            t.add_row(r["name"], str(r["mtu"]), str(r.get("container_mtu") or ""),
                      f"{o['gbps']['median']:.2f} ({o['gbps']['min']:.2f}–{o['gbps']['max']:.2f})",
                      f"{u['gbps']['median']:.2f}", f"{r['ratio']:.3f}", _vs_hand_built(vs),
                      f"{o['rtt']['p50_ms']:.3f}/{o['rtt']['p99_ms']:.3f}",
                      f"{u['rtt']['p50_ms']:.3f}/{u['rtt']['p99_ms']:.3f}")
        con.print(t)
    dx = res.get("datapath")
    if dx and dx.get("rows"):
        t = Table(title="datapath ebpf vs kernel: TCP throughput and RTT (interleaved rounds)", header_style="bold")
        for col in ("backend", "MTU", "path", "Gbit/s (min–max)", "÷ underlay", "RTT p50 ms", "RTT overhead µs",
                    "÷ floor", "RTT over floor µs"):
            t.add_column(col)
        for r in dx["rows"]:
            if r["status"] != "ok":
                t.add_row(r["backend"], str(r["mtu"]), "", f"[yellow]{r['status']}[/yellow]: {r.get('reason', '')}",
                          "", "", "", "", "")
                continue
            for name, p in r["paths"].items():
                if "gbps" not in p:
                    t.add_row(r["backend"], str(r["mtu"]), name, f"[yellow]{p.get('status')}[/yellow]: "
                              f"{p.get('reason', '')}", "", "", "", "", "")
                    continue
                g, vf = p["gbps"], p.get("vs_floor") or {}
                t.add_row(r["backend"], str(r["mtu"]), name, f"{g['median']:.2f} ({g['min']:.2f}–{g['max']:.2f})",
                          "1" if name == "underlay" else str(p.get("ratio")), f"{p['rtt']['p50_ms']:.3f}",
                          "" if name == "underlay" else str(p.get("rtt_overhead_us")),
                          str(vf.get("median_round_ratio", "")), str(vf.get("rtt_over_floor_us", "")))
        con.print(t)
    cp = res.get("control")
    if cp:
        t = Table(title="control plane", header_style="bold")
        for col in ("measure", "result"):
            t.add_column(col)
        at = cp.get("attach") or {}
        if "attach" not in cp:  # `bench mesh`: only its own row
            pass
        elif at.get("status") == "ok":
            for key, label in (("inprocess", "attach (in-process)"), ("cli", "attach (CLI)")):
                if at.get(key):
                    a = at[key]["attach_ms"]
                    t.add_row(label, f"n={a['n']} p50 {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms; detach p50 "
                                     f"{at[key]['detach_ms'].get('p50', 0):.1f} ms")
        else:
            t.add_row("attach", f"{at.get('status')}: {at.get('reason')}")
        for r in (cp.get("peers") or {}).get("rows", []):
            if r.get("status") == "ok":
                reset = f", reset {r['reset_wall_s']:.2f} s" if r.get("reset_wall_s") is not None else ""
                t.add_row(f"apply {r['peers']} peers ({r['backend']})",
                          f"CLI {r['apply_wall_s']:.2f} s (inside apply {r.get('apply_internal_s')} s), no-op "
                          f"{r['noop_wall_s']:.2f} s{reset}")
            else:
                t.add_row(f"apply {r['peers']} peers ({r['backend']})", f"{r.get('status')}: {r.get('reason')}")
        if (cp.get("peers") or {}).get("status") not in (None, "ok"):
            t.add_row("peers", f"{cp['peers']['status']}: {cp['peers'].get('reason')}")
        cn = cp.get("cni") or {}
        if "cni" not in cp:
            pass
        elif cn.get("status") == "ok":
            x, r = cn["crossnet-cni"]["add_ms"], cn["bridge+host-local"]["add_ms"]
            t.add_row("CNI ADD", f"crossnet-cni p50 {x['p50']:.1f} ms vs bridge+host-local {r['p50']:.1f} ms "
                                 f"(ratio {cn.get('add_ratio')})")
        else:
            t.add_row("CNI ADD", f"{cn.get('status')}: {cn.get('reason')}")
        for key in ("podman", "docker"):  # `… run --rm` rows (bench.util.interleaved_runs)
            r = cp.get(key) or {}
            if key not in cp:
                pass
            elif r.get("status") == "ok":
                t.add_row(f"{key} run --rm", ", ".join(f"{k} {v['median']:.3f} s" for k, v in r["run_s"].items())
                          + f" (added: {r.get('added_s')})")
            else:
                t.add_row(f"{key} run", f"{r.get('status')}: {r.get('reason')}")
        ag = cp.get("agent") or {}
        if "agent" in cp:
            t.add_row("agent", "ok" if ag.get("status") == "ok" else f"{ag.get('status')}: {ag.get('reason')}")
        me = cp.get("mesh") or {}
        if me.get("status") == "ok":
            v = me["voter"]["total"]
            t.add_row("mesh (crossnet launch)", f"join → every host reaches its container p95 {me['join_s']['p95']:.2f} s "
                                                f"(n={me['join_s']['n']}); voter etcd+agent {v['rss_mb']} MB, "
                                                f"idle CPU {v['cpu_pct']} %")
        elif me:
            t.add_row("mesh (crossnet launch)", f"{me.get('status')}: {me.get('reason')}")
        con.print(t)
    if res.get("memory"):
        t = Table(title="peak RSS", header_style="bold")
        t.add_column("process")
        t.add_column("during")
        t.add_column("MB")
        for m in res["memory"]:
            t.add_row(m["process"], m["what"], f"{m['peak_rss_mb']:.1f}")
        con.print(t)
    t = Table(title="targets (reported, not asserted)", header_style="bold")
    for col in ("target", "goal", "measured", "result", "detail"):
        t.add_column(col)
    for tg in res.get("targets", []):
        if tg["met"] is None and str(tg.get("status") or "").startswith("not measured"):
            continue  # a suite that did not run
        v = "" if tg["value"] is None else f"{tg['value']:.3g} {tg['unit']}"
        res_txt = verdict(tg)
        style = {"met": "green", "MISSED": "red", "met, flagged": "yellow"}.get(res_txt, "yellow")
        if tg.get("also"):
            v += f" ({tg['also']})"
        detail = "; ".join(x for x in [tg["shortfall"], *(f"⚠ {f}" for f in tg.get("flags") or []), tg.get("note")] if x)
        t.add_row(tg["what"], tg["target"], v, f"[{style}]{res_txt}[/{style}]", detail)
    con.print(t)
    if res.get("load_note"):
        con.print(f"[yellow]{res['load_note']}[/yellow]")
    con.print(f"{res.get('elapsed_s')} s")


def _one_suite(suite: str, fn: Callable[[Any], dict[str, Any]], output: str, save: str | None,
               cpu: int | None = None) -> None:
    """A command running one suite of its own (`bench transport`, `bench networks`):
    results under `suite`, or why it was skipped; the targets evaluated."""
    _require_root()
    from crossnet.bench.util import RunContext, Skip

    rc = RunContext(log=_logger(output), cpu=cpu)
    t0 = time.monotonic()
    res = _header(False)
    with _sigterm_as_interrupt():
        try:
            res[suite] = fn(rc)
        except Skip as exc:
            res[suite] = {"suite": suite, "status": "skipped", "reason": str(exc)}
    _emit(_finish(res, rc, t0), output, save, False, "docs")


def _settings(quick: bool, **over: Any) -> dict[str, Any]:
    s = dict(QUICK if quick else FULL)
    s.update({k: v for k, v in over.items() if v is not None})
    return s


def _run_dataplane(rc: Any, s: dict[str, Any], backends: list[str] | None, manual: bool) -> dict[str, Any]:
    from crossnet.bench import dataplane
    from crossnet.bench.util import Skip

    try:
        return dataplane.run(rc, backends=backends, mtus=s["mtus"], repeats=s["repeats"], duration=s["duration"],
                             ping_count=s["ping_count"], manual_layouts=manual, diagnostics=s["diagnostics"])
    except Skip as exc:
        return {"suite": "dataplane", "status": "skipped", "reason": str(exc), "rows": []}


def _run_datapath(rc: Any, s: dict[str, Any], backends: list[str] | None) -> dict[str, Any]:
    """`bench all`'s datapath rows (crossnet.bench.datapathbench): the backends of
    --backends that have `datapath: ebpf` (default host-gw, vxlan), the suite's MTUs."""
    from crossnet.bench import datapathbench
    from crossnet.bench.util import Skip

    names = [b for b in (backends or datapathbench.BACKENDS) if b in datapathbench.BACKENDS]
    try:
        if not names:
            raise Skip(f"none of --backends has datapath ebpf ({', '.join(datapathbench.BACKENDS)})")
        repeats = s["datapath_repeats"] if rc.quick else max(s["repeats"], s["datapath_repeats"])  # 5+ in full
        return datapathbench.run(rc, names, mtus=s["mtus"], repeats=repeats, duration=s["duration"],
                                 ping_count=s["ping_count"], skip=s["datapath_skip"])
    except Skip as exc:
        return {"suite": "datapath", "status": "skipped", "reason": str(exc), "rows": []}


def _run_control(rc: Any, s: dict[str, Any], profile: bool, only: str | None = None) -> dict[str, Any]:
    from crossnet.bench import control

    parts = tuple(_names(only)) if only else control.PARTS
    return control.run(rc, attach_count=s["attach_count"], cli_count=s["cli_count"], peer_sizes=s["peer_sizes"],
                       peer_backends=s["peer_backends"], reset_max=s["reset_max"], cni_count=s["cni_count"],
                       podman_runs=s["podman_runs"], agent=s["agent"], profile=profile,
                       peer_repeats=s["peer_repeats"], agent_hosts=s["agent_hosts"], agent_joins=s["agent_joins"],
                       mesh=s["mesh"], mesh_hosts=s["mesh_hosts"], mesh_joins=s["mesh_joins"], mesh_idle=s["mesh_idle"],
                       parts=parts)


OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="text: tables; json: one object with every figure.")
SAVE = click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON results to this file.")
REPORT = click.option("--report", "report", is_flag=True, help="Write docs/benchmarks.md + docs/img/*.png.")
DOCS = click.option("--docs", default="docs", show_default=True, help="Docs directory for --report.")
CPU = click.option("--cpu", metavar="N", callback=_cpu_option,
                   help="Pin every iperf3 client and server to CPU N (iperf3 -A): the whole path runs on one CPU, "
                        "so rounds agree to a few percent (docs/benchmarks.md). Default: unpinned.")
QUICK_OPT = click.option("--quick", is_flag=True,
                         help="Short runs for the CI smoke test (whole `bench all` < 3 min): MTU 1500 only, "
                              "1 s iperf3 runs, fewer containers, a 4-host agent lab.")


_BACKEND_LIST = CommaChoice(backend_names())


def _dataplane_options(f):
    opts = [
        click.option("--backends", type=_BACKEND_LIST, help="Comma-separated backends, each with its hand-built twin (default: every backend crossnet has but wireguard)."),
        click.option("--mtu", "mtu", help="Underlay MTUs, comma-separated (default 1500,9000; quick: 1500)."),
        click.option("--repeats", type=click.IntRange(1, 50), help="iperf3 runs per path (default 5; quick 2)."),
        click.option("--duration", type=click.FloatRange(1, 60), help="Seconds per iperf3 run (default 5; quick 1)."),
        click.option("--ping-count", type=click.IntRange(5, 2000), help="Pings per path (default 200; quick 20)."),
        click.option("--no-manual", is_flag=True, help="Skip the tutorial's hand-built baselines."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _control_options(f):
    opts = [
        click.option("--attach-count", type=click.IntRange(1, 250), help="In-process attaches on one /24 (default 250; quick 200)."),
        click.option("--cli-count", type=click.IntRange(0, 250), help="`crossnet attach` CLI runs (default 200; quick 10)."),
        click.option("--peers", "peers", help="Peer counts, comma-separated (default 10,100,1000)."),
        click.option("--peer-backends", type=_BACKEND_LIST, help="Backends for the peer test (default vxlan,host-gw; quick vxlan)."),
        click.option("--cni-count", type=click.IntRange(1, 500), help="CNI ADD/DEL per plugin (default 50; quick 10)."),
        click.option("--podman-runs", type=click.IntRange(0, 100), help="podman (and docker) runs per network (default 10; quick 3; 0 skips)."),
        click.option("--profile/--no-profile", default=None,
                     help="Profile (pyinstrument) what misses its target (default: on in full mode)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def register(main: click.Group) -> None:
    @main.group("bench")
    def bench() -> None:
        """Benchmarks: data plane throughput/latency vs the underlay and the tutorial's
        hand-built layouts; control plane latencies; peak memory. Every figure is a
        ratio to a baseline measured in the same run.

        \b
          crossnet bench all --quick             CI smoke (< 3 min)
          crossnet bench all --report            full run, writes docs/benchmarks.md
          crossnet bench dataplane --backends vxlan --mtu 9000
          crossnet bench control -o json
          crossnet bench report -i results.json  re-render docs/benchmarks.md
        """

    @bench.command("dataplane")
    @QUICK_OPT
    @_dataplane_options
    @CPU
    @OUTPUT
    @SAVE
    @REPORT
    @DOCS
    def dataplane_cmd(quick, backends, mtu, repeats, duration, ping_count, no_manual, cpu, output, save, report, docs):
        """Per backend a 4-host lab: iperf3 TCP and ping, container→container vs host→host.

        h1, h2 run crossnet with one container each (the path under test); h3 → h4,
        two hosts of the same lab on the same switch that crossnet never touches, is
        the underlay (the physical limit), measured interleaved with it. The underlay
        is a separate pair because crossnet rebuilds h1's and h2's own networking
        (e.g. the bridge backend enslaves the NIC), so h1 → h2 would not be the bare
        wire. Each backend's hand-built twin (the tutorial's layout, typed by hand on
        a second lab without crossnet, up at the same time) runs in the same rounds:
        crossnet, underlay, twin, the order reversed every other round; crossnet ÷ twin
        is the median over pairs of rounds. --backends X runs X and X's twin only."""
        _require_root()
        from crossnet.bench.util import RunContext

        s = _settings(quick, mtus=_ints(mtu, "--mtu"), repeats=repeats, duration=duration, ping_count=ping_count)
        rc = RunContext(quick=quick, log=_logger(output), cpu=cpu)
        t0 = time.monotonic()
        res = _header(quick)
        with _sigterm_as_interrupt():
            res["dataplane"] = _run_dataplane(rc, s, _names(backends), not no_manual)
        _emit(_finish(res, rc, t0), output, save, report, docs)

    @bench.command("control")
    @QUICK_OPT
    @_control_options
    @click.option("--only", type=CommaChoice(CONTROL_PARTS),
                  help="Measure only these parts (comma-separated; default all): attach and cni include their "
                       "`datapath: ebpf` rows, podman the docker run row, agent container DNS.")
    @OUTPUT
    @SAVE
    @REPORT
    @DOCS
    def control_cmd(quick, attach_count, cli_count, peers, peer_backends, cni_count, podman_runs, profile, only,
                    output, save, report, docs):
        """attach latency, N-peer apply, CNI ADD vs reference plugins, podman run, agent.

        \b
          crossnet bench control --only attach,cni   attach and CNI ADD/DEL, kernel and ebpf datapaths
        """
        _require_root()
        from crossnet.bench.util import RunContext

        s = _settings(quick, attach_count=attach_count, cli_count=cli_count, peer_sizes=_ints(peers, "--peers"),
                      peer_backends=tuple(_names(peer_backends)) if peer_backends else None, cni_count=cni_count,
                      podman_runs=podman_runs)
        rc = RunContext(quick=quick, log=_logger(output))
        t0 = time.monotonic()
        res = _header(quick)
        with _sigterm_as_interrupt():
            res["control"] = _run_control(rc, s, (not quick) if profile is None else profile, only)
        _emit(_finish(res, rc, t0), output, save, report, docs)

    @bench.command("transport")
    @click.option("--samples", type=click.IntRange(1, 20), default=3, show_default=True,
                  help="Fallback measurements (filter up, traffic flowing again, filter down).")
    @click.option("--repeats", type=click.IntRange(1, 50), default=6, show_default=True,
                  help="Interleaved rounds of iperf3 runs (one per path each; even: the target figure pairs a "
                       "round with the next, run in the other order).")
    @click.option("--duration", type=click.FloatRange(1, 60), default=3.0, show_default=True,
                  help="Seconds per iperf3 run.")
    @CPU
    @OUTPUT
    @SAVE
    def transport_cmd(samples, repeats, duration, cpu, output, save):
        """Backend auto (docs/transport.md): fallback time when UDP 4789 is filtered
        between two hosts, and per-peer throughput vs the picked backend alone."""
        from crossnet.bench import transportbench

        _one_suite("transport", lambda rc: transportbench.run(rc, samples=samples, repeats=repeats, duration=duration),
                   output, save, cpu)

    @bench.command("networks")
    @click.option("--rounds", type=click.IntRange(4, 200), default=24, show_default=True,
                  help="Rounds (a multiple of 4: blocks Q P P Q of which host pair has the second network); "
                       "each runs iperf3 once on both pairs.")
    @click.option("--duration", type=click.FloatRange(1, 60), default=3.0, show_default=True,
                  help="Seconds per iperf3 run.")
    @click.option("--datapath", type=click.Choice(["kernel", "ebpf"]), default="kernel", show_default=True,
                  help="The lab's datapath (docs/datapath.md); ebpf: target row networks-isolation-ebpf.")
    @CPU
    @OUTPUT
    @SAVE
    def networks_cmd(rounds, duration, datapath, cpu, output, save):
        """Isolated networks (docs/networks.md): vxlan throughput with a second, isolated
        network vs one network. Two host pairs take turns carrying the second network
        (re-applied between rounds, blocks Q P P Q), so the figure compares each pair with
        itself; about 10 s per round (24 rounds: ~4 min)."""
        if rounds % 4:
            raise click.BadParameter(f"{rounds} is not a multiple of 4", param_hint="--rounds")
        from crossnet.bench import netisobench

        _one_suite("networks", lambda rc: netisobench.run(rc, rounds=rounds, duration=duration, datapath=datapath),
                   output, save, cpu)

    @bench.command("datapath")
    @click.option("--backends", type=CommaChoice(["host-gw", "vxlan"]), default="host-gw,vxlan", show_default=True,
                  help="Backends measured with both datapaths.")
    @click.option("--mtu", "mtu", default="1500", show_default=True, help="Underlay MTUs, comma-separated (e.g. 1500,9000).")
    @click.option("--repeats", type=click.IntRange(1, 50), default=5, show_default=True,
                  help="Interleaved rounds (one iperf3 run per path each).")
    @click.option("--duration", type=click.FloatRange(1, 60), default=5.0, show_default=True,
                  help="Seconds per iperf3 run.")
    @click.option("--ping-count", type=click.IntRange(5, 2000), default=200, show_default=True, help="Pings per path.")
    @CPU
    @OUTPUT
    @SAVE
    def datapath_cmd(backends, mtu, repeats, duration, ping_count, cpu, output, save):
        """`datapath: ebpf` vs `datapath: kernel` (docs/datapath.md) for host-gw and vxlan:
        TCP throughput ÷ the underlay, ebpf ÷ kernel, RTT p50 overhead, the three paths
        interleaved in the same rounds (a kernel lab with the underlay, an ebpf lab)."""
        from crossnet.bench import datapathbench

        mtus = _ints(mtu, "--mtu")
        _one_suite("datapath", lambda rc: datapathbench.run(rc, _names(backends), mtus=mtus, repeats=repeats,
                                                            duration=duration, ping_count=ping_count), output, save,
                   cpu)

    @bench.command("wireguard")
    @click.option("--repeats", type=click.IntRange(1, 50), default=6, show_default=True,
                  help="Interleaved rounds (one iperf3 run per path each; even: the target figure pairs a round "
                       "with the next, run in the other order).")
    @click.option("--duration", type=click.FloatRange(1, 60), default=3.0, show_default=True,
                  help="Seconds per iperf3 run.")
    @CPU
    @OUTPUT
    @SAVE
    def wireguard_cmd(repeats, duration, cpu, output, save):
        """Backend wireguard vs the same WireGuard set up by hand (wireguard-go, wg, ip),
        crossnet unencrypted (vxlan) and the underlay, interleaved in the same rounds."""
        from crossnet.bench import wgbench

        _one_suite("wireguard", lambda rc: wgbench.run(rc, repeats=repeats, duration=duration), output, save, cpu)

    @bench.command("mesh")
    @QUICK_OPT
    @click.option("--hosts", type=click.IntRange(1, 20), help="Hosts of the mesh the new host joins (default 5; quick 2).")
    @click.option("--joins", type=click.IntRange(1, 50), help="Joins measured (default 10; quick 2).")
    @click.option("--idle", type=click.FloatRange(1, 600), help="Idle window for CPU %% (s; default 30; quick 5).")
    @OUTPUT
    @SAVE
    def mesh_cmd(quick, hosts, joins, idle, output, save):
        """`crossnet launch`: join latency (launch --token on a new host → every host
        reaches its container) and the idle RSS/CPU of etcd member + agent (also part
        of `bench control`)."""
        _require_root()
        from crossnet.bench.control import bench_mesh
        from crossnet.bench.util import RunContext

        s = _settings(quick, mesh_hosts=hosts, mesh_joins=joins, mesh_idle=idle)
        rc = RunContext(quick=quick, log=_logger(output))
        t0 = time.monotonic()
        res = _header(quick)
        with _sigterm_as_interrupt():
            res["control"] = {"suite": "control", "params": {k: s[k] for k in ("mesh_hosts", "mesh_joins", "mesh_idle")},
                              "mesh": bench_mesh(rc, s["mesh_hosts"], s["mesh_joins"], s["mesh_idle"])}
        _emit(_finish(res, rc, t0), output, save, False, "docs")

    @bench.command("all")
    @QUICK_OPT
    @_dataplane_options
    @_control_options
    @CPU
    @OUTPUT
    @SAVE
    @REPORT
    @DOCS
    def all_cmd(quick, backends, mtu, repeats, duration, ping_count, no_manual, attach_count, cli_count, peers,
                peer_backends, cni_count, podman_runs, profile, cpu, output, save, report, docs):
        """Both suites, one results object (and with --report, docs/benchmarks.md)."""
        _require_root()
        from crossnet.bench.util import RunContext

        s = _settings(quick, mtus=_ints(mtu, "--mtu"), repeats=repeats, duration=duration, ping_count=ping_count,
                      attach_count=attach_count, cli_count=cli_count, peer_sizes=_ints(peers, "--peers"),
                      peer_backends=tuple(_names(peer_backends)) if peer_backends else None, cni_count=cni_count,
                      podman_runs=podman_runs)
        rc = RunContext(quick=quick, log=_logger(output), cpu=cpu)
        t0 = time.monotonic()
        res = _header(quick)
        with _sigterm_as_interrupt():
            res["dataplane"] = _run_dataplane(rc, s, _names(backends), not no_manual)
            res["datapath"] = _run_datapath(rc, s, _names(backends))
            res["control"] = _run_control(rc, s, (not quick) if profile is None else profile)
        _emit(_finish(res, rc, t0), output, save, report, docs)

    @bench.command("report")
    @click.option("-i", "--input", "input_", default="docs/benchmarks.json", show_default=True,
                  type=click.Path(dir_okay=False), help="Results JSON (from --save, -o json or a previous report).")
    @click.option("--add", "adds", multiple=True, type=click.Path(dir_okay=False),
                  help="Results of `bench transport` / `bench wireguard` / `bench datapath` (--save FILE) to add to the input's "
                       "(their own command and time are kept with them).")
    @DOCS
    def report_cmd(input_, adds, docs):
        """Write docs/benchmarks.md and docs/img/bench-*.png from saved results."""
        from crossnet.bench.report import write_report
        from crossnet.bench.targets import evaluate

        try:
            with open(input_) as fh:
                res = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"--input: {input_} not found (run `crossnet bench all --save FILE` first)") from None
        except ValueError as exc:
            raise ConfigError(f"--input: {input_} is not JSON ({exc})") from None
        for add in adds:
            try:
                with open(add) as fh:
                    extra = json.load(fh)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--add: cannot read {add} ({exc})") from None
            for suite in ("transport", "wireguard", "networks", "datapath"):
                if isinstance(extra.get(suite), dict):
                    res[suite] = {**extra[suite], "command": extra.get("command"), "started": extra.get("started"),
                                  "git": extra.get("git"), "load": (extra.get("machine") or {}).get("loadavg")}
        res["targets"] = evaluate(res)
        written = write_report(res, docs)
        click.echo(f"wrote {', '.join(written.values())}")
