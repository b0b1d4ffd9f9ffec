"""`crossnet bench dataplane`: each backend and its hand-built twin measured in the same
interleaved rounds (crossnet.bench.dataplane: plan, round_order, paired,
measure_with_twin, twin_comparison), the targets `<backend>-twin-<mtu>` / `ovs-gre-<mtu>`
and the report, with fake traffic and fake labs (no namespace, no iperf3)."""

from __future__ import annotations

import contextlib
import itertools
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.bench import dataplane, manual
from crossnet.bench.report import render, why
from crossnet.bench.targets import evaluate
from crossnet.bench.util import RunContext, summary

# ---------------------------------------------------------------- what a run measures


def test_backends_x_runs_x_and_its_twin_only():
    assert dataplane.plan(["host-gw"]) == [("host-gw", "manual-bridge-routes")]
    assert dataplane.plan(["vxlan", "bridge"]) == [("bridge", "manual-bridge-nic"), ("vxlan", "manual-vxlan")]
    # a backend without a twin runs alone; --no-manual: every backend alone
    assert dataplane.plan(["ovs-vxlan"]) == [("ovs-vxlan", None)]
    assert dataplane.plan(["host-gw", "vxlan"], manual_layouts=False) == [("host-gw", None), ("vxlan", None)]
    # wireguard's twin only when wireguard is asked for
    assert dataplane.plan(["wireguard"]) == [("wireguard", "manual-wireguard")]
    assert not any(t == "manual-wireguard" for _b, t in dataplane.plan(["host-gw", "bridge", "vxlan", "ovs-gre"]))


def test_diagnostic_layouts_only_with_the_twin_they_vary():
    assert dataplane.plan(["ovs-gre"], diagnostics=True) == [("ovs-gre", "manual-ovs-gre"),
                                                            (None, "manual-ovs-gre-via")]
    assert dataplane.plan(["ovs-gre"]) == [("ovs-gre", "manual-ovs-gre")]  # quick runs: no diagnostics
    assert dataplane.plan(["host-gw"], diagnostics=True) == [("host-gw", "manual-bridge-routes")]
    assert dataplane.plan(["ovs-gre"], manual_layouts=False, diagnostics=True) == [("ovs-gre", None)]


def test_every_non_diagnostic_layout_is_some_backends_twin():
    from crossnet.backends import backend_names

    twins = {t for _b, t in dataplane.plan(backend_names()) if t}
    assert twins == {n for n, cls in manual.LAYOUTS.items() if not cls.diagnostic}


# ---------------------------------------------------------------- rounds, with fake traffic


class FakeTraffic:
    """iperf3 on a fake machine: each path has a true speed; every run is slowed by the
    load of its moment (drifting run by run) and by a factor of its position in the
    round (`position`: this machine measures the first run of a round lower). Records
    the order of the runs."""

    def __init__(self, speeds: dict[str, float], load, position=(1.0, 1.0, 1.0)):
        self.speeds, self.load, self.position = speeds, load, position
        self.runs: list[str] = []
        self.servers: list[str] = []

    def install(self, monkeypatch) -> FakeTraffic:
        t = dataplane.traffic
        fake = self

        class Server:
            def __init__(self, netns, cpu=None):
                self.netns = netns

            def start(self):
                fake.servers.append(f"start {self.netns}")

            def stop(self):
                fake.servers.append(f"stop {self.netns}")

        monkeypatch.setattr(t, "wait_reachable", lambda ns, addr, timeout=10.0: 0.0)
        monkeypatch.setattr(t, "IperfServer", Server)
        monkeypatch.setattr(t, "ping_rtts", lambda ns, addr, count, **kw: [0.05] * count)
        monkeypatch.setattr(t, "iperf_gbps", self.iperf)
        return self

    def iperf(self, client_ns: str, addr: str, duration: float, cpu: int | None = None):
        k = len(self.runs)
        self.runs.append(client_ns)
        return self.speeds[client_ns] * self.load(k) * self.position[k % len(self.position)], 0


def _paths(*labels: str) -> dict[str, tuple[str, str, str]]:
    return {lb: (lb, f"{lb}-server", "10.0.0.2") for lb in labels}


def test_round_order_alternates():
    labels = ["crossnet", "twin", "underlay"]
    assert dataplane.round_order(labels, 0) == labels
    assert dataplane.round_order(labels, 1) == ["underlay", "twin", "crossnet"]
    assert dataplane.round_order(labels, 4) == labels
    assert labels == ["crossnet", "twin", "underlay"]  # not reordered in place


