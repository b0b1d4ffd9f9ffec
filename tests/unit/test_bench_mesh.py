"""`bench mesh` targets and report: every voter is measured, each figure is the worst voter's."""

from __future__ import annotations

from crossnet.bench.meshbench import footprints
from crossnet.bench.report import render
from crossnet.bench.targets import evaluate


def _fp(etcd_mb: float, etcd_cpu: float, launch_mb: float, launch_cpu: float) -> dict:
    return {"etcd": {"rss_mb": etcd_mb, "cpu_pct": etcd_cpu}, "launch": {"rss_mb": launch_mb, "cpu_pct": launch_cpu},
            "total": {"rss_mb": round(etcd_mb + launch_mb, 1), "cpu_pct": round(etcd_cpu + launch_cpu, 2)},
            "idle_s": 60.0}


def _mesh(voters: dict) -> dict:
    busiest = max(voters, key=lambda n: voters[n]["total"]["cpu_pct"])
    return {"control": {"mesh": {"status": "ok", "hosts": 5, "joins": 10, "backend": "vxlan",
                                 "join_s": {"n": 10, "p50": 2.0, "p95": 2.5, "max": 2.6},
                                 "voters": voters, "voter": {**voters[busiest], "host": busiest},
                                 "client": {"launch": {"rss_mb": 46.0, "cpu_pct": 0.15}, "total": {"rss_mb": 46.0,
                                            "cpu_pct": 0.15}, "idle_s": 10.0}}}}


def test_the_worst_voter_decides_each_mesh_target():
    res = _mesh({"h1": _fp(34.0, 0.6, 46.0, 0.15), "h2": _fp(33.0, 0.9, 47.5, 0.2), "h3": _fp(36.0, 0.5, 45.0, 0.1)})
    t = {t["id"]: t for t in evaluate(res)}
    assert t["mesh-idle-cpu"]["value"] == 1.1 and t["mesh-idle-cpu"]["met"] is False
    assert t["mesh-idle-cpu"]["note"].startswith("h2 (the busiest of 3)")
    assert t["mesh-rss"]["value"] == 81.0 and t["mesh-rss"]["met"] is False  # h3: 36 + 45
    assert t["mesh-rss"]["note"].startswith("h3 (the largest of 3): etcd 36.0 MB, launch 45.0 MB")
    text = render(res, {})
    for row in ("| voter h1 | etcd | 34.0 | 0.6 |", "| voter h3 | launch | 45.0 | 0.1 |", "| client | launch | 46.0 | 0.15 |"):
        assert row in text, row


def test_a_mesh_all_within_its_budget_meets_both():
    res = _mesh({"h1": _fp(34.0, 0.6, 44.0, 0.15), "h2": _fp(33.0, 0.7, 45.0, 0.2)})
    t = {t["id"]: t for t in evaluate(res)}
    assert t["mesh-idle-cpu"]["met"] is True and t["mesh-rss"]["met"] is True and t["mesh-rss"]["value"] == 78.0


def test_a_result_from_before_every_voter_was_measured_still_evaluates():
    res = _mesh({"h1": _fp(37.6, 1.2, 48.4, 0.2)})
    del res["control"]["mesh"]["voters"]
    t = {t["id"]: t for t in evaluate(res)}
    assert t["mesh-rss"]["value"] == 86.0 and t["mesh-idle-cpu"]["value"] == 1.4


def test_footprints_measures_real_processes_over_one_window():
    import os

    out = footprints({"me": {"self": os.getpid()}, "again": {"self": os.getpid()}}, 0.05)
    assert set(out) == {"me", "again"}
    for fp in out.values():
        assert fp["self"]["rss_mb"] > 1 and fp["total"]["rss_mb"] == fp["self"]["rss_mb"] and fp["idle_s"] >= 0.0


def test_join_probes_go_out_at_once_and_report_the_hosts_that_got_a_reply(monkeypatch):
    """A join sample ends when every existing host reached the new container: the hosts not
    there yet are probed together, each ping waiting PROBE_WAIT (not one after the other
    with a 1 s timeout each, which made a sample up to a second late)."""
    from crossnet.bench import meshbench

    events: list[tuple[str, str]] = []

    class FakePing:
        def __init__(self, argv, **_kw):
            self.ns = argv[3]
            assert argv[:3] == ["ip", "netns", "exec"] and argv[4:] == ["ping", "-c1", "-W", "0.2", "-q", "10.32.6.2"]
            events.append(("start", self.ns))

        def wait(self):
            events.append(("wait", self.ns))
            return 0 if self.ns in ("ns-h1", "ns-h3") else 1

    monkeypatch.setattr(meshbench.subprocess, "Popen", FakePing)
    got = meshbench.reached({"h1": "ns-h1", "h2": "ns-h2", "h3": "ns-h3"}, "10.32.6.2")
    assert got == {"h1", "h3"}
    assert [e for e, _ in events] == ["start"] * 3 + ["wait"] * 3  # all started before any is waited for
