"""`crossnet bench datapath` (crossnet.bench.datapathbench): the figures of a row, its
targets (issue 18: ebpf ÷ underlay, ebpf ÷ kernel, RTT p50 overhead) and the report
section, on the saved results of a real smoke run (tests/unit/fixtures/bench-datapath.json:
`bench datapath --repeats 1 --duration 1 --backends host-gw`) and on made-up rows."""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.bench.datapathbench import finish_row, rtt_overhead_us
from crossnet.bench.report import render
from crossnet.bench.targets import DATAPATH_GOALS, RTT_OVERHEAD_US, evaluate
from crossnet.bench.util import summary

FIXTURE = Path(__file__).parent / "fixtures" / "bench-datapath.json"
SAVED = json.loads(FIXTURE.read_text())


def _targets(res: dict) -> dict[str, dict]:
    return {t["id"]: t for t in evaluate(res) if t["id"].startswith("datapath-")}


def _path(samples: list[float], p50_ms: float) -> dict:
    return {"gbps": summary(samples), "rtt": {"p50_ms": p50_ms, "p99_ms": p50_ms * 2}}


def _row(backend: str, kernel: list[float], ebpf: list[float], under: list[float], rtts=(0.06, 0.055, 0.05),
         mtu: int = 1500) -> dict:
    paths = {"kernel": _path(kernel, rtts[0]), "ebpf": _path(ebpf, rtts[1]), "underlay": _path(under, rtts[2])}
    for h in ("h1", "h2"):
        paths["ebpf"].setdefault("datapath", {})[h] = {"datapath": "ebpf", "configured": "ebpf", "layout": "routed",
                                                       "why": None, "counters": {"redirect": 100}}
    return finish_row({"backend": backend, "mtu": mtu, "status": "ok", "paths": paths})


def _res(*rows: dict, problem: str | None = None) -> dict:
    return {"datapath": {"suite": "datapath", "status": "ok", "ebpf_problem": problem,
                         "params": {"repeats": 2, "duration_s": 1.0, "ping_count": 20}, "rows": list(rows)}}


speeds = st.lists(st.floats(min_value=0.1, max_value=50, allow_nan=False), min_size=1, max_size=8)


@given(st.data())
def test_row_figures_come_from_the_rounds(data):
    n = data.draw(st.integers(min_value=1, max_value=8))
    runs = {k: data.draw(st.lists(st.floats(min_value=0.1, max_value=50, allow_nan=False), min_size=n, max_size=n))
            for k in ("kernel", "ebpf", "underlay")}
    r = _row("host-gw", runs["kernel"], runs["ebpf"], runs["underlay"])
    u = statistics.median(runs["underlay"])
    for k in ("kernel", "ebpf"):
        p = r["paths"][k]
        assert p["ratio"] == pytest.approx(statistics.median(runs[k]) / u, rel=2e-3, abs=2e-3)
        assert p["ratio_min"] <= p["ratio"] <= p["ratio_max"]
    vk = r["ebpf_vs_kernel"]
    assert len(vk["round_ratios"]) == n and len(vk["pair_ratios"]) == n // 2
    assert min(vk["round_ratios"]) - 1e-3 <= vk["median_round_ratio"] <= max(vk["round_ratios"]) + 1e-3


def test_rtt_overhead_in_microseconds():
    assert rtt_overhead_us({"rtt": {"p50_ms": 0.0775}}, {"rtt": {"p50_ms": 0.0485}}) == 29.0
    assert rtt_overhead_us({"rtt": {"p50_ms": 0.04}}, {"rtt": {"p50_ms": 0.05}}) == -10.0
    assert rtt_overhead_us({}, {"rtt": {"p50_ms": 0.05}}) is None


