"""`crossnet trace --verify` on hosts running crossnet's tc eBPF programs (docs/ebpf.md):
their counters as one hop per host — how many packets the programs redirected (the fast
path) and how many they passed to the stack, and why — during the probe."""

from __future__ import annotations

from typing import Callable

from crossnet.ebpf import host as ebpf_host
from crossnet.ebpf.maps import COUNTERS
from crossnet.trace.model import Hop, HostSide

PREFIX = "ebpf:"


def counter_sources(hosts: dict[str, HostSide]) -> dict[str, Callable[[], dict[str, tuple[int, int]]]]:
    """`ebpf:<host>` -> its counters as {name: (value, 0)}, for every host whose programs
    are loaded (pinned for its state directory)."""
    out = {}
    for h in hosts.values():
        state_dir = h.state_dir or getattr(h.ctx, "state_dir", "") or ""
        if state_dir and ebpf_host.loaded(state_dir):
            out[f"{PREFIX}{h.name}"] = lambda sd=state_dir: {k: (v, 0) for k, v in ebpf_host.counters_at(sd).items()}
    return out


def describe(deltas: dict[str, int]) -> tuple[str, str | None]:
    """(hop detail, note) for the counter deltas of one host."""
    own = "".join(f", {what} {deltas[f'redirect_{what}']}" for what in ("encap", "decap")
                  if deltas.get(f"redirect_{what}", 0) > 0)  # the programs' own VXLAN (backend vxlan)
    detail = (f"tc eBPF: {deltas.get('redirect', 0)} redirected (neigh {deltas.get('redirect_neigh', 0)}, "
              f"peer {deltas.get('redirect_peer', 0)}{own}), {deltas.get('pass', 0)} passed to the stack")
    reasons = [f"{name.removeprefix('pass_')} {deltas[name]}" for name in COUNTERS
               if name.startswith("pass_") and deltas.get(name, 0) > 0]
    note = f"passed to the stack: {', '.join(reasons)}" if reasons else None
    return detail, note


def _bypassed(deltas: dict[str, int], sent: int) -> list[tuple[str, str, int, str]]:
    """(hop kind, direction, packets, note) of the hops whose counters the programs' fast
    path leaves still when it carried at least ``sent`` packets."""
    into = deltas.get("redirect_peer", 0) + deltas.get("redirect_decap", 0)  # both end in bpf_redirect_peer
    out = [("veth", "tx", into, "bypassed: the tc eBPF program put the packets straight into the container "
                                "(redirect_peer)"),
           ("vxlan", "tx", deltas.get("redirect_encap", 0),
            "bypassed: the tc eBPF program encapsulated the packets itself (redirect_encap)"),
           ("vxlan", "rx", deltas.get("redirect_decap", 0),
            "bypassed: the tc eBPF program took the VXLAN header off itself (redirect_decap)")]
    return [b for b in out if sent and b[2] >= sent]


def add_hops(hops: list[Hop], before: dict[str, dict[str, tuple[int, int]]],
             after: dict[str, dict[str, tuple[int, int]]], sent: int = 0) -> None:
    """Insert one `ebpf` hop per host with counters, after that host's last hop (pure).
    The packets of other traffic during the probe count too: a caveat, not a check.
    ``sent``: the probe's echo requests. A packet `bpf_redirect_peer` puts straight into
    a container never leaves the host side of its veth, whose tx counter then stays:
    when that host's programs redirected into a container at least ``sent`` packets,
    such a veth hop is not counted (noted as the fast path) instead of failing. Likewise a
    vxlan device's tx hop when the programs encapsulated at least ``sent`` packets
    themselves, and its rx hop when they took the VXLAN header off as many."""
    for key in sorted(k for k in after if k.startswith(PREFIX)):
        name = key.removeprefix(PREFIX)
        b, a = before.get(key), after[key]
        if b is None:
            continue
        deltas = {k: a[k][0] - b.get(k, (0, 0))[0] for k in a}
        detail, note = describe(deltas)
        hop = Hop(host=name, device=None, kind="ebpf", detail=detail, note=note, extra={"ebpf": deltas})
        for kind, expect, count, note in _bypassed(deltas, sent):
            for h in hops:
                if h.host == name and h.kind == kind and h.expect == expect and not h.moved:
                    h.expect, h.moved = None, None
                    h.note = note
        last = max((i for i, h in enumerate(hops) if h.host == name), default=len(hops) - 1)
        hops.insert(last + 1, hop)
