"""`crossnet bench all --quick`: every figure is produced and sane (positive, ratios
computed from the same run's baselines). Targets are reported, never asserted here.

Every row must be ok: CI installs everything the bench uses (openvswitch, podman,
the CNI reference plugins, etcd: scripts/install), so a skipped or failed row is a
missing figure. One run of the quick suite (< 3 min, its wall time is printed) is
shared by the tests of this module."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

QUICK_TIMEOUT = 600  # a hang guard only: the quick suite targets < 3 min (reported, not asserted)

# every data plane row of a quick run: all backends and the non-diagnostic hand-built layouts
ROWS = {"bridge", "host-gw", "vxlan", "ovs-gre", "ovs-vxlan",
        "manual-bridge-routes", "manual-bridge-nic", "manual-vxlan", "manual-ovs-gre"}
# crossnet backend -> its hand-built baseline (vs_manual)
BASELINES = {"host-gw": "manual-bridge-routes", "bridge": "manual-bridge-nic", "vxlan": "manual-vxlan",
             "ovs-gre": "manual-ovs-gre"}


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("bench needs root (lab namespaces)")
    for tool in ("ip", "iperf3", "ping"):
        if not shutil.which(tool):
            pytest.skip(f"bench needs {tool}")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    _require()
    out = tmp_path_factory.mktemp("bench")
    save = out / "results.json"
    docs = out / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "crossnet", "bench", "all", "--quick", "-o", "json", "--save", str(save),
         "--report", "--docs", str(docs)],
        capture_output=True, text=True, timeout=QUICK_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert json.loads(save.read_text()) == res
    # reported, not asserted (the issue's < 3 min is a goal for CI, not a test condition)
    print(f"\nbench all --quick: {res['elapsed_s']} s", file=sys.stderr)
    return {"res": res, "docs": docs, "stderr": proc.stderr}


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_finishes_in_time_and_cleans_up(quick):
    res = quick["res"]
    assert res["quick"] is True
    assert res["elapsed_s"] < QUICK_TIMEOUT
    from crossnet.lab import manager, netns

    created = res["labs_created"]
    assert created and all(n.startswith("b") and len(n) == 8 for n in created)
    assert not set(created) & set(manager.lab_names())
    assert [n for n in netns.list_netns() if n.split("-")[0] in created] == []


def test_machine_facts(quick):
    m = quick["res"]["machine"]
    assert m["cores"] >= 1 and m["kernel"] and len(m["loadavg"]) == 3
    assert quick["res"]["command"].startswith("crossnet bench all")


def _approx(x, y, rel=2e-3, abs=2e-3):
    """x (rounded by the bench to 3 significant digits or 4 places) == y."""
    return x == pytest.approx(y, rel=rel, abs=abs)


def test_dataplane_figures_are_sane(quick):
    dp = quick["res"]["dataplane"]
    rows = dp["rows"]
    assert dp["params"]["mtus"] == [1500]
    assert {r["name"] for r in rows} == ROWS
    assert len(rows) == len(ROWS)
    bad = [(r["name"], r["status"], r.get("reason")) for r in rows if r["status"] != "ok"]
    assert not bad, bad  # CI has OVS, so no row may be skipped or failed
    by = {r["name"]: r for r in rows}
    for r in rows:
        for side in ("underlay", "overlay"):
            g = r[side]["gbps"]
            assert g["n"] == dp["params"]["repeats"] == len(g["samples"])
            assert all(_pos(x) for x in g["samples"])
            assert g["min"] <= g["median"] <= g["max"]
            assert _approx(g["median"], statistics.median(g["samples"]))
            rtt = r[side]["rtt"]
            assert rtt["n"] >= 1 and _pos(rtt["p50_ms"]) and rtt["p50_ms"] <= rtt["p99_ms"]
        # the ratio is computed from this row's own underlay, measured in the same lab
        o, u = r["overlay"]["gbps"], r["underlay"]["gbps"]
        assert _approx(r["ratio"], o["median"] / u["median"])
        assert _approx(r["ratio_min"], o["min"] / u["max"]) and _approx(r["ratio_max"], o["max"] / u["min"])
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert 0 < r["ratio"] < 3, r  # sane: same switch, same machine
        assert _pos(r["container_mtu"]) and r["container_mtu"] <= r["mtu"]
        if r["kind"] == "manual":
            assert r["steps"], r["name"]
        else:
            # the crossnet processes that built the lab were measured (peak RSS)
            assert _pos(r["crossnet_rss_mb"]["apply"]) and _pos(r["crossnet_rss_mb"]["attach"])
    assert dp["params"]["twins_interleaved"] is True
    for name, base in BASELINES.items():
        r, m = by[name], by[base]
        # measured together: the twin's row right before its backend's, one underlay, the same rounds
        assert rows.index(m) + 1 == rows.index(r)
        assert m["underlay"] == r["underlay"] and m["load_before"] == r["load_before"]
        vs = r["vs_manual"]
        assert vs["baseline"] == base and vs["interleaved"] is True
        assert _approx(vs["ratio"], r["overlay"]["gbps"]["median"] / m["overlay"]["gbps"]["median"])
        assert _approx(vs["normalised_ratio"], r["ratio"] / m["ratio"], rel=5e-3)
        per_round = [a / b for a, b in zip(r["overlay"]["gbps"]["samples"], m["overlay"]["gbps"]["samples"])]
        assert vs["round_ratios"] == [pytest.approx(x, abs=1e-3) for x in per_round]
        pairs = [math.sqrt(per_round[i] * per_round[i + 1]) for i in range(0, len(per_round) - 1, 2)]
        assert vs["pair_ratios"] == [pytest.approx(x, abs=1e-3) for x in pairs]
        assert _approx(vs["median_round_ratio"], statistics.median(pairs))
    assert by["vxlan"]["container_mtu"] == 1450 and by["manual-vxlan"]["container_mtu"] == 1450
    assert by["bridge"]["container_mtu"] == by["manual-bridge-nic"]["container_mtu"] == 1500


def test_datapath_figures_are_sane(quick):
    """`bench all --quick` runs one short round of `bench datapath` (host-gw): kernel,
    ebpf and the underlay interleaved; the ebpf lab really ran the programs."""
    dx = quick["res"]["datapath"]
    assert dx["status"] == "ok", dx.get("reason")
    rows = {r["backend"]: r for r in dx["rows"]}
    assert set(rows) == {"host-gw", "vxlan"} and dx["params"]["mtus"] == [1500]
    assert rows["vxlan"]["status"] == "skipped" and rows["vxlan"]["reason"].startswith("--quick")
    r = rows["host-gw"]
    assert r["status"] == "ok", r.get("reason")
    measured = ["kernel", "underlay", "floor"] + ([] if dx["ebpf_problem"] else ["ebpf"])
    for name in measured:
        g = r["paths"][name]["gbps"]
        assert g["n"] == dx["params"]["repeats"] == len(g["samples"]) and all(_pos(x) for x in g["samples"])
        assert _pos(r["paths"][name]["rtt"]["p50_ms"])
    u = r["paths"]["underlay"]
    for name in [n for n in measured if n != "underlay"]:
        p = r["paths"][name]
        assert _approx(p["ratio"], p["gbps"]["median"] / u["gbps"]["median"])
        assert _approx(p["rtt_overhead_us"], (p["rtt"]["p50_ms"] - u["rtt"]["p50_ms"]) * 1000, rel=1e-2, abs=0.2)
    f = r["paths"]["floor"]  # the hand-built routed veth, on hosts of its own
    assert f["layout"] == "floor-routed-veth" and any("ip route add" in s for s in f["steps"])
    for name in [n for n in measured if n in ("kernel", "ebpf")]:
        vf = r["paths"][name]["vs_floor"]
        assert _pos(vf["median_round_ratio"])
        assert _approx(vf["rtt_over_floor_us"], (r["paths"][name]["rtt"]["p50_ms"] - f["rtt"]["p50_ms"]) * 1000,
                       rel=1e-2, abs=0.2)
    if dx["ebpf_problem"]:
        assert r["paths"]["ebpf"] == {"status": "skipped", "reason": dx["ebpf_problem"]}
    else:
        e = r["paths"]["ebpf"]
        assert all(d["datapath"] == "ebpf" and d["counters"]["redirect"] > 0 for d in e["datapath"].values()), e
        assert all(d["datapath"] == "kernel" for d in r["paths"]["kernel"]["datapath"].values())
        assert _approx(r["ebpf_vs_kernel"]["ratio_of_medians"], e["gbps"]["median"] / r["paths"]["kernel"]["gbps"]["median"])


def test_control_figures_are_sane(quick):
    cp = quick["res"]["control"]
    at = cp["attach"]
    assert at["status"] == "ok", at.get("reason")
    ip = at["inprocess"]
    assert ip["attach_ms"]["n"] >= 200 and ip["distinct_addresses"] == ip["attach_ms"]["n"]
    assert all(_pos(x) for x in ip["attach_ms"]["samples"])
    assert ip["attach_ms"]["p50"] <= ip["attach_ms"]["p99"]
    assert ip["detach_ms"]["n"] == ip["attach_ms"]["n"]
    assert at["cli"]["attach_ms"]["n"] == cp["params"]["cli_count"] and _pos(at["cli"]["attach_ms"]["p50"])
    assert not ip["errors"] and not at["cli"]["errors"]
    b = at["cli"]["breakdown"]  # where a CLI attach's time goes
    for k in ("interpreter_ms", "site_ms", "cli_import_ms", "attach_imports_ms", "cli_version_ms"):
        assert _pos(b[k]), (k, b)
    assert b["import_self_ms"] and all(_pos(v) for v in b["import_self_ms"].values())

    pe = cp["peers"]
    assert pe["status"] == "ok", pe.get("reason")
    sizes = {r["peers"] for r in pe["rows"] if r["status"] == "ok"}
    assert {10, 100, 1000} <= sizes, pe["rows"]
    assert all(r["status"] == "ok" for r in pe["rows"]), pe["rows"]
    for r in pe["rows"]:
        assert _pos(r["apply_wall_s"]) and _pos(r["noop_wall_s"]) and _pos(r["apply_rss_mb"])
        assert r["apply_wall_min_s"] <= r["apply_wall_s"] <= r["apply_wall_max_s"]
        assert r["apply_internal_s"] <= r["apply_wall_s"]
        assert r["noop_changed"] is False  # the second apply is a no-op
        assert r["changes"] > r["peers"]  # every peer programmed

    cn = cp["cni"]
    assert cn["status"] == "ok", cn.get("reason")  # CI installs the reference plugins
    for k in ("crossnet-cni", "bridge+host-local"):
        rec = cn[k]
        assert rec["add_ms"]["n"] == rec["del_ms"]["n"] == cp["params"]["cni_count"], rec
        assert all(_pos(x) for x in rec["add_ms"]["samples"] + rec["del_ms"]["samples"]) and not rec["errors"]
        assert _pos(rec["peak_rss_mb"])
    assert _approx(cn["add_ratio"], cn["crossnet-cni"]["add_ms"]["median"] / cn["bridge+host-local"]["add_ms"]["median"])
    assert _approx(cn["del_ratio"], cn["crossnet-cni"]["del_ms"]["median"] / cn["bridge+host-local"]["del_ms"]["median"])

    po = cp["podman"]
    assert po["status"] == "ok", po.get("reason")  # CI installs podman
    assert set(po["run_s"]) == {"none", "crossnet-cni", "bridge+host-local"}
    for v in po["run_s"].values():
        assert v["n"] == po["runs"] and all(_pos(x) for x in v["samples"])
    assert not po["errors"]
    none = po["run_s"]["none"]["median"]
    for k in ("crossnet-cni", "bridge+host-local"):
        assert _approx(po["added_s"][k], po["run_s"][k]["median"] - none, abs=1e-3)
    assert po["added_ratio"] is None or _approx(
        po["added_ratio"], po["added_s"]["crossnet-cni"] / po["added_s"]["bridge+host-local"], abs=5e-3)

    ag = cp["agent"]
    assert ag["status"] == "ok", ag.get("reason")  # CI installs etcd; the quick suite runs a small agent lab
    assert ag["hosts"] == cp["params"]["agent_hosts"] >= 3
    joins = cp["params"]["agent_joins"]
    for k in ("program_s", "program_after_ready_s", "remove_s"):
        assert ag[k]["n"] == joins and all(_pos(x) for x in ag[k]["samples"]), (k, ag[k])
    assert ag["program_s"]["p50"] <= ag["program_s"]["p95"] <= ag["program_s"]["max"]
    # from the agent's start includes its readiness: never shorter than after-ready
    assert all(a >= b for a, b in zip(ag["program_s"]["samples"], ag["program_after_ready_s"]["samples"]))
    assert _pos(ag["agent_rss_mb"]) and ag["agent_rss_mb"] < 1024

    me = cp["mesh"]  # `crossnet launch`: a small mesh in the quick suite
    assert me["status"] == "ok", me.get("reason")
    assert me["hosts"] == cp["params"]["mesh_hosts"] >= 2
    assert me["join_s"]["n"] == cp["params"]["mesh_joins"] and all(_pos(x) for x in me["join_s"]["samples"])
    assert me["join_s"]["min"] <= me["join_s"]["p95"] <= me["join_s"]["max"]
    assert me["voter"]["host"] in me["voters"] and len(me["voters"]) >= 2  # the busiest of every voter
    v = me["voter"]
    assert all(_pos(v[k]["rss_mb"]) and v[k]["rss_mb"] < 1024 for k in ("etcd", "launch"))
    assert _approx(v["total"]["rss_mb"], v["etcd"]["rss_mb"] + v["launch"]["rss_mb"], abs=0.2)
    assert 0 <= v["total"]["cpu_pct"] < 200


def test_memory_and_targets(quick):
    res = quick["res"]
    mem = res["memory"]
    assert mem and all(_pos(m["peak_rss_mb"]) and m["peak_rss_mb"] < 1024 for m in mem)
    assert all(m["process"].startswith(("crossnet", "bench worker")) for m in mem), mem  # crossnet's own only
    procs = {(m["process"], m["what"]) for m in mem}
    for proc, during in (("crossnet apply (CLI)", "data plane lab"), ("crossnet attach (CLI)", "data plane lab"),
                         ("crossnet apply (CLI)", "vxlan, 1000 peers"), ("crossnet attach (CLI)", "max over"),
                         ("crossnet agent", "max over"), ("crossnet-cni", "max over")):
        assert any(p == proc and w.startswith(during) for p, w in procs), (proc, during, procs)
    dp_mem = [m for m in mem if m["what"].startswith("data plane lab")]
    crossnet_rows = [r for r in res["dataplane"]["rows"] if r["kind"] == "crossnet"]
    assert len(dp_mem) >= 2 * len(crossnet_rows)  # apply + attach of every crossnet row

    targets = {t["id"]: t for t in res["targets"]}
    assert {"vxlan-1500", "host-gw-1500", "bridge-1500", "ovs-gre-1500", "attach-p50", "peers-1000", "cni-add",
            "podman-run", "agent-p95", "agent-rss", "mesh-join-p95", "mesh-rss", "mesh-idle-cpu", "dns-p99",
            "dns-change"} <= set(targets)
    for t in targets.values():
        assert t["met"] in (True, False, None)
        if t["id"].endswith("-9000"):
            assert t["met"] is None  # --quick: MTU 1500 only
            continue
        if t["id"] == "auto-fallback" and "transport" not in res:
            assert t["status"] == "not measured in this run", t  # its own command: `crossnet bench transport`
            continue
        if t["id"] in ("attach-ebpf", "cni-add-ebpf") and res["quick"]:  # datapath ebpf: the full control suite
            assert t["status"].startswith("skipped: --quick"), t
            continue
        if t["id"] == "docker-run" and res["quick"]:  # a dockerd per lab host: the full control suite only
            assert t["status"].startswith("skipped: --quick"), t
            continue
        if t["id"] == "networks-isolation" and "networks" not in res:
            assert t["status"] == "not measured in this run", t  # its own command: `crossnet bench networks`
            continue
        if t["id"].startswith("datapath-vxlan-"):  # `bench datapath` measures it; --quick: one round of host-gw
            assert t["status"].startswith("skipped: --quick"), t
            continue
        if t["id"].startswith("datapath-") and res["datapath"]["ebpf_problem"]:
            assert t["status"] == f"skipped: {res['datapath']['ebpf_problem']}", t  # no eBPF here: said why
            continue
        if t["id"] == "podman-run" and res["control"]["podman"]["added_s"]["bridge+host-local"] <= 0:
            continue  # 3 quick runs: the reference may add nothing measurable, so there is no ratio
        # every suite ran completely, so every other target has a value
        assert isinstance(t["value"], (int, float)) and t["met"] is not None, t
        if t["met"] is False:
            assert t["shortfall"]
        assert isinstance(t["flags"], list)
    # the targets carry the same figures as the rows they come from
    rows = {r["name"]: r for r in res["dataplane"]["rows"]}
    for name in ("vxlan", "host-gw", "bridge"):
        assert targets[f"{name}-1500"]["value"] == rows[name]["ratio"]
        assert BASELINES[name] in targets[f"{name}-1500"]["also"]
    assert targets["ovs-gre-1500"]["value"] == rows["ovs-gre"]["vs_manual"]["median_round_ratio"]
    for name in ("vxlan", "host-gw", "bridge"):  # issue 18: each backend ÷ its twin, the interleaved figure
        assert targets[f"{name}-twin-1500"]["value"] == rows[name]["vs_manual"]["median_round_ratio"]
    cp = res["control"]
    assert targets["attach-p50"]["value"] == cp["attach"]["inprocess"]["attach_ms"]["p50"]
    assert "CLI p50" in targets["attach-p50"]["also"]  # the CLI figure sits in the same row
    assert bool(targets["attach-p50"]["flags"]) == (cp["attach"]["cli"]["attach_ms"]["p50"] > 30)
    p1000 = [r for r in cp["peers"]["rows"] if r["peers"] == 1000]
    assert targets["peers-1000"]["value"] == max(r["apply_wall_s"] for r in p1000)
    assert "no-op re-apply" in targets["peers-1000"]["also"]
    assert bool(targets["peers-1000"]["flags"]) == any(r["noop_wall_s"] > 1 for r in p1000)
    assert targets["cni-add"]["value"] == cp["cni"]["add_ratio"]
    assert targets["agent-p95"]["value"] == cp["agent"]["program_s"]["p95"]
    assert targets["agent-rss"]["value"] == cp["agent"]["agent_rss_mb"]
    assert targets["mesh-join-p95"]["value"] == cp["mesh"]["join_s"]["p95"]
    voters = cp["mesh"]["voters"]  # every voter measured; each target is the worst voter's figure
    assert targets["mesh-rss"]["value"] == max(v["total"]["rss_mb"] for v in voters.values())
    assert targets["mesh-idle-cpu"]["value"] == max(v["total"]["cpu_pct"] for v in voters.values())


def test_report_and_plots(quick):
    docs = quick["docs"]
    text = (docs / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "crossnet bench all --quick" in text
    assert "## Targets" in text and "## Data plane" in text and "## Control plane" in text
    assert "## Datapaths: `datapath: ebpf` vs `datapath: kernel`" in text
    assert "data plane lab" in text  # peak RSS of the data plane's crossnet processes
    assert "no hand-built baseline" not in text and "within the run-to-run noise" not in text
    for png in ("bench-throughput.png", "bench-attach.png", "bench-peers.png", "bench-cni.png"):
        data = (docs / "img" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"img/{png}" in text
    # re-rendering from the saved results works without running anything
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "report", "-i", str(docs / "benchmarks.json"),
                           "--docs", str(docs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (docs / "benchmarks.md").read_text().startswith("# Benchmarks")
