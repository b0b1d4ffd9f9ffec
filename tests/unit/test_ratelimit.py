"""crossnet.ratelimit: per-source limits of failed requests and of new connections, with
a fake clock. The tables stay within their cap whatever sources arrive, and a source
that stays under its limit is never refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.ratelimit import ConnectRate, FailureLimit


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failures_under_the_limit_are_not_refused_and_the_next_one_blocks():
    clock = Clock()
    lim = FailureLimit(failures=3, window=60, backoff=30, capacity=10, clock=clock)
    assert lim.failed("10.0.0.1") is None
    clock.now += 10
    assert lim.failed("10.0.0.1") is None
    assert lim.retry_after("10.0.0.1") is None
    clock.now += 10
    assert lim.failed("10.0.0.1") == 30  # the 3rd within 60 s
    clock.now += 12
    assert lim.retry_after("10.0.0.1") == 18
    assert lim.retry_after("10.0.0.2") is None  # another source is not affected
    clock.now += 18
    assert lim.retry_after("10.0.0.1") is None  # back-off over: served again...
    assert lim.failed("10.0.0.1") is None  # ...with a fresh count
    assert lim.failed("10.0.0.1") is None


def test_failures_spread_wider_than_the_window_never_block():
    clock = Clock()
    lim = FailureLimit(failures=3, window=60, backoff=30, capacity=10, clock=clock)
    for _ in range(20):
        assert lim.failed("10.0.0.1") is None and lim.retry_after("10.0.0.1") is None
        clock.now += 30.5  # at most 2 within any 60 s


def test_asking_adds_nothing_and_stale_sources_are_dropped():
    clock = Clock()
    lim = FailureLimit(failures=3, window=60, backoff=30, capacity=10, clock=clock)
    for i in range(50):
        assert lim.retry_after(f"10.0.1.{i}") is None
    assert len(lim) == 0
    lim.failed("10.0.0.1")
    lim.failed("10.0.0.2")
    clock.now += 60  # both windows over, neither blocked: forgotten at the next failure
    lim.failed("10.0.0.3")
    assert len(lim) == 1


def test_past_the_cap_the_least_recently_failed_source_is_forgotten():
    clock = Clock()
    lim = FailureLimit(failures=2, window=60, backoff=30, capacity=3, clock=clock)
    for src in ("a", "b", "c"):
        lim.failed(src)
        clock.now += 1
    lim.failed("a")  # a: blocked, and now the most recent
    assert lim.retry_after("a") == 30
    lim.failed("d")  # 4 sources: b (least recently failed) goes
    assert len(lim) == 3
    lim.failed("b")  # b starts afresh: 1 failure, not blocked
    assert lim.retry_after("b") is None
    assert lim.retry_after("a") == 30


@pytest.mark.parametrize("kwargs", [{"failures": 0}, {"window": 0}, {"backoff": -1}, {"capacity": 0}])
def test_failure_limit_needs_positive_settings(kwargs):
    with pytest.raises(ValueError):
        FailureLimit(**{"failures": 3, "window": 60, "backoff": 30, "capacity": 10, **kwargs})


# events: (source index, seconds later); hypothesis mixes few sources (limits reached) and many (cap reached)
EVENTS = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0.0, 0.0, 0.5, 3.0, 20.0, 61.0])), max_size=200)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.integers(1, 6), st.integers(1, 8))
def test_failure_table_stays_in_its_cap_and_never_refuses_a_source_under_the_limit(events, failures, capacity):
    clock = Clock()
    window = 60.0
    lim = FailureLimit(failures=failures, window=window, backoff=30, capacity=capacity, clock=clock)
    history: dict[int, list[float]] = {}
    for src, later in events:
        clock.now += later
        key = f"10.0.0.{src}"
        seen = history.setdefault(src, [])
        seen.append(clock.now)
        # has this source ever had `failures` failures within one window?
        over = any(sum(1 for u in seen if 0 <= t - u < window) >= failures for t in seen)
        lim.failed(key)
        assert len(lim) <= capacity
        if not over:
            assert lim.retry_after(key) is None, (key, seen)
        for other, times in history.items():
            if not any(sum(1 for u in times if 0 <= t - u < window) >= failures for t in times):
                assert lim.retry_after(f"10.0.0.{other}") is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(0, 5))
def test_a_source_reaching_the_limit_is_refused_for_the_backoff(failures, spacing):
    """With room in the table: the failure that reaches the limit within the window
    blocks the source for exactly the back-off."""
    clock = Clock()
    lim = FailureLimit(failures=failures, window=60, backoff=45, capacity=4, clock=clock)
    results = []
    for _ in range(failures):
        results.append(lim.failed("fd00::/64"))
        clock.now += spacing  # (failures-1) * spacing < 60
    assert results[:-1] == [None] * (failures - 1) and results[-1] == 45
    clock.now -= spacing
    assert lim.retry_after("fd00::/64") == 45
    clock.now += 45
    assert lim.retry_after("fd00::/64") is None


# ---------------------------------------------------------------- new connections


def test_a_burst_then_the_refill_rate():
    clock = Clock()
    rate = ConnectRate(rate=2.0, burst=3, capacity=10, clock=clock)
    assert [rate.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert rate.allow("10.0.0.2")  # another source has its own bucket
    clock.now += 0.5  # one token back
    assert [rate.allow("10.0.0.1") for _ in range(2)] == [True, False]
    clock.now += 10  # full again, never more than the burst
    assert [rate.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]


def test_full_buckets_are_forgotten_and_the_cap_holds():
    clock = Clock()
    rate = ConnectRate(rate=1.0, burst=2, capacity=3, clock=clock)
    for i in range(10):
        rate.allow(f"10.0.0.{i}")
    assert len(rate) == 3  # the least recently seen went first
    clock.now += 5  # every bucket full again
    rate.allow("10.0.1.1")
    assert len(rate) == 1


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"burst": 0}, {"capacity": 0}])
def test_connect_rate_needs_positive_settings(kwargs):
    with pytest.raises(ValueError):
        ConnectRate(**{"rate": 1.0, "burst": 2, "capacity": 10, **kwargs})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0.0, 0.25, 0.5, 1.0, 7.0])), max_size=200),
       st.integers(1, 5), st.integers(1, 8))
def test_connect_table_stays_in_its_cap_and_a_paced_source_is_never_refused(events, burst, capacity):
    """Source 0 connects at most once per 1/rate (0.5 s) after its first `burst`
    connections at once; whatever the other sources do, it is never refused."""
    clock = Clock()
    rate = ConnectRate(rate=2.0, burst=burst, capacity=capacity, clock=clock)
    for _ in range(burst):
        assert rate.allow("paced")
    last = clock.now
    for src, later in events:
        clock.now += later
        rate.allow(f"10.0.0.{src}")
        assert len(rate) <= capacity
        if clock.now - last >= 0.5:
            assert rate.allow("paced")
            last = clock.now
            assert len(rate) <= capacity
