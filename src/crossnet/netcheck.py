"""`crossnet check` per network (docs/networks.md): which endpoints one network of this
host checks, and the jobs of the whole run.

Pure: from what `status` says (this host's containers of the network, its peers of the
network with their subnets) and, for the top-level network, the containers an agent
publishes. A network's local containers ping its other containers here, every
published container of it, and the container gateway on that network of every peer
whose containers are unknown. Pairs of different networks are never failures: with
`--isolation` they are probed too and must *not* answer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from crossnet.check import Endpoint

DEFAULT = "default"


@dataclass
class NetPlan:
    """One network's endpoints on this host: `local` (probe sources) and `dsts`
    (endpoint, its host, kind "container" | "gateway"); not probed: `stale` containers
    (namespace gone) and `incomplete` ones (no veth: an attach killed half-way or still
    running; their pairs could only fail, which `status` already says, with the fix)."""

    network: str
    local: list[tuple[Endpoint, str, str]] = field(default_factory=list)
    dsts: list[tuple[Endpoint, str, str]] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)
    incomplete: list[dict] = field(default_factory=list)


def plan(network: str, me: str, backend: str, containers: list[dict], peers: list[dict],
         published: dict[str, list[dict]] | None) -> NetPlan:
    """The endpoints of `network` (names prefixed ``NETWORK:`` for a named one, so two
    networks' endpoints never share a name)."""
    tag = "" if network == DEFAULT else f"{network}:"
    out = NetPlan(network)
    out.stale = [{"id": c["id"], "address": c["address"], "netns": c["netns"]}
                 for c in containers if c.get("state") == "stale"]
    out.incomplete = [{"id": c["id"], "address": c["address"], "netns": c["netns"], "complete": c.get("complete")}
                      for c in containers if c.get("state") == "incomplete"]
    out.local = [(Endpoint(tag + (c.get("name") or c["id"]), c["netns"] or "", c["address"].split("/")[0]), me,
                  "container") for c in containers if c.get("state") not in ("stale", "incomplete")]
    out.dsts = list(out.local)
    by_name = {p["name"]: p for p in peers}
    for name in sorted(set(by_name) | set(published or {})):
        if name == me:
            continue
        theirs = (published or {}).get(name) or []
        for c in theirs:
            out.dsts.append((Endpoint(f"{tag}{name}/{c.get('name') or c['id']}", "", c["address"]), name,
                             "container"))
        if not theirs and name in by_name:
            # the peer's container gateway (reached through the overlay), or the peer itself on a LAN
            net = ipaddress.ip_network(by_name[name]["subnet"])
            gw = by_name[name]["address"] if backend == "bridge" else str(net.network_address + 1)
            out.dsts.append((Endpoint(f"{tag}{name} (gateway)", "", gw), name, "gateway"))
    return out


Job = tuple[Endpoint, tuple[Endpoint, str, str], str, str]  # src, (dst, dst host, kind), src net, dst net


def jobs(plans: list[NetPlan], isolation: bool = False, only: str | None = None) -> tuple[list[Job], list[Job]]:
    """(same-network jobs, cross-network jobs): every local container of a network
    (`only`: of that one) to every destination of that network; with `isolation`, to
    every destination of every other planned network as well (those must fail)."""
    same: list[Job] = []
    cross: list[Job] = []
    for p in plans:
        if only is not None and p.network != only:
            continue
        for s, _, _ in p.local:
            same += [(s, d, p.network, p.network) for d in p.dsts if d[0].address != s.address]
            if isolation:
                cross += [(s, d, p.network, o.network) for o in plans if o is not p for d in o.dsts]
    return same, cross


def network_status(st: dict[str, Any], network: str, peers: list[dict]) -> tuple[list[dict], list[dict]]:
    """(containers, peers) of `network` from `status` (a named network's peers: its
    recorded context's, given by the caller)."""
    if network == DEFAULT:
        return st["containers"], st["peers"]
    return (st.get("networks") or {}).get(network, {}).get("containers") or [], peers
