"""The interleaved-rounds statistics of `crossnet bench wireguard` / `bench transport`
(crossnet.bench.util: round_ratios, pair_ratios, median_ratio), their targets and report sections, on made-up results."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from crossnet.bench.report import render
from crossnet.bench.targets import evaluate
from crossnet.bench.util import median_ratio, pair_ratios, round_ratios

speeds = st.floats(min_value=0.01, max_value=100, allow_nan=False)


def _rounds(true_ratio: float, base: list[float], penalty: float) -> tuple[list[float], list[float]]:
    """Runs of a (= true_ratio × b) and b; in even rounds a runs first, in odd rounds b
    does, and whichever runs first loses `penalty` (what this machine shows)."""
    a, b = [], []
    for i, x in enumerate(base):
        first_a = i % 2 == 0
        a.append(true_ratio * x * (penalty if first_a else 1.0))
        b.append(x * (1.0 if first_a else penalty))
    return a, b


@given(st.floats(min_value=0.2, max_value=5), st.lists(speeds, min_size=2, max_size=12),
       st.floats(min_value=0.5, max_value=1.0))
def test_pairs_of_rounds_cancel_the_order_effect(true_ratio, base, penalty):
    a, b = _rounds(true_ratio, base, penalty)
    pairs = pair_ratios(a, b)
    assert len(pairs) == len(base) // 2
    assert all(abs(p - true_ratio) <= 1e-6 * true_ratio for p in pairs)
    assert abs(median_ratio(a, b) - round(true_ratio, 3)) <= 0.0011


def test_an_odd_count_of_single_rounds_is_biased_by_the_order():
    a, b = _rounds(1.0, [1.0] * 7, 0.8)  # 4 rounds a first, 3 b first
    single = sorted(round_ratios(a, b))[3]
    assert single == 0.8  # the plain median of rounds would call equal layouts 0.8
    assert median_ratio(a, b) == 1.0


def test_one_round_is_its_ratio_and_none_is_none():
    assert median_ratio([2.0], [1.0]) == 2.0
    assert median_ratio([], []) is None
    assert round_ratios([1.0, 1.0], [0.0, 2.0]) == [0.5]  # a failed run (0) is no ratio


def _g(samples):
    xs = sorted(samples)
    return {"median": xs[len(xs) // 2], "min": xs[0], "max": xs[-1], "samples": samples}


WG = {
    "suite": "wireguard", "status": "ok", "params": {"repeats": 2, "duration_s": 3.0},
    "rows": [{"name": n, "container_mtu": m, "gbps": _g(s), "ratio": r, "round_ratio": r,
              "rtt": {"p50_ms": 0.5, "p99_ms": 1.0}}
             for n, m, s, r in (("wireguard", 1420, [0.2, 0.3], 0.03), ("manual-wireguard", 1420, [0.25, 0.24], 0.03),
                                ("vxlan", 1450, [5.0, 6.0], 0.7), ("underlay", 1500, [8.0, 9.0], 1.0))],
    "vs_manual": {"median_round_ratio": 0.99, "round_ratios": [0.8, 1.25], "pair_ratios": [1.0],
                  "ratio_of_medians": 1.1},
    "vs_unencrypted": 0.04, "steps": ["[h3] wireguard-go wg0"],
}


def test_wireguard_target_and_section():
    res = {"wireguard": WG}
    t = next(t for t in evaluate(res) if t["id"] == "wireguard-manual")
    assert t["value"] == 0.99 and t["met"] is False and t["goal"] == 1.0
    assert "pairs of rounds 1.0–1.0, single rounds 0.8–1.25" in t["note"] and "manual-wireguard" in t["also"]
    text = render(res, {})
    assert "## WireGuard: encrypted vs unencrypted vs underlay" in text
    for label in ("crossnet wireguard (encrypted)", "hand-built WireGuard (encrypted)", "crossnet vxlan (unencrypted)",
                  "underlay (host → host)", "[h3] wireguard-go wg0", "median **0.99**"):
        assert label in text, label
    assert not any(t["id"] == "wireguard-manual" for t in evaluate({}))  # only where the suite ran


def test_transport_targets_use_the_rounds():
    tr = {"status": "ok", "fallback_s": {"max": 3.5, "median": 3.4, "samples": [3.4, 3.5]},
          "recovery_s": {"samples": [4.0]}, "params": {"repeats": 2, "duration_s": 3.0},
          "rows": [{"name": "auto (vxlan picked)", "overlay": {"gbps": _g([2.0, 2.2])}, "ratio": 0.5}],
          "underlay": {"gbps": _g([4.0, 4.4])},
          "rounds": {"vxlan": {"median_round_ratio": 0.98, "round_ratios": [0.9, 1.07], "pair_ratios": [0.98],
                               "ratio_of_medians": 0.95}},
          "vs_alone": {"vxlan": 0.98}}
    t = {t["id"]: t for t in evaluate({"transport": tr})}
    assert t["auto-vxlan"]["value"] == 0.98 and t["auto-vxlan"]["met"] is True
    assert "pairs of interleaved rounds" in t["auto-vxlan"]["what"] and "single rounds 0.9–1.07" in t["auto-vxlan"]["note"]
    assert t["auto-fallback"]["met"] is True
    text = render({"transport": tr}, {})
    assert "## Backend auto: fallback and per-peer throughput" in text and "median **0.98**" in text


def test_report_add_merges_a_suite_with_its_own_command(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"command": "crossnet bench all", "started": "then"}))
    add = tmp_path / "wg.json"
    add.write_text(json.dumps({"command": "crossnet bench wireguard --repeats 2", "started": "now",
                               "machine": {"loadavg": [1.0, 1.0, 1.0]}, "wireguard": WG}))
    docs = tmp_path / "docs"
    proc = subprocess.run([sys.executable, "-m", "crossnet", "bench", "report", "-i", str(base), "--add", str(add),
                           "--docs", str(docs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (docs / "benchmarks.md").read_text()
    assert "crossnet bench wireguard --repeats 2" in text and "crossnet bench all" in text
    saved = json.loads((docs / "benchmarks.json").read_text())
    assert saved["wireguard"]["command"] == "crossnet bench wireguard --repeats 2"
    bad = subprocess.run([sys.executable, "-m", "crossnet", "bench", "report", "-i", str(base), "--add",
                          str(tmp_path / "missing.json"), "--docs", str(docs)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("crossnet: error: --add:")



def test_a_failed_baseline_run_drops_its_pair_and_never_shifts_the_others():
    """A round whose baseline run failed (0) takes its pair with it; the other pairs stay
    one round of each order. Before, the failed round was dropped from the list of round
    ratios first: with round 3 failed, rounds 2 and 4 (both "a first") made a pair, biased
    by the order (1.6 instead of 2.0)."""
    a, b = _rounds(2.0, [1.0] * 6, 0.8)
    b[2] = 0.0
    assert pair_ratios(a, b) == [2.0, 2.0]
    a, b = _rounds(2.0, [1.0] * 6, 0.8)
    b[3] = 0.0
    assert pair_ratios(a, b) == [2.0, 2.0]