def test_targets_met_and_missed_against_the_issue_goals():
    # host-gw: ebpf 0.96 × underlay, 1.10 × kernel, +5 µs: all met
    hg = _row("host-gw", [8.7, 8.8], [9.6, 9.7], [10.0, 10.1], rtts=(0.06, 0.055, 0.05))
    # vxlan: ebpf 0.7 × underlay, 1.0 × kernel, +30 µs: all missed
    vx = _row("vxlan", [7.0, 7.0], [7.0, 7.0], [10.0, 10.0], rtts=(0.09, 0.08, 0.05))
    t = _targets(_res(hg, vx))
    assert set(t) == {f"datapath-{b}-{k}-1500" for b in DATAPATH_GOALS for k in ("ebpf", "ebpf-vs-kernel", "rtt")}
    for k in ("ebpf", "ebpf-vs-kernel", "rtt"):
        assert t[f"datapath-host-gw-{k}-1500"]["met"] is True, t[f"datapath-host-gw-{k}-1500"]
        assert t[f"datapath-vxlan-{k}-1500"]["met"] is False and t[f"datapath-vxlan-{k}-1500"]["shortfall"]
    assert t["datapath-host-gw-ebpf-1500"]["value"] == hg["paths"]["ebpf"]["ratio"]
    assert t["datapath-host-gw-ebpf-1500"]["goal"] == 0.95 and t["datapath-vxlan-ebpf-1500"]["goal"] == 0.80
    assert t["datapath-host-gw-ebpf-vs-kernel-1500"]["value"] == hg["ebpf_vs_kernel"]["median_round_ratio"]
    assert t["datapath-host-gw-ebpf-vs-kernel-1500"]["goal"] == 1.08
    assert t["datapath-vxlan-ebpf-vs-kernel-1500"]["goal"] == 1.05
    assert t["datapath-host-gw-rtt-1500"]["value"] == 5.0 and t["datapath-host-gw-rtt-1500"]["goal"] == RTT_OVERHEAD_US
    assert t["datapath-vxlan-rtt-1500"]["value"] == 30.0 and "+10 µs over the limit" in t["datapath-vxlan-rtt-1500"]["shortfall"]
    assert "kernel: 40" in t["datapath-vxlan-rtt-1500"]["also"]  # the kernel path's overhead sits next to it


def test_targets_say_why_there_is_no_figure():
    assert {t["status"] for t in _targets({}).values()} == {"not measured in this run"}
    assert len(_targets({})) == 6  # both backends, MTU 1500, shown as not measured
    skipped = _row("host-gw", [1.0], [1.0], [1.0])
    skipped["paths"]["ebpf"] = {"status": "skipped", "reason": "no bpftool to load the eBPF programs"}
    fell = _row("vxlan", [1.0], [1.0], [1.0])
    fell["paths"]["ebpf"]["fell_back"] = "kernel forwarding ran (pins gone)"
    t = _targets(_res(skipped, fell, {"backend": "host-gw", "mtu": 9000, "status": "failed", "reason": "boom"}))
    assert t["datapath-host-gw-ebpf-1500"]["status"] == "skipped: no bpftool to load the eBPF programs"
    assert t["datapath-vxlan-rtt-1500"]["status"].startswith("ebpf did not run: kernel forwarding ran")
    assert t["datapath-host-gw-ebpf-vs-kernel-9000"]["status"] == "failed: boom"
    assert all(x["met"] is None and x["value"] is None for x in t.values())
    quick = {"backend": "vxlan", "mtu": 1500, "status": "skipped", "reason": "--quick: host-gw only"}
    assert _targets(_res(quick))["datapath-vxlan-ebpf-1500"]["status"] == "skipped: --quick: host-gw only"


def test_saved_smoke_run_renders():
    row = SAVED["datapath"]["rows"][0]
    t = _targets(SAVED)
    assert t["datapath-host-gw-ebpf-1500"]["value"] == row["paths"]["ebpf"]["ratio"]
    assert t["datapath-host-gw-rtt-1500"]["value"] == row["paths"]["ebpf"]["rtt_overhead_us"]
    assert t["datapath-vxlan-ebpf-1500"]["status"] == "not measured in this run"  # host-gw only
    text = render(SAVED, {})
    i = text.index("## Datapaths: `datapath: ebpf` vs `datapath: kernel`")
    section = text[i:text.index("\n## ", i + 1)]
    assert "Measure on a quiet machine" in section
    for name in ("kernel", "ebpf", "underlay"):
        g = row["paths"][name]["gbps"]
        assert f"| host-gw | 1500 | {name} | {g['median']:.3f} ({g['min']:.3f}–{g['max']:.3f}) |" in section
    assert f"median **{row['ebpf_vs_kernel']['median_round_ratio']}**" in section
    redirected = row["paths"]["ebpf"]["datapath"]["h1"]["counters"]["redirect"]
    assert f"h1 {redirected}" in section  # the programs' counters: ebpf really ran
    assert "host-gw `datapath: ebpf` TCP throughput / underlay, MTU 1500 | ≥ 0.95 |" in text