def test_paired_runs_every_path_once_per_round_in_alternating_order(monkeypatch):
    fake = FakeTraffic({"crossnet": 10.0, "twin": 8.0, "underlay": 20.0}, load=lambda k: 1.0).install(monkeypatch)
    res = dataplane.paired(_paths("crossnet", "twin", "underlay"), 4, 1.0, 5)
    assert fake.runs == ["crossnet", "twin", "underlay", "underlay", "twin", "crossnet"] * 2
    assert fake.servers[:3] == ["start crossnet-server", "start twin-server", "start underlay-server"]
    assert fake.servers[3:] == ["stop crossnet-server", "stop twin-server", "stop underlay-server"]
    for label, speed in fake.speeds.items():
        assert res[label]["gbps"]["samples"] == [speed] * 4
        assert res[label]["retransmits"] == [0] * 4 and res[label]["rtt"]["n"] == 5


def _ok_row(name: str, kind: str, samples: list[float], under: list[float]) -> dict:
    rtt = {"p50_ms": 0.05, "p99_ms": 0.1}
    return dataplane._finish({"name": name, "kind": kind, "mtu": 1500, "status": "ok",
                              "overlay": {"gbps": summary(samples), "rtt": rtt},
                              "underlay": {"gbps": summary(under), "rtt": rtt}})


position = st.floats(min_value=0.6, max_value=1.0)


@given(st.floats(min_value=0.5, max_value=1.5), st.integers(min_value=1, max_value=5),
       st.tuples(position, position, position), st.floats(min_value=0.0, max_value=0.08))
def test_the_figure_cancels_drift_and_the_order_effect(true_ratio, pairs, positions, drift):
    """Load drifting run by run and a cost of each position in a round: crossnet ÷ twin
    from the same rounds (crossnet and twin at the two ends, as measure_with_twin orders
    them) still comes out at the true ratio (a real `paired`, fake iperf3)."""
    mp = pytest.MonkeyPatch()
    try:
        fake = FakeTraffic({"crossnet": 10.0 * true_ratio, "twin": 10.0, "underlay": 20.0},
                           load=lambda k: 1.0 / (1.0 + drift * k), position=positions).install(mp)
        res = dataplane.paired(_paths("crossnet", "underlay", "twin"), 2 * pairs, 1.0, 5)
    finally:
        mp.undo()
    assert len(fake.runs) == 6 * pairs
    row = _ok_row("host-gw", "crossnet", res["crossnet"]["gbps"]["samples"], res["underlay"]["gbps"]["samples"])
    twin = _ok_row("manual-bridge-routes", "manual", res["twin"]["gbps"]["samples"], res["underlay"]["gbps"]["samples"])
    vm = dataplane.twin_comparison(row, twin)
    assert vm["baseline"] == "manual-bridge-routes" and vm["interleaved"] is True
    assert len(vm["round_ratios"]) == 2 * pairs and len(vm["pair_ratios"]) == pairs
    # within the load drift between crossnet's and the twin's runs (two runs apart in a round)
    assert vm["median_round_ratio"] == pytest.approx(true_ratio, rel=2 * drift + 2e-3)
    assert min(vm["pair_ratios"]) - 1e-3 <= vm["median_round_ratio"] <= max(vm["pair_ratios"]) + 1e-3
    assert vm["ratio"] == vm["ratio_of_medians"]


def test_twin_comparison_needs_both_rows_ok():
    row = _ok_row("vxlan", "crossnet", [9.0, 10.0], [20.0, 20.0])
    twin = _ok_row("manual-vxlan", "manual", [10.0, 10.0], [20.0, 20.0])
    vm = dataplane.twin_comparison(row, twin)
    assert vm["round_ratios"] == [0.9, 1.0] and vm["pair_ratios"] == [0.949] and vm["median_round_ratio"] == 0.949
    assert vm["normalised_ratio"] == pytest.approx(row["ratio"] / twin["ratio"], abs=2e-3)
    assert dataplane.twin_comparison(row, {**twin, "status": "failed"}) is None
    assert dataplane.twin_comparison({**row, "status": "skipped"}, twin) is None


# ---------------------------------------------------------------- measure_with_twin, with fake labs


class FakeLayout(manual.Layout):
    name = "manual-bridge-routes"
    description = "fake twin"
    compares_with = "host-gw"
    fail: str | None = None

    def build(self, mtu):
        self.lab.events.append(f"build {self.lab.name}")
        if self.fail:
            raise RuntimeError(self.fail)
        return manual.Built("twin", "twin-server", "10.40.2.2", mtu, ["ip link add br0 type bridge"])

    def teardown(self):
        self.lab.events.append(f"teardown {self.lab.name}")


