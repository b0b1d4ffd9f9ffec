"""`crossnet bench all --quick`: every figure is produced and sane (positive, ratios
computed from the same run's baselines). Targets are reported, never asserted here.

One run of the quick suite (< 3 min) is shared by the tests of this module."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

QUICK_TIMEOUT = 420  # the quick suite targets < 3 min; allow for a busy machine


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


def test_dataplane_figures_are_sane(quick):
    dp = quick["res"]["dataplane"]
    rows = dp["rows"]
    names = {r["name"] for r in rows}
    # every kernel backend and the hand-built bridge baseline always run
    for name in ("bridge", "host-gw", "vxlan", "manual-bridge-routes"):
        assert name in names
    ok = [r for r in rows if r["status"] == "ok"]
    assert {"bridge", "host-gw", "vxlan", "manual-bridge-routes"} <= {r["name"] for r in ok}, \
        [(r["name"], r["status"], r.get("reason")) for r in rows]
    for r in rows:
        assert r["status"] in ("ok", "skipped", "failed")
        if r["status"] != "ok":
            assert r.get("reason"), r  # "skipped: <reason>" / "failed: <reason>"
            continue
        for side in ("underlay", "overlay"):
            g = r[side]["gbps"]
            assert g["n"] == dp["params"]["repeats"]
            assert all(_pos(x) for x in g["samples"])
            assert g["min"] <= g["median"] <= g["max"]
            rtt = r[side]["rtt"]
            assert _pos(rtt["p50_ms"]) and rtt["p50_ms"] <= rtt["p99_ms"]
        # the ratio is computed from this row's own underlay, measured in the same lab
        assert r["ratio"] == pytest.approx(r["overlay"]["gbps"]["median"] / r["underlay"]["gbps"]["median"], abs=1e-3)
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert _pos(r["container_mtu"])
    hg = next(r for r in ok if r["name"] == "host-gw")
    man = next(r for r in ok if r["name"] == "manual-bridge-routes")
    assert hg["vs_manual"]["ratio"] == pytest.approx(
        hg["overlay"]["gbps"]["median"] / man["overlay"]["gbps"]["median"], abs=1e-3)
    vx = next(r for r in ok if r["name"] == "vxlan")
    assert vx["mtu"] == 1500 and vx["container_mtu"] == 1450


def test_control_figures_are_sane(quick):
    cp = quick["res"]["control"]
    at = cp["attach"]
    assert at["status"] == "ok", at
    ip = at["inprocess"]
    assert ip["attach_ms"]["n"] >= 200 and ip["distinct_addresses"] == ip["attach_ms"]["n"]
    assert all(_pos(x) for x in ip["attach_ms"]["samples"])
    assert ip["attach_ms"]["p50"] <= ip["attach_ms"]["p99"]
    assert ip["detach_ms"]["n"] == ip["attach_ms"]["n"]
    assert at["cli"]["attach_ms"]["n"] >= 1 and _pos(at["cli"]["attach_ms"]["p50"])
    assert not ip["errors"] and not at["cli"]["errors"]

    pe = cp["peers"]
    assert pe["status"] == "ok", pe
    sizes = {r["peers"] for r in pe["rows"] if r["status"] == "ok"}
    assert {10, 100, 1000} <= sizes, pe["rows"]
    for r in pe["rows"]:
        assert _pos(r["apply_wall_s"]) and _pos(r["noop_wall_s"])
        assert r["apply_internal_s"] <= r["apply_wall_s"]
        assert r["noop_changed"] is False  # the second apply is a no-op
        assert r["changes"] > r["peers"]  # every peer programmed

    cn = cp["cni"]
    if cn["status"] == "ok":
        for k in ("crossnet-cni", "bridge+host-local"):
            assert cn[k]["add_ms"]["n"] >= 1 and _pos(cn[k]["add_ms"]["p50"]) and not cn[k]["errors"]
        assert cn["add_ratio"] == pytest.approx(
            cn["crossnet-cni"]["add_ms"]["median"] / cn["bridge+host-local"]["add_ms"]["median"], abs=1e-3)
    else:
        assert cn["status"] == "skipped" and cn["reason"]
    po = cp["podman"]
    if po["status"] == "ok":
        assert all(_pos(v["median"]) for v in po["run_s"].values())
        assert set(po["added_s"]) == {"crossnet-cni", "bridge+host-local"}
    else:
        assert po["status"] in ("skipped", "failed") and po["reason"]


def test_memory_and_targets(quick):
    res = quick["res"]
    assert res["memory"] and all(_pos(m["peak_rss_mb"]) for m in res["memory"])
    ids = {t["id"] for t in res["targets"]}
    assert {"vxlan-1500", "host-gw-1500", "bridge-1500", "ovs-gre-1500", "attach-p50", "peers-1000", "cni-add"} <= ids
    for t in res["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is False:
            assert t["shortfall"]
        if t["met"] is not None:
            assert isinstance(t["value"], (int, float))


def test_report_and_plots(quick):
    docs = quick["docs"]
    text = (docs / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "crossnet bench all --quick" in text
    assert "## Targets" in text and "## Data plane" in text and "## Control plane" in text
    for png in ("bench-throughput.png", "bench-attach.png", "bench-peers.png"):
        data = (docs / "img" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"img/{png}" in text
    # re-rendering from the saved results works without running anything
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "report", "-i", str(docs / "benchmarks.json"),
                           "--docs", str(docs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (docs / "benchmarks.md").read_text().startswith("# Benchmarks")
