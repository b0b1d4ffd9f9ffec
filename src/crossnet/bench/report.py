"""docs/benchmarks.md and its plots (docs/img/bench-*.png) from one results object
(what `crossnet bench all -o json` prints / `--save` writes)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from crossnet.bench.targets import evaluate, verdict

IMG_DIR = "img"
PLOTS = {
    "throughput": "bench-throughput.png",
    "attach": "bench-attach.png",
    "peers": "bench-peers.png",
    "cni": "bench-cni.png",
}

# why a target is missed: what the measurements and profiles of this machine show
WHY = {
    "ovs-gre": (
        "Both layouts forward every packet through ovs-vswitchd's userspace datapath (no kernel datapath on "
        "these machines), which runs on one core; crossnet's layout and the tutorial's differ only in how "
        "the container attaches (see the OVS backend's docs)."
    ),
    "attach-p50": (
        "What is left per attach after the fixes found with this benchmark (no full link dump, no forked "
        "helper per namespace socket): see the profile below when present."
    ),
    "peers-1000": (
        "The apply itself (reconcile against one kernel snapshot, netlink bursts) is a fraction of the target; "
        "the rest of the CLI wall time is interpreter start-up and imports (pyroute2, pydantic, rich), "
        "parsing and validating the 1,001-host cluster file, and writing applied.json (see the profile below)."
    ),
    "cni-add": (
        "The reference plugins are static Go binaries; crossnet-cni is a small native client that hands the "
        "call to a warm Python helper (or the agent) over a unix socket."
    ),
    "podman-run": (
        "What a CNI network adds to `podman run --rm` is its ADD + DEL (see the CNI rows) and podman's own "
        "handling of each plugin's result."
    ),
    "agent-p95": (
        "Measured from the new agent's process start: interpreter start-up and imports, the etcd "
        "registration and lease, its own host's apply; the peers program it within milliseconds of its "
        "registration (see 'after ready')."
    ),
    "mesh-join-p95": (
        "A join is a new Python process (imports, key generation), the token handshake over TLS, a TLS "
        "etcd client, the voter lock and (for the 3rd host) `member add` + an etcd start, the supervisor's "
        "start-up, its agent's lease and first sync, then `crossnet attach` and the peers' programming."
    ),
    "mesh-rss": (
        "etcd ≈ 19.5 MB of its own binary's pages + its Go heap (rafthttp's buffers ≈ 11.8 MB); the launch "
        "process holds the agent, the join endpoint and the supervision in one interpreter (signing runs in a "
        "helper process: no `cryptography` in it), 10.6 MB of it pydantic and the network model "
        "(docs/mesh.md, Resources)."
    ),
    "mesh-idle-cpu": (
        "Idle etcd 3.4 alone takes ~0.3 %; the rest is raft with two peers over TLS (heartbeat 500 ms; etcd's "
        "peer prober makes a new TLS connection to each peer every 4 s, ≈ 26 % of a follower's CPU, no flag "
        "changes it), the hosts' lease keep-alives (client hosts spread over the voters). Watches stay open "
        "(TCP keepalive). The launch process sleeps until it has work (no polling loops): ~0.15 % "
        "(docs/mesh.md, Resources)."
    ),
}
# `<backend>-twin-<mtu>` (issue 18): what still differs from the hand-built twin, docs/benchmarks-parity.md
TWIN = ("Everything on the two packet paths was diffed (docs/benchmarks-parity.md); crossnet runs with bridge "
        "netfilter off on its own bridges, the twin with the namespace default (on). ")
WHY.update({
    "host-gw-twin": TWIN + "The rest of host-gw's path is the twin's, device for device: a gap is run-to-run noise "
                           "unless it stays outside the spread of repeated runs.",
    "bridge-twin": TWIN + "The rest of the bridge backend's path is the twin's (crossnet also turns IPv4 forwarding "
                          "on, which bridged traffic does not use).",
    "vxlan-twin": TWIN + "One step remains: crossnet's vxlan is flannel-style (the vxlan device outside the bridge, "
                         "peer subnets routed via it), so the receiving host routes every packet once more where the "
                         "twin only bridges it.",
})

# what a container→container packet crosses compared with the underlay (h3 → h4: a veth pair on a switch)
DATA_PATH = {
    "host-gw": ("a container veth, a Linux bridge and a routing step on each host (the same as the routes "
                "typed by hand), all in software on the same 2 vCPUs as iperf3; kernel profile: docs/profile.md"),
    "bridge": ("a container veth and the Linux bridge that holds the NIC on each host (no routing, no "
               "encapsulation), all in software on the same 2 vCPUs as iperf3; kernel profile: docs/profile.md"),
    "vxlan": ("a container veth, a Linux bridge, a routing step and the vxlan device on each host, and 50 bytes "
              "of encapsulation per packet (3.4% of a 1500-byte frame, 0.6% of 9000) added and removed in "
              "software, on the same 2 vCPUs as iperf3. A kernel profile of both streams (docs/profile.md, "
              "scripts/profile-dataplane) shows both CPU-bound, no software segmentation, and the throughput "
              "ratio tracking the share of CPU left for copying payload; jumbo frames do not help on this veth "
              "underlay because veths pass 64 KB GSO packets whatever the MTU, so the per-packet work is the same "
              "at 1500 and 9000"),
}
# how crossnet's layout differs from its hand-built baseline, where it does
LAYOUT_DIFFERENCE = {
    "vxlan": ("The two layouts differ in one step: crossnet programs vxlan like flannel (the vxlan device outside "
              "the bridge, each peer subnet routed via it with a static neighbour and FDB entry), so the receiving "
              "host routes every packet once more; the hand-built layout enslaves the vxlan device to the "
              "containers' bridge and the receiving host only bridges."),
}
# ≈: crossnet within 3% of the hand-built layout of the same design (each relative to its own underlay)
SAME_AS_HAND_BUILT = 0.97
# the hand-built baseline of each crossnet backend (the row's `compares_with`); shown when a run lacks it
BASELINE_OF = {"host-gw": "manual-bridge-routes", "bridge": "manual-bridge-nic", "vxlan": "manual-vxlan",
               "ovs-gre": "manual-ovs-gre"}


def _dp_row(results: dict[str, Any], name: str, mtu: int) -> dict[str, Any] | None:
    for r in (results.get("dataplane") or {}).get("rows", []):
        if r["name"] == name and r["mtu"] == mtu:
            return r
    return None


def dataplane_why(results: dict[str, Any], name: str, mtu: int, goal: float) -> str:
    """Why crossnet's `name` is below `goal` × its underlay, from this run's rows: the
    hand-built layout of the same design (same lab shape, same run) tells the data
    path's own cost from what crossnet adds; the min–max spread tells noise from a gap."""
    r = _dp_row(results, name, mtu)
    if not r or r.get("status") != "ok" or r.get("ratio") is None:
        return ""
    n = ((r.get("overlay") or {}).get("gbps") or {}).get("n")
    out = [f"The packets cross {DATA_PATH[name]}." if name in DATA_PATH else ""]
    base_name = BASELINE_OF.get(name)
    base = _dp_row(results, base_name, mtu) if base_name else None
    if base is None or base.get("status") != "ok" or base.get("ratio") is None:
        if base is None:
            missing = (f"this run has no hand-built baseline of the {name} layout ({base_name} is not among its "
                       "rows: the run predates it or ran without the manual layouts)" if base_name else
                       f"there is no hand-built baseline of the {name} layout")
        else:
            missing = f"its hand-built baseline {base_name} was {base['status']} in this run ({base.get('reason')})"
        out.append(f"Unlike the other backends, {missing}, so this run cannot tell how much of the gap is the data "
                   "path itself and how much crossnet adds.")
    else:
        vm = r.get("vs_manual") or {}
        raw = vm.get("ratio")
        if vm.get("median_round_ratio") is not None:  # measured in the same rounds (dataplane.measure_with_twin)
            norm = vm["median_round_ratio"]
            each = vm.get("pair_ratios") or vm.get("round_ratios") or []
            lo, hi = (min(each), max(each)) if each else (None, None)
            where, how = "in the same rounds, on the same underlay", "the pairs of rounds put"
            vs = f"{norm:.3f} × the hand-built layout, median over pairs of interleaved rounds"
        else:  # an older run: two labs measured one after the other
            norm = r["ratio"] / base["ratio"]
            lo = r["ratio_min"] / base["ratio_max"] if base.get("ratio_max") else None
            hi = r["ratio_max"] / base["ratio_min"] if base.get("ratio_min") else None
            where, how = "same lab shape, same run", "the worst/best pairing of the repeats puts"
            vs = f"{norm:.3f} × the hand-built layout relative to each lab's own underlay"
        vs += f", {raw} × in Gbit/s" if raw is not None else ""
        spread = f"{lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else "not known"
        out.append(f"The hand-built equivalent ({base_name}, {where}) reached {base['ratio']} × "
                   f"its underlay (range {base.get('ratio_min')}–{base.get('ratio_max')})"
                   + (", below the target as well." if base["ratio"] < goal else ", meeting the target."))
        if norm >= SAME_AS_HAND_BUILT:
            out.append(f"crossnet ≈ the hand-built layout (within {(1 - SAME_AS_HAND_BUILT) * 100:.0f}%: {vs}): the gap to the underlay is the data path itself, "
                       "not something crossnet adds.")
        else:
            covered = lo is not None and hi is not None and lo <= 1.0 <= hi
            out.append(f"crossnet is {(1 - norm) * 100:.0f}% below the hand-built layout ({vs}); {how} "
                       f"that comparison at {spread}, which "
                       + ("covers 1.0: this run cannot tell that difference from noise." if covered else
                          "stays below 1.0: crossnet's layout is slower than the hand-built one in this run, "
                          "beyond the spread of its repeats.")
                       + (" " + LAYOUT_DIFFERENCE[name] if name in LAYOUT_DIFFERENCE else ""))
    if r.get("ratio_max") is not None:
        if r["ratio_max"] >= goal:
            out.append(f"The best pairing of crossnet's repeats ({r['ratio_max']}) reaches {goal}: the target lies "
                       f"within this run's spread ({r['ratio_min']}–{r['ratio_max']} over {n} repeats).")
        else:
            out.append(f"Even the best pairing of crossnet's repeats ({r['ratio_max']}) stays below {goal}: the miss is "
                       "not run-to-run noise.")
    return " ".join(x for x in out if x)


