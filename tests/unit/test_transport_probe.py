"""Path-MTU search (crossnet.transport.probe) against fake paths: every path MTU in
range is found exactly within a bounded number of probes, whether the path answers
"fragmentation needed" (with or without the next-hop MTU) or drops oversized packets
silently, and lost probes are retried. Plus the ICMP packing/parsing the probes use."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet.transport import probe
from crossnet.transport.probe import (
    LOST,
    OK,
    TOO_BIG,
    Outcome,
    PathUnreachable,
    max_probes,
    search,
)


class FakePath:
    """A path of MTU `mtu`: `mode` 'hint' (router names the MTU), 'nohint' (frag-needed
    without it), 'silent' (oversized packets vanish); `loss[size]` = how many sends of
    that size are lost before one goes through."""

    def __init__(self, mtu: int, mode: str = "hint", loss: dict[int, int] | None = None, hint: int | None = None):
        self.mtu, self.mode, self.loss, self.hint = mtu, mode, dict(loss or {}), hint
        self.sent: list[int] = []

    def __call__(self, size: int) -> Outcome:
        self.sent.append(size)
        if self.loss.get(size, 0) > 0:
            self.loss[size] -= 1
            return Outcome(LOST)
        if size <= self.mtu:
            return Outcome(OK, rtt=0.001)
        if self.mode == "silent":
            return Outcome(LOST)
        return Outcome(TOO_BIG, mtu=(self.hint or self.mtu) if self.mode == "hint" else None)


@pytest.mark.parametrize("mode", ["hint", "nohint", "silent"])
def test_finds_1400_below_1500(mode):
    path = FakePath(1400, mode)
    assert search(path, 576, 1500) == 1400
    assert len(path.sent) <= max_probes(576, 1500, 3)


def test_a_full_path_costs_one_probe():
    path = FakePath(1500)
    assert search(path, 576, 1500) == 1500 and path.sent == [1500]


def test_a_router_hint_costs_two_probes():
    path = FakePath(1400, "hint")
    assert search(path, 576, 1500) == 1400 and path.sent == [1500, 1400]


def test_lost_probes_are_retried_not_taken_for_too_big():
    path = FakePath(1500, "silent", loss={1500: 2})
    assert search(path, 576, 1500, retries=3) == 1500 and path.sent == [1500] * 3


def test_unreachable_path_raises_after_bounded_probes():
    path = FakePath(100, "silent")  # nothing of 576 bytes or more crosses
    with pytest.raises(PathUnreachable):
        search(path, 576, 1500)
    assert len(path.sent) <= max_probes(576, 1500, 3)


def test_a_bogus_hint_above_the_size_is_ignored():
    path = FakePath(1300, "hint", hint=9000)
    assert search(path, 576, 1500) == 1300


def test_deadline_returns_the_largest_size_known_to_cross():
    path = FakePath(1000, "nohint")
    calls = []

    def deadline():
        calls.append(1)
        return len(path.sent) >= 3

    got = search(path, 576, 1500, deadline=deadline)
    assert got <= 1000 and all(s <= got or s > 1000 for s in path.sent)
    assert FakePath(1000)(got).kind == OK and len(path.sent) == 3


def test_deadline_before_anything_crossed_raises():
    with pytest.raises(PathUnreachable):
        search(FakePath(1000, "silent"), 576, 1500, deadline=lambda: True)


@pytest.mark.parametrize(("low", "high"), [(27, 1500), (1500, 1400), (576, 70000)])
def test_bad_bounds(low, high):
    with pytest.raises(ValueError):
        search(FakePath(1000), low, high)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    low=st.integers(probe.MIN_SIZE, 9000),
    span=st.integers(0, 9000),
    mode=st.sampled_from(["hint", "nohint", "silent"]),
    retries=st.integers(1, 4),
)
def test_any_path_mtu_in_range_is_found_exactly(data, low, span, mode, retries):
    high = min(low + span, probe.MAX_SIZE)
    mtu = data.draw(st.integers(low, high), label="mtu")
    # random loss, fewer than `retries` times per size: never mistaken for too big
    sizes = data.draw(st.lists(st.integers(low, high), max_size=5), label="lossy sizes")
    loss = {s: data.draw(st.integers(0, retries - 1)) for s in sizes}
    path = FakePath(mtu, mode, loss=loss)
    assert search(path, low, high, retries=retries) == mtu
    assert len(path.sent) <= max_probes(low, high, retries)


@settings(max_examples=100, deadline=None)
@given(low=st.integers(probe.MIN_SIZE, 2000), span=st.integers(0, 2000), below=st.integers(1, 500),
       mode=st.sampled_from(["hint", "nohint", "silent"]))
def test_a_path_narrower_than_low_is_unreachable(low, span, below, mode):
    path = FakePath(max(low - below, 0), mode)
    with pytest.raises(PathUnreachable):
        search(path, low, low + span)
    assert len(path.sent) <= max_probes(low, low + span, 3)


# ---- the ICMP the probes send and read


def _ip(src: str, dst: str, payload: bytes, proto: int = 1) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


@given(size=st.integers(probe.MIN_SIZE, 9000), ident=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFF))
def test_echo_request_size_and_checksum(size, ident, seq):
    pkt = probe.echo_request(ident, seq, size)
    assert len(pkt) + probe.IP_HEADER == size
    assert probe.checksum(pkt) == 0  # a valid checksum sums to zero
    assert struct.unpack("!BBxxHH", pkt[:8]) == (probe.ICMP_ECHO, 0, ident, seq)


def test_classify_reply_and_frag_needed():
    req = probe.echo_request(7, 9, 1500)
    reply = bytes([0, 0]) + req[2:]
    assert probe.classify(_ip("10.0.0.2", "10.0.0.1", reply), "10.0.0.2", 7, 9) == Outcome(OK)
    assert probe.classify(_ip("10.0.0.2", "10.0.0.1", reply), "10.0.0.2", 7, 10) is None  # other probe
    assert probe.classify(_ip("10.0.0.3", "10.0.0.1", reply), "10.0.0.2", 7, 9) is None  # other host
    quoted = _ip("10.0.0.1", "10.0.0.2", req)[:28]
    frag = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + quoted
    assert probe.classify(_ip("10.9.0.1", "10.0.0.1", frag), "10.0.0.2", 7, 9) == Outcome(TOO_BIG, mtu=1400)
    assert probe.classify(_ip("10.9.0.1", "10.0.0.1", frag), "10.0.0.3", 7, 9) is None
    unreach = struct.pack("!BBHHH", 3, 1, 0, 0, 0) + quoted  # host unreachable: not about size
    assert probe.classify(_ip("10.9.0.1", "10.0.0.1", unreach), "10.0.0.2", 7, 9) is None
    assert probe.classify(b"\x45\x00", "10.0.0.2", 7, 9) is None


def test_a_dead_path_is_given_up_after_two_sizes():
    path = FakePath(0, "silent")
    with pytest.raises(PathUnreachable):
        search(path, 576, 1500, retries=3)
    assert path.sent == [1500] * 3 + [576] * 3
