"""crossnet.serveloop.ConnectionSlots: the one counter behind every connection cap (the DNS
server's TCP connections, the agent API's), in all and per source."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.serveloop import ConnectionSlots

SOURCES = ["10.0.0.1", "10.0.0.2", "2001:db8::/64", None]

# an operation: ("take", source index) or ("give", index into what is held now)
ops = st.lists(st.one_of(st.tuples(st.just("take"), st.integers(0, len(SOURCES) - 1)),
                         st.tuples(st.just("give"), st.integers(0, 63))), max_size=80)


@given(total=st.integers(0, 6), per_source=st.one_of(st.none(), st.integers(0, 4)), steps=ops)
def test_any_interleaving_stays_within_both_caps_and_frees_what_it_took(total, per_source, steps):
    slots = ConnectionSlots(total, per_source)
    held: list[str | None] = []  # what the holders took, in order
    for op, n in steps:
        if op == "take":
            source = SOURCES[n]
            room = len(held) < total and (per_source is None or held.count(source) < per_source)
            assert slots.try_acquire(source) is room  # refused exactly when a cap is reached
            if room:
                held.append(source)
        elif held:
            slots.release(held.pop(n % len(held)))
        assert len(slots) == len(held) <= total
        for source in SOURCES:
            assert slots.held(source) == held.count(source)
            assert per_source is None or slots.held(source) <= per_source
    for source in held:
        slots.release(source)
    assert len(slots) == 0 and all(slots.held(s) == 0 for s in SOURCES)
    assert slots.try_acquire(SOURCES[0]) is (total > 0 and (per_source is None or per_source > 0))


def test_a_slot_never_taken_cannot_be_given_back():
    slots = ConnectionSlots(2, 1)
    assert slots.try_acquire("10.0.0.1")
    with pytest.raises(ValueError, match="10.0.0.2"):
        slots.release("10.0.0.2")
    slots.release("10.0.0.1")
    with pytest.raises(ValueError, match="10.0.0.1"):
        slots.release("10.0.0.1")
    assert len(slots) == 0


def test_threads_racing_never_exceed_either_cap():
    slots = ConnectionSlots(5, 2)
    seen: list[tuple[int, int]] = []  # (held in all, held by the taker) right after each take
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(source: str) -> None:
        try:
            start.wait()
            for _ in range(2000):
                if slots.try_acquire(source):
                    seen.append((len(slots), slots.held(source)))
                    slots.release(source)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"10.0.0.{i % 4}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen and max(a for a, _ in seen) <= 5 and max(b for _, b in seen) <= 2
    assert len(slots) == 0