def datapath_why(results: dict[str, Any], tid: str) -> str:
    """What this run's datapath row says about a miss (crossnet.bench.datapathbench):
    how many rounds at what load, and whether the programs ran."""
    backend = next((b for b in ("host-gw", "vxlan") if tid.startswith(f"datapath-{b}-")), None)
    mtu = tid.rsplit("-", 1)[1]
    r = next((x for x in (results.get("datapath") or {}).get("rows", [])
              if x.get("backend") == backend and str(x.get("mtu")) == mtu), None)
    if not r or r.get("status") != "ok":
        return ""
    n = (((r.get("paths") or {}).get("kernel") or {}).get("gbps") or {}).get("n")
    load = (r.get("load_before") or [None])[0]
    out = [f"{n} interleaved round(s), 1-min load average {load} before the row"]
    if n is not None and n < 2:
        out.append("one round cannot cancel the order effect (pairs of rounds need 2 or more): not a result")
    elif load is not None and load >= 1.0:
        out.append("measured on a busy machine: re-run on a quiet one before drawing conclusions")
    red = {h: ((d or {}).get("counters") or {}).get("redirect")
           for h, d in ((((r.get("paths") or {}).get("ebpf") or {}).get("datapath")) or {}).items()}
    if red:
        out.append("the programs redirected " + ", ".join(f"{h} {v}" for h, v in red.items()) + " packets")
    return "; ".join(out) + "."