def test_render_skipped_ebpf_and_a_fallback():
    skipped = _row("host-gw", [1.0], [1.0], [1.0])
    skipped["paths"]["ebpf"] = {"status": "skipped", "reason": "no bpftool"}
    fell = _row("vxlan", [1.0, 1.1], [1.0, 1.0], [2.0, 2.0])
    fell["paths"]["ebpf"]["datapath"]["h2"]["datapath"] = "kernel"
    text = render(_res(skipped, fell, problem="no bpftool"), {})
    assert "cannot run the eBPF programs (no bpftool)" in text
    assert "| host-gw | 1500 | ebpf | skipped: no bpftool |" in text
    assert "| vxlan | 1500 | ebpf (ran: ebpf, kernel) |" in text
    assert "## Datapaths" in render({"datapath": {"status": "skipped", "reason": "iperf3 not installed"}}, {})


def test_report_add_takes_a_datapath_run(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"command": "crossnet bench all", "started": "then"}))
    docs = tmp_path / "docs"
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "report", "-i", str(base), "--add",
                           str(FIXTURE), "--docs", str(docs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (docs / "benchmarks.md").read_text()
    assert "## Datapaths" in text and SAVED["command"] in text


@pytest.mark.parametrize("args,field", [(["--backends", "bridge"], "--backends"), (["--mtu", "x"], "--mtu"),
                                        (["--repeats", "0"], "--repeats")])
def test_bad_options_are_one_line_exit_2(args, field):
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "datapath", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crossnet: error:") and field in lines[0], proc.stderr


def test_copy_of_fixture_is_not_mutated_by_rendering():
    before = copy.deepcopy(SAVED)
    render(SAVED, {})
    assert SAVED == before


def _ms(samples: list[float]) -> dict:
    return summary(samples, 3)


def test_attach_and_cni_with_ebpf_within_the_kernel_spread():
    kernel = [10.0, 11.0, 12.0, 13.0, 20.0]  # median 12, p90 17.2
    cp = {"attach": {"status": "ok", "inprocess": {"attach_ms": _ms(kernel)}},
          "attach_ebpf": {"status": "ok", "inprocess": {"attach_ms": _ms([14.0, 15.0, 16.0])}},  # median 15: within
          "cni": {"status": "ok", "crossnet-cni": {"add_ms": _ms(kernel)}},
          "cni_ebpf": {"status": "ok", "crossnet-cni": {"add_ms": _ms([18.0, 19.0, 30.0])}}}  # median 19: above
    t = {x["id"]: x for x in evaluate({"control": cp})}
    a, c = t["attach-ebpf"], t["cni-add-ebpf"]
    assert a["met"] is True and a["value"] == 1.25 and "kernel 12.0 ms (p90 17.2)" in a["note"]
    assert c["met"] is False and c["value"] == round(19 / 12, 3)
    assert c["shortfall"] == "ebpf median 19.0 ms above the kernel run's p90 17.2 ms"
    skipped = {"status": "skipped", "reason": "--quick (the full control suite measures it)"}
    t = {x["id"]: x for x in evaluate({"control": {**cp, "attach_ebpf": skipped, "cni_ebpf": skipped}})}
    assert t["attach-ebpf"]["status"] == t["cni-add-ebpf"]["status"] == "skipped: --quick (the full control suite measures it)"
    t = {x["id"]: x for x in evaluate({"control": {**cp, "cni": {"status": "failed", "reason": "boom"}}})}
    assert t["cni-add-ebpf"]["status"] == "failed: boom" and t["cni-add-ebpf"]["met"] is None
    assert {x["id"]: x for x in evaluate({})}["attach-ebpf"]["status"] == "not measured in this run"


def test_a_missed_datapath_target_says_what_the_run_was():
    text = render(SAVED, {})
    line = next(ln for ln in text.splitlines() if ln.startswith("- **host-gw `datapath: ebpf` TCP throughput / underlay"))
    load = SAVED["datapath"]["rows"][0]["load_before"][0]
    assert f"1 interleaved round(s), 1-min load average {load} before the row" in line
    assert "one round cannot cancel the order effect" in line and "the programs redirected h1 " in line
    busy = _row("host-gw", [8.0, 8.0], [8.0, 8.0], [10.0, 10.0])
    busy["load_before"] = [3.5, 2.0, 1.0]
    text = render(_res(busy), {})
    line = next(ln for ln in text.splitlines() if ln.startswith("- **host-gw `datapath: ebpf` / `datapath: kernel`"))
    assert "2 interleaved round(s)" in line and "busy machine" in line and "h1 100, h2 100 packets" in line


def test_the_floor_row_and_the_paths_over_it():
    """The hand-built floor (h5 → h6): its own ÷ underlay, and kernel/ebpf ÷ the floor
    (median over pairs of rounds) with their RTT p50 over the floor's."""
    from crossnet.bench.wgbench import median_ratio

    row = _row("host-gw", [8, 10, 9, 11], [12, 13, 12, 14], [20, 21, 19, 22], rtts=(0.060, 0.052, 0.050))
    row["paths"]["floor"] = {**_path([13, 12, 14, 13], 0.049), "layout": "floor-routed-veth",
                             "steps": ["[h5] ip link add vf1 ..."]}
    row = finish_row(row)
    p = row["paths"]
    assert p["floor"]["ratio"] == round(13 / 20.5, 3) and "vs_floor" not in p["floor"]
    assert p["ebpf"]["vs_floor"] == {"median_round_ratio": median_ratio([12, 13, 12, 14], [13, 12, 14, 13]),
                                     "rtt_over_floor_us": 3.0}
    assert p["kernel"]["vs_floor"]["rtt_over_floor_us"] == 11.0
    md = render(_res(row), {})
    assert "÷ floor (rounds)" in md and "How the floor was built (floor-routed-veth, host-gw rows)" in md
    assert "[h5] ip link add vf1 ..." in md


def test_a_row_without_the_floor_has_no_floor_figures():
    row = _row("vxlan", [8, 9], [10, 11], [20, 20])
    assert all("vs_floor" not in row["paths"][k] for k in ("kernel", "ebpf"))


def test_the_floor_layout_refuses_an_unknown_encapsulation():
    from crossnet.bench.manual import RoutedVethFloor

    class Lab:
        hosts = ("h1", "h2")

    assert RoutedVethFloor(Lab()).name == "floor-routed-veth"
    assert RoutedVethFloor(Lab(), encap="vxlan").overhead == 50
    with pytest.raises(ValueError, match="encap"):
        RoutedVethFloor(Lab(), encap="gre")


@pytest.mark.parametrize("only, ebpf_why", [(("attach", "cni"), None), (("cni",), None), (("attach",), "no bpftool"),
                                            (("peers", "mesh"), None)])
def test_control_measures_only_the_parts_asked_for(monkeypatch, only, ebpf_why):
    """`bench control --only`: the parts asked for run (attach and cni with their ebpf rows,
    unless this machine cannot run the programs), every other one is recorded as skipped,
    and the targets say so instead of a figure."""
    import crossnet.ebpf as ebpf
    from crossnet.bench import control, dockerbench
    from crossnet.bench.util import RunContext

    ran: list[tuple[str, str]] = []

    def fake(name):
        def measure(rc, *args, datapath="kernel", **kw):
            ran.append((name, datapath))
            return {"status": "ok", "name": name, "datapath": datapath}
        return measure

    for name in ("attach", "peers", "cni", "podman", "agent", "dns", "mesh"):
        monkeypatch.setattr(control, f"bench_{name}", fake(name))
    monkeypatch.setattr(dockerbench, "run", fake("docker"))
    monkeypatch.setattr(ebpf, "problem", lambda: ebpf_why)
    res = control.run(RunContext(), parts=only)
    want = {"attach": ["attach"], "peers": ["peers"], "cni": ["cni"], "podman": ["podman", "docker"],
            "agent": ["agent", "dns"], "mesh": ["mesh"]}
    asked = {n for p in only for n in want[p]}
    assert {n for n, dp in ran if dp == "kernel"} == asked
    assert {n for n, dp in ran if dp == "ebpf"} == (set() if ebpf_why else asked & {"attach", "cni"})
    for key in ("attach", "peers", "cni", "podman", "docker", "agent", "dns", "mesh"):
        assert (res[key]["status"] == "ok") is (key in asked), key
        if key not in asked:
            assert res[key]["reason"] == "not asked for (--only)", key
    t = {x["id"]: x for x in evaluate({"control": res})}
    if "attach" not in only:
        assert t["attach-ebpf"]["status"] == "skipped: not asked for (--only)"
    elif ebpf_why:
        assert t["attach-ebpf"]["status"] == f"skipped: {ebpf_why}"
    assert res["params"]["parts"] == list(only)
