"""`crossnet bench networks`: the crossover of two host pairs taking turns with a second,
isolated network. One short run (4 rounds of 1 s, one block): the roles follow Q P P Q,
the bench checked the isolation tables before each round (it fails otherwise), the figure
is computed from the rounds' own ratios, and the lab is gone afterwards. The figure itself
is a benchmark result (docs/benchmarks.md), never asserted here. Once with each datapath:
with `--datapath ebpf` the programs' counters show the fast path ran on every host."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["kernel", "ebpf"])
def result(request):
    for tool in ("iperf3", "nft"):
        if not shutil.which(tool):
            pytest.skip(f"bench networks needs {tool}")
    if request.param == "ebpf":
        from crossnet import ebpf

        if ebpf.problem():
            pytest.skip(f"datapath ebpf: {ebpf.problem()}")
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "networks", "--rounds", "4", "--duration", "1",
                           "--datapath", request.param, "-o", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), request.param


def test_rounds_follow_the_crossover_and_give_the_figure(result):
    res, datapath = result
    nw = res["networks"]
    assert nw["status"] == "ok" and nw["method"] == "crossover" and nw["datapath"] == datapath
    assert [r["isolated"] for r in nw["per_round"]] == ["Q", "P", "P", "Q"]
    for r in nw["per_round"]:
        assert set(r["gbps"]) == {"P", "Q"} and all(g > 0 for g in r["gbps"].values())
        plain = "P" if r["isolated"] == "Q" else "Q"
        assert r["ratio"] == pytest.approx(r["gbps"][r["isolated"]] / r["gbps"][plain], rel=1e-3)
    block = math.exp(sum(math.log(r["ratio"]) for r in nw["per_round"]) / 4)
    assert nw["blocks"] == [pytest.approx(block, rel=1e-3)]
    assert nw["isolation_ratio"] == pytest.approx(block, abs=1e-3)
    tid = "networks-isolation" if datapath == "kernel" else "networks-isolation-ebpf"
    target = next(t for t in res["targets"] if t["id"] == tid)
    assert target["value"] == nw["isolation_ratio"] and "over 1 blocks" in target["note"]
    if datapath == "ebpf":
        # the fast path ran on all four hosts: the programs redirected the rounds' packets
        dp = nw["datapath_status"]
        assert sorted(dp) == ["h1", "h2", "h3", "h4"]
        assert all(d["datapath"] == "ebpf" and d["counters"]["redirect"] > 1000 for d in dp.values()), dp
    else:
        assert "datapath_status" not in nw


def test_the_lab_is_removed(result):
    from crossnet.lab import manager, netns

    res, _datapath = result
    created = res["labs_created"]
    assert len(created) == 1 and created[0].startswith("b")
    assert not set(created) & set(manager.lab_names())
    assert [n for n in netns.list_netns() if n.split("-")[0] in created] == []


def test_rounds_must_be_whole_blocks():
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "networks", "--rounds", "6"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--rounds" in proc.stderr and "multiple of 4" in proc.stderr