def why(tid: str, results: dict[str, Any], goal: float | None = None) -> str:
    """The explanation of a missed target, with this run's own figures where possible."""
    cp = results.get("control") or {}
    key = tid if tid in WHY else tid.rsplit("-", 1)[0]
    text = WHY.get(key, "")
    if key in DATA_PATH and goal is not None:
        text = dataplane_why(results, key, int(tid.rsplit("-", 1)[1]), goal)
    if tid.startswith("datapath-"):
        text = datapath_why(results, tid)
    if tid.startswith("ovs-gre-"):
        mtu = int(tid.rsplit("-", 1)[1])
        rows = (results.get("dataplane") or {}).get("rows", [])
        via = next((r for r in rows if r["name"] == "manual-ovs-gre-via" and r["mtu"] == mtu
                    and r["status"] == "ok" and r.get("vs_manual")), None)
        if via:
            text += (f" Diagnostic in the same run: the tutorial's layout with crossnet's route style "
                     f"(peer subnet via the peer's gateway, so the receiving host routes each packet once more "
                     f"instead of only bridging it) moved {via['vs_manual']['ratio']} × the tutorial's "
                     "`dev br0` routes (manual-ovs-gre-via row). crossnet routes via the peer's gateway so "
                     "that a host keeps one neighbour entry per peer host instead of one per remote container "
                     "and ARP is not flooded through every tunnel; that is the trade-off behind the gap.")
    if tid == "attach-p50":
        ip = ((cp.get("attach") or {}).get("inprocess") or {}).get("attach_ms") or {}
        s = ip.get("samples") or []
        if len(s) >= 20:
            k = max(1, len(s) // 10)
            first, last = sorted(s[:k])[k // 2], sorted(s[-k:])[k // 2]
            text = (f"The first {k} attaches take {first:.0f} ms (median), the last {k} {last:.0f} ms: each "
                    "attach rewrites the whole IPAM file once with fsync, and its JSON grows with every "
                    "container; the rest is 5 netlink round trips (crossnet.netlink.raw) and a netlink socket opened "
                    "inside the container's namespace. " + text)
    if tid == "podman-run":
        cn, po = cp.get("cni") or {}, cp.get("podman") or {}
        x, r = cn.get("crossnet-cni") or {}, cn.get("bridge+host-local") or {}
        runs = po.get("run_s") or {}
        xr, rr = runs.get("crossnet-cni") or {}, runs.get("bridge+host-local") or {}
        with contextlib.suppress(KeyError, TypeError):
            x_ms = x["add_ms"]["median"] + x["del_ms"]["median"]
            r_ms = r["add_ms"]["median"] + r["del_ms"]["median"]
            text += (f" In this run's CNI rows crossnet-cni's ADD + DEL take {x_ms:.1f} ms against {r_ms:.1f} ms for "
                     f"the reference, so the plugin itself is not the difference; the {po.get('runs')} podman runs "
                     f"per network spread over {xr['min']}–{xr['max']} s (crossnet-cni) and {rr['min']}–{rr['max']} s "
                     "(reference), wider than the gap between their medians.")
    if tid == "cni-add":
        cn = cp.get("cni") or {}
        x = (cn.get("crossnet-cni") or {}).get("add_ms", {}).get("median")
        py = (cn.get("python_start_ms") or {}).get("median")
        at = (((cp.get("attach") or {}).get("inprocess") or {}).get("attach_ms") or {}).get("p50")
        first = (cn.get("crossnet-cni") or {}).get("first_add_ms")
        helper = (cn.get("helper_add_ms") or {}).get("median")
        if x:
            text = (f"A crossnet-cni ADD (median {x} ms; the first, cold one {first} ms, starts the warm helper) "
                    f"is the native client's exec and socket round trip plus the helper's work: the attach "
                    f"itself is {at} ms (in-process p50 above)"
                    + (f", the helper's whole ADD {helper} ms (its log)" if helper else "")
                    + "; the rest is the helper's Python around it (JSON, config checks, the IPAM file write "
                    "with fsync). " + text
                    + (f" For scale: a bare `python3 -S -c pass` costs {py:.0f} ms here." if py else ""))
    return text


# a one-off profile of one `crossnet attach` (python -X importtime + cProfile, in a bench lab host, 2026-11-28,
# before commit e802ba4); shown for runs that did not measure the CLI breakdown themselves
CLI_ATTACH_PROFILE = (
    "A one-off profile of one `crossnet attach -o json` on this machine (python -X importtime and cProfile, "
    "2026-11-28, after this run): about 420 ms under cProfile, of which site took 43 ms (33 ms of it certifi, "
    "imported by a .pth file of this machine's site-packages, not by crossnet), importing crossnet.containers "
    "128 ms (76 ms of it crossnet.netlink.iproute → pyroute2.iproute, which pulls in asyncio and pyroute2's netlink "
    "message classes), rich.console + rich.table 32 ms that attach never used (now imported only by the text "
    "output of `status`/`check`, commit e802ba4), click 20 ms, and about 40 ms compiling crossnet modules whose "
    "cached bytecode was stale (PYTHONDONTWRITEBYTECODE=1 in this environment, while the tree was being edited); "
    "the attach itself is the in-process figure."
)


def flag_why(tid: str, results: dict[str, Any]) -> str:
    """Where the flagged measure's time goes, from this run's figures where it has them."""
    cp = results.get("control") or {}
    if tid == "attach-p50":
        at = cp.get("attach") or {}
        ip = ((at.get("inprocess") or {}).get("attach_ms") or {}).get("p50")
        cli = (at.get("cli") or {}).get("attach_ms") or {}
        b = (at.get("cli") or {}).get("breakdown") or {}
        text = (f"The target is measured on `containers.attach` inside one process (p50 {ip} ms): what the "
                "agent, the CNI helper and the in-process API pay per container. A user or script running "
                f"`crossnet attach` starts a new Python process per container: p50 {_f(cli.get('p50'))} ms "
                f"(p99 {_f(cli.get('p99'))} ms) in this run, over {cli.get('n')} runs. The bench runs those "
                "commands from inside the simulated host's namespace, so no `ip netns exec` is part of it.")
        keys = ("interpreter_ms", "site_ms", "cli_import_ms", "attach_imports_ms", "attach_ms")
        if all(isinstance(b.get(k), (int, float)) for k in keys):
            steps = [b["interpreter_ms"], b["site_ms"] - b["interpreter_ms"], b["cli_import_ms"] - b["site_ms"],
                     b["attach_imports_ms"] - b["cli_import_ms"], b["attach_ms"] - b["attach_imports_ms"]]
            imp = b.get("import_self_ms") or {}
            top = ", ".join(f"{k} {v:.0f} ms" for k, v in list(imp.items())[:6] if k != "(other)")
            rest = (f"{steps[4]:.0f} ms" if steps[4] >= 1 else
                    f"≈ 0 ({steps[4]:.0f} ms: within the noise of these medians)")
            text += (f" Where it goes: each of the first {b.get('runs')} CLI attaches (median {b['attach_ms']:.0f} ms) "
                     "was preceded by one process per prefix of its work, in the same namespace (medians): "
                     f"starting the bare interpreter (`python -S -c pass`) {steps[0]:.0f} ms; site and the .pth files "
                     f"of site-packages +{steps[1]:.0f} ms; crossnet's CLI entry (click) +{steps[2]:.0f} ms; the "
                     f"modules attach imports ({', '.join(b.get('modules') or [])}) +{steps[3]:.0f} ms; the rest "
                     f"(click dispatch, loading the host's state, the attach itself — in-process p50 {ip} ms — and "
                     f"the JSON output) {rest}. Import self-time by top-level package (python -X importtime, site "
                     f"included): {top}. So the CLI figure is a Python process start and its imports, paid once per "
                     "container; the agent and the CNI helper pay them once per process.")
            return text
        cn = cp.get("cni") or {}
        py = (cn.get("python_start_ms") or {}).get("median")
        ns = (cn.get("netns_exec_ms") or {}).get("median")
        if py is not None and ns is not None:
            text += (f" This run did not break the CLI time down (the breakdown was added later); its CNI section "
                     f"measured a bare `python3 -S -c pass` at {py:.0f} ms, {ns:.0f} ms of it `ip netns exec`.")
        return text + " " + CLI_ATTACH_PROFILE
    if tid == "peers-1000":
        pe = cp.get("peers") or {}
        rows = [r for r in pe.get("rows", []) if r.get("peers") == 1000 and r.get("status") == "ok"]
        parts = []
        for r in rows:
            parts.append(f"{r['backend']}: apply {r['apply_wall_s']:.3g} s (inside apply() {r.get('apply_internal_s')} s), "
                         f"no-op re-apply {r['noop_wall_s']:.3g} s (inside apply() {r.get('noop_internal_s')} s)")
        return ("The target is measured on the first apply of the 1,000-peer file (median over rounds). The no-op "
                "re-apply of the same file changes nothing in the kernel, yet does everything else again: "
                "interpreter start-up and imports, parsing and validating the 1,001-host file, a kernel snapshot "
                "and the diff against it — and its snapshot now holds the entries the first apply created, while the "
                "first apply started from an empty table. In this run: " + "; ".join(parts) + ".")
    return ""


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def make_plots(results: dict[str, Any], img_dir: Path) -> dict[str, str]:
    """PNG plots (matplotlib, Agg). Returns {plot: file name} of those written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    img_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    dp = results.get("dataplane") or {}
    cp = results.get("control") or {}

    rows = [r for r in dp.get("rows", []) if r.get("status") == "ok" and r.get("ratio") is not None]
    if rows:
        names = []
        for r in rows:
            if r["name"] not in names:
                names.append(r["name"])
        mtus = sorted({r["mtu"] for r in rows})
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / max(1, len(mtus))
        for i, mtu in enumerate(mtus):
            xs, ys, lo, hi = [], [], [], []
            for j, n in enumerate(names):
                r = next((x for x in rows if x["name"] == n and x["mtu"] == mtu), None)
                if r is None:
                    continue
                xs.append(j + (i - (len(mtus) - 1) / 2) * width)
                ys.append(r["ratio"])
                lo.append(max(0.0, r["ratio"] - (r.get("ratio_min") or r["ratio"])))
                hi.append(max(0.0, (r.get("ratio_max") or r["ratio"]) - r["ratio"]))
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"underlay MTU {mtu}")
            for x, y, h in zip(xs, ys, hi):
                ax.text(x, y + h + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
        for y, label in ((0.97, "0.97"), (0.85, "0.85")):
            ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
            ax.text(len(names) - 0.5, y, f" {label}", va="center", fontsize=8, color="grey")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylabel("TCP throughput / underlay (same lab)")
        ax.set_title("Container→container throughput relative to host→host")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img_dir / PLOTS["throughput"], dpi=110)
        plt.close(fig)
        written["throughput"] = PLOTS["throughput"]

    at = cp.get("attach") or {}
    inproc = ((at.get("inprocess") or {}).get("attach_ms") or {}).get("samples") or []
    cli = ((at.get("cli") or {}).get("attach_ms") or {}).get("samples") or []
    if inproc:
        fig, axes = plt.subplots(1, 2 if cli else 1, figsize=(10 if cli else 6, 4), squeeze=False)
        ax = axes[0][0]
        ax.hist(inproc, bins=40, color="tab:blue")
        ax.axvline(30, color="red", linestyle="--", linewidth=1, label="target p50 ≤ 30 ms")
        ax.set_title(f"in-process attach, {len(inproc)} containers")
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        if cli:
            ax = axes[0][1]
            ax.hist(cli, bins=30, color="tab:orange")
            ax.set_title(f"`crossnet attach` CLI, {len(cli)} containers")
            ax.set_xlabel("ms")
        fig.tight_layout()
        fig.savefig(img_dir / PLOTS["attach"], dpi=110)
        plt.close(fig)
        written["attach"] = PLOTS["attach"]

    prow = [r for r in (cp.get("peers") or {}).get("rows", []) if r.get("status") == "ok"]
    if prow:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for backend in sorted({r["backend"] for r in prow}):
            rs = sorted((r for r in prow if r["backend"] == backend), key=lambda r: r["peers"])
            n = [r["peers"] for r in rs]
            ax.plot(n, [r["apply_wall_s"] for r in rs], marker="o", label=f"{backend}: apply (CLI)")
            ax.plot(n, [r.get("apply_internal_s") or 0 for r in rs], marker="x", linestyle=":",
                    label=f"{backend}: inside apply()")
            ax.plot(n, [r["noop_wall_s"] for r in rs], marker="s", linestyle="--", label=f"{backend}: no-op re-apply")
        ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="target: 1,000 peers ≤ 1 s")
        ax.set_xscale("log")
        ax.set_xlabel("peers")
        ax.set_ylabel("seconds")
        ax.set_title("Time to program N peers")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img_dir / PLOTS["peers"], dpi=110)
        plt.close(fig)
        written["peers"] = PLOTS["peers"]

    cn = cp.get("cni") or {}
    po = cp.get("podman") or {}
    if cn.get("status") == "ok" or po.get("status") == "ok":
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        if cn.get("status") == "ok":
            labels = [k for k in ("crossnet-cni", "bridge+host-local") if k in cn]
            ax = axes[0]
            xs = range(len(labels))
            ax.bar([x - 0.2 for x in xs], [cn[k]["add_ms"]["median"] for k in labels], 0.4, label="ADD")
            ax.bar([x + 0.2 for x in xs], [cn[k]["del_ms"]["median"] for k in labels], 0.4, label="DEL")
            ax.set_xticks(list(xs))
            ax.set_xticklabels(labels)
            ax.set_ylabel("ms (median)")
            ax.set_title("CNI plugin latency")
            ax.legend(fontsize=8)
        if po.get("status") == "ok":
            ax = axes[1]
            labels = list(po["run_s"])
            ax.bar(labels, [po["run_s"][k]["median"] for k in labels], color="tab:green")
            ax.set_ylabel("s (median)")
            ax.set_title("podman run --rm … true")
        fig.tight_layout()
        fig.savefig(img_dir / PLOTS["cni"], dpi=110)
        plt.close(fig)
        written["cni"] = PLOTS["cni"]
    return written


# ---------------------------------------------------------------- markdown


def _dataplane_md(dp: dict[str, Any]) -> list[str]:
    out = ["## Data plane", ""]
    p = dp.get("params", {})
    out.append(
        f"Per backend a lab of 4 simulated hosts on one switch (l2 underlay: veths on a bridge). Hosts h1 and "
        f"h2 run crossnet with one container each (the path under test); h3 and h4 are never configured, and "
        f"h3 → h4 is the underlay (the physical limit of that lab). The underlay is a separate pair rather than "
        f"h1 → h2 because crossnet rebuilds h1's and h2's own networking (the bridge backend enslaves the NIC, "
        f"the OVS backends move the host address onto an OVS bridge), so host→host between them would cross "
        f"crossnet's data path instead of the bare wire; h3, h4 have the same veths and MTU, untouched, and are "
        f"measured in the same minutes. iperf3 TCP, {p.get('repeats')} × {p.get('duration_s')} s "
        "per path, container→container and underlay runs interleaved (order alternating), so both see the "
        f"same load; median (min–max). Ping: {p.get('ping_count')} echoes 10 ms apart. `manual-*` rows are "
        "the tutorial's layouts built by hand, step by step (commands below). Ratio = median "
        "container→container / median underlay of the same lab.")
    if p.get("twins_interleaved"):
        out.append("")
        out.append(
            "Each backend and its hand-built twin (the `manual-*` row right above it) are measured together: "
            "the twin is built on h1, h2 of a second lab without crossnet, up at the same time on a switch of "
            "its own, and every round runs one iperf3 run on crossnet's path, the underlay and the twin's "
            "(h3 → h4 of crossnet's lab, the twin row shows the same underlay), the order reversed every other "
            "round, so crossnet and the twin take each end of a round once per pair of rounds. \"× twin\" is "
            "the median over pairs of rounds (which cancels the order effect) of crossnet ÷ twin per round, "
            "with the range of those pairs: both runs of a round "
            "are seconds apart, so drift between two labs measured minutes apart does not enter it. Diagnostic "
            "layouts run in a lab of their own (× the layout they vary, each ÷ its own underlay).")
    else:
        out.append("")
        out.append("This run measured each hand-built layout in a lab of its own, after or before its crossnet "
                   "backend (each ÷ its own lab's underlay); later runs measure a backend and its twin in the "
                   "same interleaved rounds.")
    out.append("")
    for mtu in p.get("mtus", []):
        rows = [r for r in dp.get("rows", []) if r["mtu"] == mtu]
        table = []
        for r in rows:
            if r["status"] != "ok":
                table.append([f"`{r['name']}`", r["kind"], "–", f"{r['status']}: {r.get('reason', '')}", "", "", "", "",
                              ""])
                continue
            u, o = r["underlay"], r["overlay"]
            g = o["gbps"]
            ug = u["gbps"]
            vs = r.get("vs_manual")
            vs_txt = ""
            if vs and vs.get("median_round_ratio") is not None:
                each = vs.get("pair_ratios") or vs.get("round_ratios") or []
                spread = f" (pairs {min(each)}–{max(each)})" if each else ""
                vs_txt = f"{vs['median_round_ratio']} × twin {vs['baseline']}{spread}"
            elif vs:
                vs_txt = f"{vs['ratio']} × {vs['baseline']}"
            table.append([
                f"`{r['name']}`", r["kind"], str(r.get("container_mtu") or "–"),
                f"{g['median']:.2f} ({g['min']:.2f}–{g['max']:.2f})",
                f"{ug['median']:.2f} ({ug['min']:.2f}–{ug['max']:.2f})",
                f"**{r['ratio']}**" + (f" {vs_txt}" if vs_txt else ""),
                f"{o['rtt']['p50_ms']:.3f} / {o['rtt']['p99_ms']:.3f}",
                f"{u['rtt']['p50_ms']:.3f} / {u['rtt']['p99_ms']:.3f}",
                ", ".join(str(x) for x in o.get("retransmits") or []) or "–",
            ])
        out.append(f"### Underlay MTU {mtu}")
        out.append("")
        out.append(_md_table(["path", "kind", "container MTU", "container→container Gbit/s",
                              "underlay Gbit/s", "ratio", "RTT p50/p99 ms", "underlay RTT p50/p99 ms",
                              "TCP retransmits"], table))
        out.append("")
    steps = [r for r in dp.get("rows", []) if r.get("steps")]
    seen = set()
    for r in steps:
        if r["name"] in seen:
            continue
        seen.add(r["name"])
        out += _steps_details(f"How <code>{r['name']}</code> was built (MTU {r['mtu']}): "
                              f"{r.get('description', '')}", r["steps"])
    return out


def _steps_details(summary: str, steps: list[str]) -> list[str]:
    """A folded block of the commands a hand-built layout was made with."""
    return [f"<details><summary>{summary}</summary>", "", "```", *steps, "```", "</details>", ""]


def _control_md(cp: dict[str, Any]) -> list[str]:
    out = ["## Control plane", ""]
    at = cp.get("attach") or {}
    out.append("### Attach")
    out.append("")
    if at.get("status") == "ok":
        rows = []
        for label, key in (("`containers.attach` (in-process)", "inprocess"), ("`crossnet attach` (CLI)", "cli")):
            rec = at.get(key)
            if not rec:
                continue
            a, d = rec["attach_ms"], rec["detach_ms"]
            rows.append([label, str(a.get("n")), a.get("p50"), a.get("p99"), a.get("max"), d.get("p50"), d.get("p99")])
        out.append(f"One simulated host ({at.get('backend')}), containers attached one after another (they "
                   "accumulate: the last attach sees all the others), then detached.")
        out.append("")
        out.append(_md_table(["path", "containers", "attach p50 ms", "p99 ms", "max ms", "detach p50 ms",
                              "detach p99 ms"], rows))
        if (at.get("inprocess") or {}).get("distinct_addresses") is not None:
            out.append("")
            out.append(f"Distinct addresses handed out: {at['inprocess']['distinct_addresses']}.")
        if at.get("profile"):
            out += ["", "<details><summary>pyinstrument profile of the in-process attach loop</summary>\n",
                    "```", at["profile"], "```", "</details>"]
    else:
        out.append(f"{at.get('status')}: {at.get('reason')}")
    out.append("")
    pe = cp.get("peers") or {}
    out.append("### Programming N peers")
    out.append("")
    if pe.get("rows"):
        out.append("`crossnet apply` on one simulated host of a cluster file listing it plus N simulated peers "
                   "(underlay addresses on its LAN). *CLI* = wall time of the command; *inside apply()* = "
                   "what apply itself reports (reconcile + state write); then the same apply again (nothing "
                   f"to do) and `crossnet reset`; median of {pe.get('repeats', 1)} round(s).")
        out.append("")
        rows = []
        for r in pe["rows"]:
            if r.get("status") != "ok":
                rows.append([r["backend"], str(r["peers"]), f"{r.get('status')}: {r.get('reason')}", "", "", "", "", ""])
                continue
            wall = f"{r['apply_wall_s']:.3g}"
            if r.get("apply_wall_min_s") is not None and pe.get("repeats", 1) > 1:
                wall += f" ({r['apply_wall_min_s']:.3g}–{r['apply_wall_max_s']:.3g})"
            rows.append([r["backend"], str(r["peers"]), str(r.get("changes")), wall,
                         r.get("apply_internal_s"), r["noop_wall_s"], r.get("noop_internal_s"),
                         r.get("reset_wall_s") if r.get("reset_wall_s") is not None else "not measured"])
        out.append(_md_table(["backend", "peers", "changes", "apply CLI s", "inside apply() s",
                              "no-op re-apply CLI s", "no-op inside apply() s", "reset CLI s"], rows))
        for r in pe["rows"]:
            if r.get("profile"):
                out += ["", f"<details><summary>pyinstrument profile: apply of {r['peers']} peers ({r['backend']})"
                        "</summary>\n", "```", r["profile"], "```", "</details>"]
    else:
        out.append(f"{pe.get('status')}: {pe.get('reason')}")
    out.append("")
    cn = cp.get("cni") or {}
    out.append("### CNI ADD / DEL")
    out.append("")
    if cn.get("status") == "ok":
        out.append("Both plugins executed the way a runtime does it (environment `CNI_*`, network config on "
                   "stdin) from inside the simulated host, alternating crossnet-cni and the reference plugins "
                   "call by call.")
        out.append("")
        rows = []
        for k in ("crossnet-cni", "bridge+host-local"):
            rec = cn.get(k)
            if rec:
                rows.append([k, str(rec["add_ms"].get("n")), rec["add_ms"].get("p50"), rec["add_ms"].get("p99"),
                             rec["del_ms"].get("p50"), rec["del_ms"].get("p99"), rec.get("peak_rss_mb")])
        out.append(_md_table(["plugin", "calls", "ADD p50 ms", "ADD p99 ms", "DEL p50 ms", "DEL p99 ms",
                              "peak RSS MB"], rows))
        out.append("")
        out.append(f"ADD ratio crossnet / reference: **{cn.get('add_ratio')}**; DEL ratio {cn.get('del_ratio')}.")
        if cn.get("client"):
            served = ", ".join(f"{k}: {v}" for k, v in sorted((cn.get("served_via") or {}).items()))
            ha, hd = cn.get("helper_add_ms") or {}, cn.get("helper_del_ms") or {}
            out.append("")
            out.append(f"crossnet-cni client: {cn['client']} (`crossnet cni install`); calls served "
                       f"({served or '?'}; `server` = the warm helper, `process` = the Python fallback); the "
                       f"helper's own time per call (plugin log): ADD p50 {ha.get('p50', '–')} ms, DEL p50 "
                       f"{hd.get('p50', '–')} ms.")
        if cn.get("profile"):
            out += ["", "<details><summary>pyinstrument profile of one crossnet-cni ADD</summary>\n",
                    "```", cn["profile"], "```", "</details>"]
    else:
        out.append(f"{cn.get('status')}: {cn.get('reason')}")
    out.append("")
    po = cp.get("podman") or {}
    out.append("### podman run")
    out.append("")
    if po.get("status") == "ok":
        out.append(f"`podman run --rm IMAGE true` on a simulated host, {po.get('runs')} runs per network, "
                   "interleaved (both conflists without portmap).")
        out.append("")
        out.append(run_table(po))
    else:
        out.append(f"{po.get('status')}: {po.get('reason')}")
    out.append("")
    if "docker" in cp:
        out += docker_run_section(cp["docker"])
    ag = cp.get("agent") or {}
    out.append("### etcd agent")
    out.append("")
    if ag.get("status") == "ok":
        rows = [[k, str(v.get("n")), v.get("p50"), v.get("p90"), v.get("max")]
                for k, v in ag.items() if isinstance(v, dict) and "p50" in v]
        out.append(_md_table(["measure", "n", "p50", "p90", "max"], rows))
        if ag.get("agent_rss_mb") is not None:
            out.append("")
            out.append(f"Agent peak RSS: {ag['agent_rss_mb']} MB.")
    else:
        out.append(f"{ag.get('status')}: {ag.get('reason')}")
    out.append("")
    me = cp.get("mesh") or {}
    if me:
        out.append("### crossnet launch (mesh)")
        out.append("")
        if me.get("status") == "ok":
            j = me["join_s"]
            out.append(f"{j['n']} joins into a {me['hosts']}-host mesh (`crossnet stop --release`, then `crossnet "
                       f"launch --token` + `crossnet attach` until every existing host's container pings the new "
                       f"one): p50 {j['p50']} s, p95 {j['p95']} s, max {j['max']} s.")
            out.append("")
            hosts = {f"voter {n}": fp for n, fp in (me.get("voters") or {"": me["voter"]}).items()}
            if me.get("client"):
                hosts["client"] = me["client"]
            rows = [[host.strip(), k, str(v["rss_mb"]), str(v["cpu_pct"])]
                    for host, fp in hosts.items() for k, v in fp.items() if isinstance(v, dict)]
            out.append(_md_table(["host", "process", "RSS MB", f"idle CPU % ({me['voter']['idle_s']} s)"], rows))
        else:
            out.append(f"{me.get('status')}: {me.get('reason')}")
        out.append("")
    return out


def _gbps_cell(g: dict[str, Any]) -> str:
    return f"{g['median']:.3f} ({g['min']:.3f}–{g['max']:.3f})"


THROUGHPUT_SUITES = ("dataplane", "datapath", "wireguard", "transport", "networks")


def suite_cpu(suite: dict[str, Any] | None) -> int | None:
    """The CPU a suite's iperf3 runs were pinned to (`--cpu`), None when unpinned."""
    suite = suite or {}
    cpu = (suite.get("params") or {}).get("cpu", suite.get("cpu"))  # `bench networks`: no params
    return cpu if isinstance(cpu, int) and not isinstance(cpu, bool) else None


def pinned_cpu(results: dict[str, Any]) -> int | None:
    """The CPU of this run's own throughput suites (not of one added with its own command)."""
    for name in THROUGHPUT_SUITES:
        suite = results.get(name)
        if isinstance(suite, dict) and not suite.get("command") and suite_cpu(suite) is not None:
            return suite_cpu(suite)
    return None


def pinned_sentence(cpu: int | None) -> str:
    if cpu is None:
        return ""
    return (f" iperf3 client and server pinned to CPU {cpu} (`--cpu {cpu}`): the whole path runs on that CPU, "
            "so the throughput figures measure its CPU cost per byte.")


def _run_line(suite: dict[str, Any]) -> list[str]:
    """The command and time of a suite run on its own (`crossnet bench report --add`)."""
    if not suite.get("command"):
        return []
    return ["```", suite["command"], "```", "",
            (f"Run {suite.get('started')} ({suite.get('elapsed_s')} s), git {suite.get('git') or '?'}, "
             f"load average (1/5/15 min) at its start {suite.get('load')}.{pinned_sentence(suite_cpu(suite))}"), ""]


def _wireguard_md(wg: dict[str, Any]) -> list[str]:
    out = ["## WireGuard: encrypted vs unencrypted vs underlay", ""]
    if wg.get("status") != "ok":
        return out + [f"{wg.get('status')}: {wg.get('reason')}", ""]
    out += _run_line(wg)
    p = wg.get("params") or {}
    out.append(
        "Two labs up at the same time, one switch each. Lab A (6 hosts): h1 → h2 crossnet's backend wireguard "
        "(`crossnet apply`, wireguard-go supervised by crossnet), h3 → h4 the same WireGuard set up by hand "
        "(commands below), h5 → h6 never configured: the underlay. Lab B (2 hosts): crossnet's unencrypted "
        "overlay (backend vxlan), container h1 → h2. Each round runs one iperf3 TCP run "
        f"({p.get('duration_s')} s) on every path, the order reversed every other round; {p.get('repeats')} "
        "rounds. ÷ underlay: median ÷ the underlay's median; per round: median over rounds of the path ÷ the "
        "underlay run of the same round. The target figure is the median over pairs of rounds (one in each "
        "order: whichever path runs first in a round measures a little lower, so a pair cancels the order) of "
        "the geometric mean of crossnet ÷ hand-built (the two runs of a round are seconds apart; both are "
        "divided by the same underlay, which cancels).")
    out.append("")
    rows = []
    label = {"wireguard": "crossnet wireguard (encrypted)", "manual-wireguard": "hand-built WireGuard (encrypted)",
             "vxlan": "crossnet vxlan (unencrypted)", "underlay": "underlay (host → host)"}
    for r in wg.get("rows", []):
        rows.append([label.get(r["name"], r["name"]), r.get("container_mtu"), _gbps_cell(r["gbps"]),
                     ", ".join(f"{x:.3f}" for x in r["gbps"].get("samples", [])), f"**{_f(r.get('ratio'), 3)}**",
                     _f(r.get("round_ratio"), 3), f"{r['rtt']['p50_ms']:.3f} / {r['rtt']['p99_ms']:.3f}"])
    out.append(_md_table(["path", "MTU", "Gbit/s median (min–max)", "per round", "÷ underlay", "÷ underlay per round",
                          "RTT p50/p99 ms"], rows))
    out.append("")
    vm = wg.get("vs_manual") or {}
    out.append(f"crossnet ÷ hand-built per round: {', '.join(str(x) for x in vm.get('round_ratios') or [])}; "
               f"per pair of rounds: {', '.join(str(x) for x in vm.get('pair_ratios') or [])} — "
               f"median **{vm.get('median_round_ratio')}**, ratio of the medians {vm.get('ratio_of_medians')}. "
               f"crossnet encrypted ÷ crossnet unencrypted (median over rounds): {wg.get('vs_unencrypted')}.")
    out.append("")
    if wg.get("steps"):
        out += _steps_details("How the hand-built WireGuard was built", wg["steps"])
    return out


def _datapath_md(dx: dict[str, Any]) -> list[str]:
    """`crossnet bench datapath` (crossnet.bench.datapathbench): per backend and MTU the
    three paths of the interleaved rounds and the ebpf ÷ kernel figures."""
    out = ["## Datapaths: `datapath: ebpf` vs `datapath: kernel`", ""]
    if dx.get("status") != "ok":
        return out + [f"{dx.get('status')}: {dx.get('reason')}", ""]
    out += _run_line(dx)
    p = dx.get("params") or {}
    out.append(
        "Per backend and MTU two labs up at the same time, one switch each: a `datapath: kernel` lab (h1 → h2 "
        "container to container; h3 → h4, never configured, the underlay; h5 → h6 the floor: a container veth and "
        "a route typed by hand, nothing of crossnet's — host-gw's shape, or flannel's L3 vxlan layout for vxlan) and "
        "a `datapath: ebpf` lab (h1 → h2, routed container veths and the tc eBPF programs, docs/datapath.md). Every "
        f"round one iperf3 TCP run ({p.get('duration_s')} s) on each path, the order reversed every other round, "
        f"{p.get('repeats')} rounds; then {p.get('ping_count')} pings per path. ebpf ÷ kernel is the median over pairs "
        "of rounds (one in each order); the RTT overhead is the path's p50 minus the underlay's. Measure on a quiet "
        "machine: the paths differ by a few percent, less than what other work on a shared 2-vCPU VM moves them.")
    if dx.get("ebpf_problem"):
        out.append("")
        out.append(f"This machine cannot run the eBPF programs ({dx['ebpf_problem']}): the ebpf rows are skipped.")
    out.append("")
    rows = []
    for r in dx.get("rows", []):
        if r.get("status") != "ok":
            rows.append([r["backend"], str(r["mtu"]), "–", f"{r.get('status')}: {r.get('reason')}", "–", "–", "–", "–",
                         "–", "–"])
            continue
        for name in ("kernel", "ebpf", "floor", "underlay"):
            x = (r.get("paths") or {}).get(name) or {}
            if "gbps" not in x:
                rows.append([r["backend"], str(r["mtu"]), name, f"{x.get('status', 'not measured')}: "
                             f"{x.get('reason', '')}", "–", "–", "–", "–", "–", "–"])
                continue
            ran = {(d or {}).get("datapath") for d in (x.get("datapath") or {}).values()}
            label = name + (f" (ran: {', '.join(sorted(map(str, ran)))})" if name == "ebpf" and ran != {"ebpf"} else "")
            rtt = x.get("rtt") or {}
            rows.append([r["backend"], str(r["mtu"]), label, _gbps_cell(x["gbps"]),
                         ", ".join(f"{v:.3f}" for v in x["gbps"].get("samples", [])),
                         "1" if name == "underlay" else _f(x.get("ratio"), 3),
                         f"{_f(rtt.get('p50_ms'), 3)}/{_f(rtt.get('p99_ms'), 3)}",
                         "–" if name == "underlay" else _f(x.get("rtt_overhead_us"), 3),
                         _f((x.get("vs_floor") or {}).get("median_round_ratio"), 3) if x.get("vs_floor") else "–",
                         _f((x.get("vs_floor") or {}).get("rtt_over_floor_us"), 3) if x.get("vs_floor") else "–"])
    out.append(_md_table(["backend", "MTU", "path", "Gbit/s median (min–max)", "per round", "÷ underlay",
                          "RTT p50/p99 ms", "RTT p50 overhead µs", "÷ floor (rounds)", "RTT over floor µs"], rows))
    out.append("")
    for r in dx.get("rows", []):
        vk = r.get("ebpf_vs_kernel")
        if not vk:
            continue
        counters = {h: ((d or {}).get("counters") or {}).get("redirect")
                    for h, d in (((r.get("paths") or {}).get("ebpf") or {}).get("datapath") or {}).items()}
        out.append(f"- {r['backend']}, MTU {r['mtu']}: ebpf ÷ kernel per round "
                   f"{', '.join(str(x) for x in vk.get('round_ratios') or [])}; per pair of rounds "
                   f"{', '.join(str(x) for x in vk.get('pair_ratios') or []) or '–'} — median "
                   f"**{vk.get('median_round_ratio')}**, ratio of the medians {vk.get('ratio_of_medians')}"
                   + (f"; packets the programs redirected: {', '.join(f'{h} {n}' for h, n in counters.items())}"
                      if counters else ""))
    out.append("")
    shown: set[str] = set()
    for r in dx.get("rows", []):
        fl = (r.get("paths") or {}).get("floor") or {}
        if fl.get("steps") and fl.get("layout") not in shown:
            shown.add(fl["layout"])
            out += _steps_details(f"How the floor was built ({fl['layout']}, {r['backend']} rows)", fl["steps"])
    return out


def _transport_md(tr: dict[str, Any]) -> list[str]:
    out = ["## Backend auto: fallback and per-peer throughput", ""]
    if tr.get("status") != "ok":
        return out + [f"{tr.get('status')}: {tr.get('reason')}", ""]
    out += _run_line(tr)
    p = tr.get("params") or {}
    fb, rc = tr.get("fallback_s") or {}, tr.get("recovery_s") or {}
    out.append(
        "An L3 lab on etcd (3 hosts behind one router, an agent per host). Fallback: nft in the router drops UDP "
        "4789 between h1 and h2; measured from the filter going up to h1's container reaching h2's again "
        f"(over WireGuard by then): {', '.join(str(x) for x in fb.get('samples') or [])} s (max {fb.get('max')} s); "
        f"filter lifted → both back on VXLAN: {', '.join(str(x) for x in rc.get('samples') or [])} s.")
    out.append("")
    if tr.get("rounds"):
        out.append(
            "Per-peer throughput, filter up (h1 → h2 on WireGuard, h1 → h3 on VXLAN), against the same path with "
            "that backend alone (h1 → h2 of two more L3 labs up at the same time) and the underlay (h1 → h3 host "
            f"to host in auto's lab): every round one iperf3 run ({p.get('duration_s')} s) on each of the five "
            f"paths, the order reversed every other round, {p.get('repeats')} rounds; the target figure is the "
            "median over pairs of rounds (one in each order) of the geometric mean of auto ÷ alone.")
        out.append("")
        rows = [[r["name"], _gbps_cell(r["overlay"]["gbps"]),
                 ", ".join(f"{x:.3f}" for x in r["overlay"]["gbps"].get("samples", [])), _f(r.get("ratio"), 3)]
                for r in tr.get("rows", [])]
        u = tr.get("underlay") or {}
        if u:
            rows.append(["underlay", _gbps_cell(u["gbps"]), ", ".join(f"{x:.3f}" for x in u["gbps"]["samples"]), "1"])
        out.append(_md_table(["path", "Gbit/s median (min–max)", "per round", "÷ underlay"], rows))
        out.append("")
        for picked, rr in tr["rounds"].items():
            out.append(f"- auto ({picked} picked) ÷ {picked} alone per round: "
                       f"{', '.join(str(x) for x in rr.get('round_ratios') or [])}; per pair of rounds "
                       f"{', '.join(str(x) for x in rr.get('pair_ratios') or [])} — median "
                       f"**{rr.get('median_round_ratio')}**, ratio of the medians {rr.get('ratio_of_medians')}")
        out.append("")
    return out


def render(results: dict[str, Any], img: dict[str, str]) -> str:
    m = results.get("machine") or {}
    targets = evaluate(results)
    out = ["# Benchmarks", ""]
    out.append("Generated by `crossnet bench` — do not edit by hand; re-run the command below.")
    out.append("")
    out.append("```")
    out.append(results.get("command") or "crossnet bench all --report")
    out.append("```")
    out.append("")
    load_end = results.get("load_after") or []
    out.append(
        f"Run {results.get('started')} ({results.get('elapsed_s')} s), crossnet {m.get('crossnet')} "
        f"(git {results.get('git') or '?'}){' — quick mode' if results.get('quick') else ''}. "
        f"Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_mb')} MB, kernel {m.get('kernel')}, "
        f"Python {m.get('python')}, pyroute2 {m.get('pyroute2')}, {m.get('iperf3') or 'no iperf3'}, "
        f"{m.get('ovs') or 'no OVS'}, {m.get('podman') or 'no podman'}. "
        f"Load average (1/5/15 min) at start {m.get('loadavg')}, at the end {load_end}."
        + pinned_sentence(pinned_cpu(results)))
    if results.get("load_note"):
        out.append("")
        out.append(results["load_note"])
    out.append("")
    out.append("Absolute figures on this shared 2-vCPU VM drift from run to run and with what else runs; every "
               "figure is therefore compared with a baseline measured in the same run, minutes apart at most.")
    out.append("")
    out.append("## Targets")
    out.append("")
    rows = []
    for t in targets:
        v = "–" if t["value"] is None else f"{t['value']:.3g} {t['unit']}".strip()
        if t.get("also"):
            v += f" ({t['also']})"
        detail = "; ".join(x for x in [t["shortfall"], *(f"**⚠ {f}**" for f in t.get("flags") or []),
                                       t.get("note")] if x)
        res_txt = verdict(t)
        rows.append([t["what"], t["target"], v, f"**{res_txt}**" if t["met"] is False or t.get("flags") else res_txt,
                     detail])
    out.append(_md_table(["target", "goal", "measured", "result", "detail"], rows))
    out.append("")
    out.append("*met, flagged*: met on the target's own measure, but a related measure of the same thing (shown in "
               "the same row) exceeds the target; see below.")
    out.append("")
    missed = [t for t in targets if t["met"] is False]
    if missed:
        out.append("### Missed targets: by how much and why")
        out.append("")
        for t in missed:
            out.append(f"- **{t['what']}** — {t['shortfall']}. {why(t['id'], results, t.get('goal'))}")
        extra = results.get("findings") or []
        for f in extra:
            out.append(f"- {f}")
        out.append("")
    flagged = [t for t in targets if t["met"] is True and t.get("flags")]
    if flagged:
        out.append("### Met, but flagged: the other measure and where its time goes")
        out.append("")
        for t in flagged:
            out.append(f"- **{t['what']}** — {'; '.join(t['flags'])}. {flag_why(t['id'], results)}")
        out.append("")
    for name, file in img.items():
        out.append(f"![{name}]({IMG_DIR}/{file})")
        out.append("")
    if results.get("dataplane"):
        dp = results["dataplane"]
        if dp.get("status") == "skipped":
            out += ["## Data plane", "", f"skipped: {dp.get('reason')}", ""]
        else:
            out += _dataplane_md(dp)
    if results.get("datapath"):
        out += _datapath_md(results["datapath"])
    if results.get("wireguard"):
        out += _wireguard_md(results["wireguard"])
    if results.get("transport"):
        out += _transport_md(results["transport"])
    if results.get("control"):
        out += _control_md(results["control"])
    mem = results.get("memory") or []
    if mem:
        out.append("## Memory")
        out.append("")
        out.append("Peak resident set size (the kernel's `ru_maxrss` of each crossnet process, from `wait4`, or "
                   "`VmHWM` of long-lived ones).")
        out.append("")
        agg: dict[tuple[str, str], float] = {}
        for rec in mem:
            k = (rec["process"], rec["what"])
            agg[k] = max(agg.get(k, 0.0), rec["peak_rss_mb"])
        out.append(_md_table(["process", "during", "peak RSS MB"], [[p, w, v] for (p, w), v in agg.items()]))
        out.append("")
        if (results.get("dataplane") or {}).get("rows") and not any(
                str(rec.get("what", "")).startswith("data plane lab") for rec in mem):
            out.append("This run predates recording the crossnet processes of the data plane labs (`crossnet apply` / "
                       "`crossnet attach` on h1, h2, long-lived crossnet processes there): later runs list them here.")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_report(results: dict[str, Any], docs_dir: str | os.PathLike[str] = "docs") -> dict[str, str]:
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    img = make_plots(results, docs / IMG_DIR)
    text = render(results, img)
    (docs / "benchmarks.md").write_text(text)
    (docs / "benchmarks.json").write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return {"report": str(docs / "benchmarks.md"), "json": str(docs / "benchmarks.json"),
            **{k: str(docs / IMG_DIR / v) for k, v in img.items()}}


def run_table(res: dict[str, Any]) -> str:
    """The table of a `… run --rm` row (bench.util.interleaved_runs): per network."""
    rows = [[k, str(v.get("n")), v.get("median"), v.get("min"), v.get("max"),
             res["added_s"].get(k, 0.0) if k != "none" else "–"] for k, v in res["run_s"].items()]
    return _md_table(["--network", "runs", "median s", "min s", "max s", "added vs none s"], rows)


def docker_run_section(dk: dict[str, Any]) -> list[str]:
    """Markdown of the docker-run row's measurements (crossnet.bench.dockerbench)."""
    out = ["### docker run", ""]
    if dk.get("status") == "ok":
        out.append(f"`docker run --rm IMAGE true` on a simulated host (real dockerd, vfs storage), {dk.get('runs')} "
                   "runs per network, interleaved: `none`, Docker's default `bridge`, "
                   + ("a user-defined network of Docker's bridge driver (`docker user bridge`: dockerd's embedded "
                      "DNS, which every user-defined network gets, crossnet's too), "
                      if "docker user bridge" in dk.get("run_s", {}) else "")
                   + f"crossnet's driver (`crossnet docker-plugin`, backend {dk.get('backend')}). Load average at "
                   f"start: {dk.get('load_before')}.")
        if dk.get("added_ratio_user") is not None:
            out.append("")
            out.append(f"crossnet's driver / Docker's user-defined bridge, time added over `none`: "
                       f"**{dk['added_ratio_user']}×** (the target's ratio, over the default `bridge`: "
                       f"{dk.get('added_ratio')}×).")
        out.append("")
        out.append(run_table(dk))
        per = {k.split(".")[-1]: v.get("mean_ms") for k, v in (dk.get("plugin_ms") or {}).items()
               if isinstance(v, dict) and (v.get("n") or 0) > 1}
        if per:
            out.append("")
            out.append("crossnet driver, the plugin's time per request (mean ms, HTTP not included): "
                       + ", ".join(f"{k} {v}" for k, v in sorted(per.items(), key=lambda kv: -(kv[1] or 0))) + ".")
    else:
        out.append(f"{dk.get('status')}: {dk.get('reason')}")
    out.append("")
    return out

