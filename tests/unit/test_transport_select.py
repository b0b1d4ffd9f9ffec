"""The per-peer transport choice of backend auto (crossnet.transport.select): candidates
from the facts, and the switching state machine driven by a fake clock and fake probe
results (unit + hypothesis property tests)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.transport.select import TRANSPORTS, Selector, Timing, candidates

INTERVAL = 0.5  # s between probe rounds, as the prober does
TIMEOUT = 1.0  # an unanswered probe is recorded this long after it was sent


def test_candidates_follow_the_facts():
    assert candidates(on_link=True, has_key=True, encrypt=False) == ("direct", "vxlan", "wireguard")
    assert candidates(on_link=False, has_key=True, encrypt=False) == ("vxlan", "wireguard")
    assert candidates(on_link=True, has_key=False, encrypt=False) == ("direct", "vxlan")
    assert candidates(on_link=True, has_key=True, encrypt=True) == ("wireguard",)
    assert candidates(on_link=False, has_key=False, encrypt=True) == ("wireguard",)


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError):
        Selector((), 0.0)
    with pytest.raises(ValueError):
        Selector(("gre",), 0.0)


def run(sel: Selector, results, start: float, end: float, step: float = INTERVAL) -> list:
    """Feed `results(transport, t) -> bool` for every candidate every `step` s; the switches."""
    out, t = [], start
    while t <= end:
        for c in sel.candidates:
            sel.record(c, 0.001 if results(c, t) else None, t)
        sw = sel.decide(t)
        if sw is not None:
            out.append(sw)
        t = round(t + step, 6)
    return out


def test_falls_back_within_five_seconds_and_comes_back_after_the_hold():
    sel = Selector(("vxlan", "wireguard"), 0.0)
    blocked = (10.0, 30.0)  # vxlan unanswered in this window

    def results(c, t):
        return c == "wireguard" or not blocked[0] <= t < blocked[1]

    switches = run(sel, results, 0.0, 60.0)
    assert [(s.old, s.new) for s in switches] == [("vxlan", "wireguard"), ("wireguard", "vxlan")]
    down, up = switches
    # the first unanswered probe is known TIMEOUT after it was sent: switch <= 5 s after the filter
    assert down.at + TIMEOUT - blocked[0] <= 5.0
    assert up.at - blocked[1] >= Timing().up_after  # hysteresis: answered for up_after first
    assert sel.switches == 2 and sel.current == "vxlan" and sel.state() == "established"


def test_one_lost_probe_neither_moves_the_peer_nor_lets_a_flapping_one_back():
    sel = Selector(("direct", "vxlan", "wireguard"), 0.0)
    assert run(sel, lambda c, t: not (c == "direct" and t == 3.0), 0.0, 10.0) == []
    sel = Selector(("vxlan", "wireguard"), 0.0, current="wireguard")
    # vxlan answers, but loses one probe every 2 s: never up for 3 s, never taken back
    assert run(sel, lambda c, t: c == "wireguard" or t % 2.0 != 0.0, 0.0, 30.0) == []


def test_all_down_stays_put():
    sel = Selector(("vxlan", "wireguard"), 0.0)
    assert run(sel, lambda c, t: False, 0.0, 30.0) == []  # nothing answers: nowhere better to go
    assert sel.current == "vxlan" and sel.state() == "failing"


def test_encrypt_never_leaves_wireguard():
    sel = Selector(candidates(True, True, True), 0.0)
    assert run(sel, lambda c, t: t < 5 or t > 20, 0.0, 40.0) == []
    assert sel.current == "wireguard"


def test_to_json_names_the_transport_in_use():
    sel = Selector(("vxlan", "wireguard"), 0.0)
    assert sel.to_json()["state"] == "probing"
    sel.record("vxlan", 0.002, 0.5)
    j = sel.to_json()
    assert j["transport"] == "vxlan" and j["encrypted"] is False and j["state"] == "established"
    assert j["rtt_ms"] == 2.0 and j["candidates"]["wireguard"]["probes"] == 0


# ---- properties ---------------------------------------------------------------------------

cands_st = st.sampled_from([c for c in (
    ("direct", "vxlan", "wireguard"), ("vxlan", "wireguard"), ("direct", "vxlan"), ("vxlan",), ("wireguard",))])
# per transport: a list of (duration in rounds, answered?) segments
pattern_st = st.lists(st.tuples(st.integers(1, 20), st.booleans()), min_size=1, max_size=8)


def fixed(patterns: dict[str, list[tuple[int, bool]]]):
    def results(c, t):
        r = int(round(t / INTERVAL))
        for n, ok in patterns[c]:
            if r < n:
                return ok
            r -= n
        return patterns[c][-1][1]

    return results


@settings(max_examples=300, deadline=None)
@given(cands_st, st.data())
def test_any_results_keep_the_choice_among_the_candidates(cands, data):
    patterns = {c: data.draw(pattern_st, label=c) for c in cands}
    sel = Selector(cands, 0.0)
    switches = run(sel, fixed(patterns), 0.0, 80.0)
    assert sel.current in cands
    for a, b in zip(switches, switches[1:]):
        assert a.new == b.old
    assert sel.switches == len(switches)
    for s in switches:
        assert s.old != s.new and s.new in cands


@settings(max_examples=300, deadline=None)
@given(cands_st, st.dictionaries(st.sampled_from(TRANSPORTS), st.booleans()))
def test_steady_results_settle_on_the_best_working_transport(cands, answers):
    works = {c: answers.get(c, True) for c in cands}
    sel = Selector(cands, 0.0)
    switches = run(sel, lambda c, t: works[c], 0.0, 60.0)
    best = next((c for c in cands if works[c]), None)
    if best is not None:
        assert sel.current == best
    assert len(switches) <= len(cands) - 1 + (best is not None)  # no flapping under steady results


@settings(max_examples=300, deadline=None)
@given(cands_st, st.integers(0, 40), st.integers(0, 20))
def test_the_transport_in_use_failing_moves_the_peer_within_five_seconds(cands, start_rounds, ok_rounds):
    """From a failure of the transport in use, while a lower candidate answers, the peer
    leaves it within 5 s (the unanswered probe's result arrives TIMEOUT late)."""
    if len(cands) < 2:
        return
    sel = Selector(cands, 0.0)
    fail_at = start_rounds * INTERVAL
    last = cands[-1]

    def results(c, t):
        return c == last or t < fail_at

    switches = run(sel, results, 0.0, fail_at + 10.0)
    assert switches, "never left the failing transport"
    assert switches[0].at + TIMEOUT - fail_at <= 5.0
    assert sel.current == last


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120))
def test_switching_up_needs_an_unbroken_hold(vx_answers):
    """Whatever vxlan does, the peer only goes back to it after up_after seconds of answers."""
    sel = Selector(("vxlan", "wireguard"), 0.0, current="wireguard")
    hist: list[tuple[float, bool]] = []
    for i, ok in enumerate(vx_answers):
        t = i * INTERVAL
        sel.record("wireguard", 0.001, t)
        sel.record("vxlan", 0.001 if ok else None, t)
        hist.append((t, ok))
        sw = sel.decide(t)
        if sw is not None and sw.new == "vxlan":
            since = [x for x, y in hist if x >= t - Timing().up_after]
            assert all(y for x, y in hist if x in since)
            assert hist[0][0] <= t - Timing().up_after
