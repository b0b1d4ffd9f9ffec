"""`crossnet status` connections table (like `weave status connections`): per peer, the
transport (direct / vxlan / wireguard), encrypted or not, path MTU, RTT, state and
since when.

Backend auto: what the agent's prober wrote (``<state-dir>/transport.json``, see
crossnet.transport.prober); without a running agent (`crossnet apply`) the transport
recorded in applied.json and state "unprobed". Other backends: their one transport.
A path MTU appears when path-MTU discovery measured one (`--probe-mtu`, the
`path_mtu` record of applied.json, crossnet.transport.pmtu), else None ("-" in text).
"""

from __future__ import annotations

import time
from typing import Any

from crossnet.backends.base import HostContext
from crossnet.state import StateDir, read_json

BACKEND_TRANSPORT = {"host-gw": "direct", "bridge": "direct", "vxlan": "vxlan", "wireguard": "wireguard",
                     "ovs-gre": "gre", "ovs-vxlan": "vxlan"}
STALE_AFTER = 10.0  # s: a transport.json not rewritten for this long is from an agent that stopped


def rows(state: StateDir, ctx: HostContext, path_mtus: dict[str, int | None] | None = None) -> list[dict[str, Any]]:
    """One row per peer; `path_mtus`: the measured path MTU per peer (crossnet.transport.pmtu,
    `--probe-mtu`), used where the prober's own entry has none."""
    probed: dict[str, Any] = {}
    stale = True
    if ctx.backend == "auto":
        from crossnet.errors import CrossnetError
        from crossnet.transport.prober import state_path

        try:
            doc = read_json(state_path(state.root)) or {}
        except CrossnetError:
            doc = {}
        probed = doc.get("peers") if isinstance(doc.get("peers"), dict) else {}
        stale = time.time() - float(doc.get("updated") or 0) > STALE_AFTER
    out = []
    for peer in ctx.peers:
        p = probed.get(peer.name)
        if isinstance(p, dict):
            transport = str(p.get("transport") or "?")
            state_ = "stale" if stale else str(p.get("state") or "?")
            rtt, since, pmtu = p.get("rtt_ms"), p.get("since"), p.get("pmtu")
        else:
            if ctx.backend == "auto":
                from crossnet.backends.auto import transport_of

                transport, state_ = transport_of(ctx, peer), "unprobed"
            else:
                transport, state_ = BACKEND_TRANSPORT.get(ctx.backend, ctx.backend), "configured"
            rtt = since = pmtu = None
        if not isinstance(pmtu, int):
            pmtu = (path_mtus or {}).get(peer.name)
        out.append({"peer": peer.name, "address": str(peer.address), "transport": transport,
                    "encrypted": transport == "wireguard", "pmtu": pmtu if isinstance(pmtu, int) else None,
                    "rtt_ms": rtt if isinstance(rtt, (int, float)) else None, "state": state_,
                    "since": since if isinstance(since, (int, float)) and since > 0 else None})
    return out


def text_rows(conns: list[dict[str, Any]]) -> list[list[str]]:
    """The table's cells for people: `-` for what is not known."""
    def since(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"

    return [[c["peer"], c["address"], c["transport"], "yes" if c["encrypted"] else "no",
             str(c["pmtu"]) if c["pmtu"] else "-", f"{c['rtt_ms']:.2f} ms" if c["rtt_ms"] is not None else "-",
             c["state"], since(c["since"])] for c in conns]


HEADERS = ("peer", "address", "transport", "encrypted", "path mtu", "rtt", "state", "since")

__all__ = ["rows", "text_rows", "HEADERS"]