@pytest.fixture
def fake_labs(monkeypatch):
    events: list[str] = []
    names = itertools.count(1)

    @contextlib.contextmanager
    def bench_lab(opts, apply=True, log=None):
        name = f"lab{next(names)}"
        hosts = [SimpleNamespace(name=f"h{i}", netns=f"{name}-h{i}", address=f"192.168.0.{i}")
                 for i in range(1, opts["hosts"] + 1)]
        lab = SimpleNamespace(name=name, hosts=hosts, events=events, opts=opts)
        events.append(f"up {name} {opts['hosts']} hosts")
        try:
            yield lab
        finally:
            events.append(f"down {name}")

    def set_up(rc, lab, backend, mtu, row):
        events.append(f"crossnet {backend} on {lab.name}")
        row["container_mtu"] = mtu
        return "crossnet", "crossnet-server", "10.1.2.2"

    monkeypatch.setattr(dataplane, "bench_lab", bench_lab)
    monkeypatch.setattr(dataplane, "_set_up_crossnet", set_up)
    monkeypatch.setattr(dataplane, "_note_long_lived", lambda *a: None)
    monkeypatch.setattr(dataplane, "backend_unavailable", lambda name: None)
    monkeypatch.setitem(manual.LAYOUTS, "manual-bridge-routes", FakeLayout)
    monkeypatch.setattr(FakeLayout, "fail", None)
    return events


def test_measure_with_twin_both_labs_up_the_same_rounds(monkeypatch, fake_labs):
    fake = FakeTraffic({"crossnet": 9.0, "twin": 10.0, "lab2-h3": 20.0}, load=lambda k: 1.0).install(monkeypatch)
    twin, row = dataplane.measure_with_twin(RunContext(), "host-gw", "manual-bridge-routes", 1500, 2, 1.0, 5)
    # the twin's lab (2 hosts) and crossnet's (4 hosts) up together; the layout torn down before the labs go
    assert fake_labs == ["up lab1 2 hosts", "up lab2 4 hosts", "crossnet host-gw on lab2", "build lab1",
                         "down lab2", "teardown lab1", "down lab1"]
    # crossnet and twin at the ends of a round, the underlay (h3 → h4 of crossnet's lab) between
    assert fake.runs == ["crossnet", "lab2-h3", "twin", "twin", "lab2-h3", "crossnet"]
    assert (twin["name"], twin["kind"], row["name"], row["kind"]) == ("manual-bridge-routes", "manual", "host-gw",
                                                                      "crossnet")
    assert twin["status"] == row["status"] == "ok"
    assert twin["underlay"] == row["underlay"]  # one underlay, measured in the same rounds
    assert twin["steps"] == ["ip link add br0 type bridge"] and twin["container_mtu"] == 1500
    assert row["ratio"] == 0.45 and twin["ratio"] == 0.5
    assert row["vs_manual"]["median_round_ratio"] == 0.9 and row["vs_manual"]["baseline"] == "manual-bridge-routes"
    assert "vs_manual" not in twin


def test_measure_with_twin_failure_fails_both_rows_and_cleans_up(monkeypatch, fake_labs):
    FakeTraffic({}, load=lambda k: 1.0).install(monkeypatch)
    monkeypatch.setattr(FakeLayout, "fail", "ip link add br0: File exists")
    twin, row = dataplane.measure_with_twin(RunContext(), "host-gw", "manual-bridge-routes", 9000, 2, 1.0, 5)
    assert twin["status"] == row["status"] == "failed"
    assert row["reason"] == "ip link add br0: File exists" and "vs_manual" not in row
    assert fake_labs[-3:] == ["down lab2", "teardown lab1", "down lab1"]


def test_measure_with_twin_unavailable_backend_skips_both(monkeypatch, fake_labs):
    monkeypatch.setattr(dataplane, "backend_unavailable", lambda name: "openvswitch-switch not installed")
    twin, row = dataplane.measure_with_twin(RunContext(), "host-gw", "manual-bridge-routes", 1500, 2, 1.0, 5)
    assert row == {**dataplane._crossnet_row("host-gw", 1500), "status": "skipped",
                   "reason": "openvswitch-switch not installed"}
    assert twin["status"] == "skipped" and twin["reason"] == "its backend host-gw: openvswitch-switch not installed"
    assert fake_labs == []  # no lab built


# ---------------------------------------------------------------- targets and report


