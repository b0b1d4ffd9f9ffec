"""Host access (`crossnet expose` / `crossnet hide`, issue 15; docs/expose.md): the pure part.

What the host reaches without expose (measured in labs, docs/expose.md): every container,
but from whatever source address routing picks -- its underlay address with host-gw and
auto's direct peers, the subnet's `.0` (the tunnel device's) with vxlan and wireguard,
the gateway with ovs-* -- so a container sees the host under an address outside the
network (host-gw, auto), which the network's own rules cannot tell from any other LAN
machine. Exposed, the host has ONE address in the network, `address(ctx)` (the container
gateway of its subnet; backend bridge: its own LAN address, already in the network), and
every packet the host itself sends into the network from an address outside it leaves from
that address (an nft SNAT of locally generated packets only: forwarded packets and the
host's sources already inside the network keep theirs). Replies come back over the overlay
like a container's: the gateway lies in this host's subnet, which every peer routes here.

Which networks are exposed is kept in `<state-dir>/expose.json` (`{"networks": [NAME]}`),
read by `resources(ctx)` -- part of crossnet.program.common_resources, so `apply` and the
agent's syncs keep what `crossnet expose` added, and `reset` removes it with the rest of
applied.json. The file is hostile input: anything but a list of names of this host's
networks exposes nothing.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossnet.errors import ConfigError
from crossnet.plan.resources import NftTable, Resource
from crossnet.state import DamagedStateFile, read_json, write_json_atomic

if TYPE_CHECKING:
    from crossnet.backends.base import HostContext

FILE = "expose.json"
NFT_TABLE = "crossnet-expose"  # its own table: independent of the masquerade table (crossnet.program)


def networks_of(ctx: HostContext, named: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The names of the networks this host is in: the cluster's (the top-level network)
    and `named`, the cluster file's named networks this host applied (docs/networks.md)."""
    return [ctx.cluster_name, *[n for n in named if n != ctx.cluster_name]]


def lookup(ctx: HostContext, name: str | None, named: list[str] | tuple[str, ...] = ()) -> str:
    """`--network NAME` (None: the top-level network, the cluster's) -> the network's
    name; ConfigError naming the option when this host has no such network."""
    names = networks_of(ctx, named)
    if name is None:
        return names[0]
    if name not in names:
        raise ConfigError(f"--network: this host has no network {name[:64]!r} (its networks: {', '.join(names)})")
    return name


def address(ctx: HostContext) -> IPv4Address:
    """This host's address in its network once exposed: the container gateway (on the
    container bridge, inside this host's subnet); backend bridge: the host's LAN address."""
    return ctx.address if ctx.backend == "bridge" else ctx.gateway


def path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FILE


def load(state_dir: str | os.PathLike[str]) -> list[str]:
    """The exposed networks' names recorded in the state dir ([] when none, or when the
    file is damaged or not of the expected shape: hostile input never reaches the kernel)."""
    if not state_dir:
        return []
    try:
        data = read_json(path(state_dir))
    except DamagedStateFile:
        return []
    names = data.get("networks") if isinstance(data, dict) else None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and 0 < len(n) <= 253 and n.isprintable()]


def save(state_dir: str | os.PathLike[str], names: list[str]) -> None:
    p = path(state_dir)
    if names:
        write_json_atomic(p, {"networks": sorted(set(names))})
    else:
        p.unlink(missing_ok=True)


def rules(ctx: HostContext) -> str:
    """The SNAT rule of this host's exposed network: locally generated packets (`fib saddr
    type local`) into the network from a source outside it leave from `address(ctx)`."""
    return (f"    ip daddr {ctx.network} ip saddr != {ctx.network} fib saddr type local "
            f"snat to {address(ctx)}")


def resources(ctx: HostContext, names: list[str] | None = None, network: str | None = None) -> list[Resource]:
    """The resources exposing this host's network takes ([] when it is not exposed;
    backend bridge: none, the host's own LAN address already is in the network).
    `names`: the exposed networks (default: as recorded in the state dir). `network`: a
    named network's name, `ctx` its context (its own table, ``crossnet-expose-NAME``)."""
    names = load(ctx.state_dir) if names is None else names
    if ctx.backend == "bridge" or (network or ctx.cluster_name) not in names:
        return []
    body = (
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat - 1; policy accept;\n"
        f"{rules(ctx)}\n"
        "  }"
    )
    return [NftTable("ip", NFT_TABLE if network is None else f"{NFT_TABLE}-{network}", body)]


def status_of(ctx: HostContext, recorded: list[Resource], named: dict[str, HostContext] | None = None) -> dict[str, Any]:
    """The `expose` part of `crossnet status`: per network of this host (`named`: the
    named networks' contexts) whether it is exposed, its address, and whether what
    exposing takes is programmed (recorded in applied.json by the last apply/sync) -- for a
    hidden network: whether it still is (a `hide` interrupted before it programmed the host)."""
    exposed = set(load(ctx.state_dir))
    have = {r.key() for r in recorded}
    out = []
    for name, one, net in [(ctx.cluster_name, ctx, None), *[(n, c, n) for n, c in (named or {}).items()]]:
        on = name in exposed
        want = [r.key() for r in resources(one, network=net)]
        # hidden but its table still on record (a `hide` killed before it programmed the host)
        left = not on and any(r.key() in have for r in resources(one, [name], network=net))
        out.append({"network": name, "exposed": on, "address": str(address(one)) if on else None,
                    "programmed": (on and all(k in have for k in want)) or left})
    return {"networks": out}


def status_text(info: dict[str, Any]) -> str:
    parts = []
    for n in info.get("networks") or []:
        if not n["exposed"] and n["programmed"]:
            parts.append(f"expose: network {n['network']}: not exposed [still programmed: run apply, or "
                         "`crossnet hide` again, or wait for the agent's sync]")
        elif not n["exposed"]:
            parts.append(f"expose: network {n['network']}: not exposed (`crossnet expose` gives this host an address in it)")
        else:
            how = "" if n["programmed"] else " [not programmed yet: run apply, or wait for the agent's sync]"
            parts.append(f"expose: network {n['network']}: this host is {n['address']}{how}")
    return "\n".join(parts)


__all__ = ["FILE", "NFT_TABLE", "address", "load", "lookup", "networks_of", "resources", "save", "status_of"]
