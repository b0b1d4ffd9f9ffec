"""Choosing a peer's transport (`backend: auto`): pure logic, no kernel, no clock.

Facts about a peer (is its underlay address on a subnet connected to this host's NIC?
did it publish a WireGuard key?) and the cluster's `encrypt` setting give the ordered
candidates, best first::

    direct (host-gw route) > vxlan > wireguard        encrypt: wireguard only

A `Selector` per peer then follows probe results (time, transport, RTT or None) fed in
by the prober (crossnet.transport.prober) and answers, at any time, which candidate
carries the peer's containers' traffic:

* it starts on the best candidate;
* the transport in use is *down* when it has not answered a probe for `down_after`
  seconds: the peer moves to the best candidate that is *up* (answered every probe
  for `up_after` seconds), else to the next one below that is not down (never
  probed counts as a try); when every candidate is down it stays;
* a better candidate than the one in use that is up for `up_after` seconds takes the
  peer back (hysteresis: one lost probe restarts its clock).

Time is whatever monotonic number the caller passes (the tests use a fake clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSPORTS = ("direct", "vxlan", "wireguard")  # best first
ENCRYPTED = frozenset({"wireguard"})


def candidates(on_link: bool, has_key: bool, encrypt: bool) -> tuple[str, ...]:
    """The transports a peer may use, best first. `on_link`: its underlay address is on
    a subnet connected to this host's NIC (same L2 segment); `has_key`: it published a
    WireGuard public key (without one WireGuard cannot reach it)."""
    if encrypt:
        return ("wireguard",)
    out = (["direct"] if on_link else []) + ["vxlan"]
    if has_key:
        out.append("wireguard")
    return tuple(out)


@dataclass(frozen=True)
class Timing:
    down_after: float = 2.0  # s without an answer on the transport in use -> next transport
    up_after: float = 3.0  # s of answers on a better transport -> back to it


@dataclass
class Health:
    """What probes said of one transport to one peer."""

    ok_since: float | None = None  # start of the current run of answered probes
    fail_since: float | None = None  # first unanswered probe since the last answer
    rtt: float | None = None  # s, last answered probe
    probes: int = 0
    answered: int = 0

    def record(self, rtt: float | None, now: float) -> None:
        self.probes += 1
        if rtt is None:
            self.ok_since = None
            if self.fail_since is None:
                self.fail_since = now
        else:
            self.answered += 1
            self.rtt = rtt
            self.fail_since = None
            if self.ok_since is None:
                self.ok_since = now

    def down(self, now: float, t: Timing) -> bool:
        return self.fail_since is not None and now - self.fail_since >= t.down_after

    def up(self, now: float, t: Timing) -> bool:
        return self.ok_since is not None and now - self.ok_since >= t.up_after

    def state(self) -> str:
        if self.probes == 0:
            return "probing"
        return "established" if self.fail_since is None else "failing"


@dataclass
class Switch:
    old: str
    new: str
    at: float
    reason: str

    def line(self, peer: str) -> str:
        return f"peer {peer}: transport {self.old} -> {self.new} ({self.reason})"


@dataclass
class Selector:
    candidates: tuple[str, ...]
    now: float
    timing: Timing = field(default_factory=Timing)
    current: str = ""
    since: float = 0.0
    switches: int = 0
    health: dict[str, Health] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.candidates or any(c not in TRANSPORTS for c in self.candidates):
            raise ValueError(f"bad candidates {self.candidates!r}")
        self.current = self.current if self.current in self.candidates else self.candidates[0]
        self.since = self.now
        self.health = {c: Health() for c in self.candidates}

    def record(self, transport: str, rtt: float | None, now: float) -> None:
        h = self.health.get(transport)
        if h is not None:
            h.record(rtt, now)

    def decide(self, now: float) -> Switch | None:
        """The switch to make now, if any (and make it)."""
        t, cur = self.timing, self.current
        i = self.candidates.index(cur)
        new, reason = None, ""
        if self.health[cur].down(now, t):
            up = [c for c in self.candidates if c != cur and self.health[c].up(now, t)]
            below = [c for c in self.candidates[i + 1:] if not self.health[c].down(now, t)]
            new = (up or below or [None])[0]
            reason = f"{cur} unanswered for {now - (self.health[cur].fail_since or now):.1f} s"
        else:
            better = [c for c in self.candidates[:i] if self.health[c].up(now, t)]
            if better:
                new = better[0]
                reason = f"{new} answered for {now - (self.health[new].ok_since or now):.1f} s"
        if new is None or new == cur:
            return None
        self.current, self.since = new, now
        self.switches += 1
        return Switch(cur, new, now, reason)

    def state(self) -> str:
        return self.health[self.current].state()

    def to_json(self) -> dict:
        h = self.health[self.current]
        return {
            "transport": self.current,
            "encrypted": self.current in ENCRYPTED,
            "state": self.state(),
            "rtt_ms": round(h.rtt * 1000, 3) if h.rtt is not None and h.fail_since is None else None,
            "switches": self.switches,
            "candidates": {c: {"state": x.state(), "probes": x.probes, "answered": x.answered,
                               "rtt_ms": round(x.rtt * 1000, 3) if x.rtt is not None else None}
                           for c, x in self.health.items()},
        }


__all__ = ["TRANSPORTS", "ENCRYPTED", "candidates", "Timing", "Health", "Selector", "Switch"]