def _pair(name: str, twin: str, mtu: int, crossnet: list[float], hand: list[float], under: list[float]):
    t = _ok_row(twin, "manual", hand, under)
    r = _ok_row(name, "crossnet", crossnet, under)
    for x in (t, r):
        x.update(mtu=mtu, container_mtu=mtu)
        for side in ("overlay", "underlay"):
            x[side]["retransmits"] = [0] * len(under)
    t.update(compares_with=name, steps=["ip link add br0 type bridge"], description="by hand")
    r["vs_manual"] = dataplane.twin_comparison(r, t)
    return [t, r]


def _dp(*rows) -> dict:
    return {"dataplane": {"params": {"mtus": [1500], "repeats": 4, "duration_s": 1.0, "ping_count": 5,
                                     "twins_interleaved": True}, "rows": [x for pair in rows for x in pair]}}


def test_twin_and_ovs_gre_targets_use_the_median_round_ratio():
    res = _dp(_pair("host-gw", "manual-bridge-routes", 1500, [9.0, 9.6, 9.2, 9.4], [10.0] * 4, [20.0] * 4),
              _pair("vxlan", "manual-vxlan", 1500, [10.0, 10.4, 9.8, 10.0], [10.0] * 4, [20.0] * 4),
              _pair("ovs-gre", "manual-ovs-gre", 1500, [1.0, 1.1, 1.0, 1.0], [1.0] * 4, [20.0] * 4))
    t = {x["id"]: x for x in evaluate(res)}
    hg = res["dataplane"]["rows"][1]["vs_manual"]
    # rounds 0.9, 0.96, 0.92, 0.94: pairs √(0.9 × 0.96) = 0.9295, √(0.92 × 0.94) = 0.9299
    assert t["host-gw-twin-1500"]["value"] == hg["median_round_ratio"] == 0.93 and t["host-gw-twin-1500"]["met"] is False
    assert "pairs of rounds 0.93–0.93" in t["host-gw-twin-1500"]["note"]
    assert "single rounds 0.9–0.96" in t["host-gw-twin-1500"]["note"]
    assert "manual-bridge-routes" in t["host-gw-twin-1500"]["also"]
    assert "interleaved rounds" in t["host-gw-twin-1500"]["what"]
    assert (t["vxlan-twin-1500"]["value"], t["vxlan-twin-1500"]["met"]) == (1.005, True)  # pairs 1.0198, 0.98995
    assert (t["ovs-gre-1500"]["value"], t["ovs-gre-1500"]["met"]) == (1.024, True)  # pairs 1.0488, 1.0
    assert t["bridge-twin-1500"]["status"] == "not measured in this run"


def test_twin_targets_without_an_interleaved_figure_say_why():
    def row(name, mtu, vs=None, status="ok"):
        r = {"name": name, "kind": "crossnet", "mtu": mtu, "status": status, "ratio": 0.8}
        if vs is not None:
            r["vs_manual"] = vs
        return r

    older = {"baseline": "manual-vxlan", "ratio": 0.9, "normalised_ratio": 1.01}  # two labs, one after the other
    dp = {"rows": [row("vxlan", 1500, older), row("host-gw", 9000),
                   {**row("bridge", 1500), "status": "failed", "reason": "boom"}]}
    t = {t["id"]: t for t in evaluate({"dataplane": dp}) if "-twin-" in t["id"]}
    assert sorted(t) == [f"{n}-twin-{m}" for n in ("bridge", "host-gw", "vxlan") for m in (1500, 9000)]
    assert t["vxlan-twin-1500"]["value"] is None and t["vxlan-twin-1500"]["met"] is None
    assert t["vxlan-twin-1500"]["status"].startswith("not interleaved") and "1.01" in t["vxlan-twin-1500"]["status"]
    assert t["host-gw-twin-9000"]["status"] == "no hand-built twin measured"
    assert t["bridge-twin-1500"]["status"] == "failed: boom"
    assert t["vxlan-twin-9000"]["status"] == "not measured in this run"
    assert "flannel-style" in why("vxlan-twin-1500", {"dataplane": dp}, 0.97)
    assert "bridge netfilter off" in why("host-gw-twin-9000", {"dataplane": dp}, 0.97)


def test_report_shows_the_twin_figure_and_the_method():
    res = _dp(_pair("host-gw", "manual-bridge-routes", 1500, [9.0, 9.6, 9.2, 9.4], [10.0] * 4, [20.0] * 4))
    text = render(res, {})
    assert "0.93 × twin manual-bridge-routes (pairs 0.93–0.93)" in text
    assert "every round runs one iperf3 run on crossnet's path, the underlay and the twin's" in text
    # the miss of host-gw ÷ underlay is explained with the interleaved figure
    explained = why("host-gw-1500", res, 0.97)
    assert "0.930 × the hand-built layout, median over pairs of interleaved rounds" in explained
    assert "in the same rounds, on the same underlay" in explained
