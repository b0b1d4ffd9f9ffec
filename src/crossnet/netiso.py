"""Isolation between the named networks of one host (docs/networks.md, docs/security.md).

Pure: given this host's context of every network (the top-level one named ``default``),
the nftables tables that keep them apart, as two `NftTable` resources of crossnet's own
(``inet crossnet_iso`` -- ``netdev crossnet_iso`` with backends vxlan and wireguard, below -- and
``arp crossnet_iso``). For every network N (bridge brN, this host's subnet sN, network
netN) and every other network O (bridge brO, network netO):

    forward  iifname vmap { brN : jump N_bridge, … }          (what N's containers send)
             ip saddr vmap { netN : jump N_forward, … }       (what any of N's addresses send)
    input    iifname vmap { brN : jump N_bridge, … }
             ip saddr vmap { netN : jump N_input, … }
    N_bridge   ip saddr != sN      drop  counter N_spoof    (a container sends only from its subnet)
               oifname { brO, … }  drop  counter N_cross    (whatever else is routed; never in input)
    N_forward  ip daddr netO       drop  counter N_cross    (one rule per O: this host's and every other host's)
    N_input    ip daddr netO       drop  counter N_gateway  (the other networks' gateways are this host's)
    N_forward, N_input  udp dport P / ip protocol gre  drop  counter N_tunnel  (no tunnel packet from a container)
    arp in   iifname brN arp daddr ip netO drop  counter N_arp      (no ARP answer for another network's gateway)
             iifname brN arp saddr ip != sN drop counter N_arp

Every packet meets at most two verdict-map lookups and the rules of its own network's
chains, whatever the number of networks: the per-pair rules this replaced
(``ip saddr netN ip daddr netO`` for every N and O in one chain) were evaluated one by one
for every forwarded packet (docs/networks.md#cost has what each layout costs). A source
that passed N_bridge is in sN, inside netN, so its packets also go through N_forward /
N_input.

With routed container veths (``datapath: ebpf``, docs/datapath.md) there is no bridge per
network: a container's host veth (``cnv…``, crossnet.containers.host_ifname) has no master
and a /32 route to the container. nftables cannot tell a routed veth's network from its
name, so the bridge verdict map becomes

    forward  iifname "cnv*" fib saddr . iif oif missing  drop  counter spoof   (strict reverse path:
    input    iifname "cnv*" fib saddr . iif oif missing  drop  counter spoof    a container sends only
                                                                                from its own /32)
    arp in   iifname "cnv*" arp operation request arp saddr ip netN arp daddr ip O  drop  counter N_arp

(requests only: the host resolves a routed container by ARP from whichever of its addresses
the kernel picks, possibly another network's gateway on ``lo``, so replies must pass) and
the address chains do the rest: a source that passed the reverse-path check is the
container's own address, in its own network. (The eBPF programs forward only within one
network: crossnet.ebpf, bpf/crossnet_tc.c.)

The last rule of N_forward and N_input drops what a container could make of the host's
tunnels: VXLAN (and GRE) packets carry no proof of their sender, and a tunnel socket
listens on every address of a host. A container of N that sends a hand-made VXLAN packet
with another network's VNI to its gateway, or to any host's address, would otherwise have
its inner packet delivered into that network: on this host, on the host it is sent to
(whatever source address masquerading gives it on the way). So no packet from a network's
addresses to the tunnel port (vxlan, auto, ovs-vxlan: the cluster's UDP port; ovs-gre: IP
protocol GRE) is forwarded or delivered, whatever its destination; real tunnel packets
come from underlay addresses, never from a network's. WireGuard's are authenticated and
host-gw has no tunnel (no rule).

Both tables are replaced atomically (`NftTable.ensure`), so adding or removing a network
never opens nor closes anything for the others. The text is what `nft list table` prints
back, line for line, but for the order of a set's elements, which nft chooses
(`NftTable.check`). Sets hold only names and verdicts: nft would merge adjacent prefixes
of an address set (``{ 10.250.0.0/16, 10.251.0.0/16 }`` lists back as ``10.250.0.0/15``),
so addresses get one rule each; the saddr map cannot merge (one verdict per network).

With backends vxlan, wireguard, ovs-gre and ovs-vxlan and the kernel datapath every
packet of a network enters this host through one of that network's own devices: its
bridge brN (what its containers here send; OVS: also what its containers elsewhere send,
below) or its tunnel device tN (what its containers elsewhere send: vxlan cnvx<vni>,
wireguard the network's WireGuard device; ``Backend.ingress_devices``). There
the checks are `netdev` ingress chains on those devices instead (table ``netdev
crossnet_iso``), which need no lookup to find the network and which nothing else crosses
(the outer VXLAN packets on the underlay NIC meet no rule; docs/networks.md#cost):

    N_bridge  (ingress brN)  ip saddr != sN  drop  counter N_spoof
                             ip daddr gwO    drop  counter N_gateway  (this host's address in O)
                             ip daddr netO   drop  counter N_cross
                             udp dport P     drop  counter N_tunnel   (vxlan, ovs-vxlan;
                                                                       ovs-gre: ip protocol gre)
    N_vxlan / N_wireguard    the same but the first (OVS: no such chain)
              (ingress tN)

A packet meets only its own network's chain, once per host. (`oifname` of the other
bridges has no place there, a netdev chain knowing no output: nothing routes an address
outside netO into brO.) Other backends keep the hook-wide layout: host-gw and auto's
direct peers carry every network through the underlay NIC.

With ovs-gre/ovs-vxlan the tunnel is a port of brN (its OVS bridge's internal port; the
OVS bridge holds N's tunnel ports only, keyed by N's VNI), so frames of N's containers on
other hosts, and ARP of their gateways, enter through brN and nothing else:
there sN in the `saddr !=` rules is netN (`spoof_sources`). A container still cannot send
from another network's address; other networks' frames never reach brN (their own OVS
bridge and tunnel key).
"""

from __future__ import annotations

from typing import Iterable

from crossnet.backends.base import HostContext
from crossnet.plan.resources import NftTable, Resource

TABLE = "crossnet_iso"
PRIORITY = "filter - 10"  # before other filter chains: a drop here is final
ROUTED_VETHS = '"cnv*"'  # crossnet.containers.host_ifname: every routed container veth
ROUTED_SPOOF = "spoof"  # the routed veths' one anti-spoofing counter (no network name lacks "_": no clash)


def routed(nets: dict[str, HostContext]) -> bool:
    """The networks have routed container veths (one datapath for all of them)."""
    return any(getattr(ctx, "datapath", "kernel") == "ebpf" for ctx in nets.values())


UNAUTHENTICATED_UDP = ("vxlan", "auto", "ovs-vxlan")  # backends whose tunnel is plain UDP on ctx.port
UNAUTHENTICATED_IP = {"ovs-gre": "gre"}  # backends whose tunnel is an IP protocol


def tunnel_matches(nets: dict[str, HostContext]) -> list[str]:
    """nft matches for the packets of this host's unauthenticated tunnels (none: host-gw,
    wireguard)."""
    ports = sorted({ctx.port for ctx in nets.values() if ctx.backend in UNAUTHENTICATED_UDP})
    protocols = sorted({UNAUTHENTICATED_IP[ctx.backend] for ctx in nets.values() if ctx.backend in UNAUTHENTICATED_IP})
    return ([f"udp dport {_set(str(p) for p in ports)}"] if ports else []) + [f"ip protocol {p}" for p in protocols]


def counter_names(nets: dict[str, HostContext]) -> list[str]:
    what = ("cross", "gateway") + (("tunnel",) if tunnel_matches(nets) else ())
    if routed(nets):  # one anti-spoofing rule for every routed veth
        return [ROUTED_SPOOF] + [f"{n}_{w}" for n in nets for w in what]
    return [f"{n}_{w}" for n in nets for w in ("spoof",) + what]


def spoof_sources(ctx: HostContext) -> str:
    """What may enter through the network's bridge: this host's subnet, or the whole
    network when the backend's tunnel is a port of that bridge (ovs-gre, ovs-vxlan)."""
    return str(ctx.network if ctx.backend.startswith("ovs-") else ctx.subnet)


def isolation_resources(nets: dict[str, HostContext],
                        own_devices: dict[str, list[str] | None] | None = None) -> list[Resource]:
    """The isolation tables for ``nets`` (name -> this host's context of that network);
    none for a single network. ``own_devices``: name -> the devices besides its bridge
    through which that network's packets from other hosts enter, none other's
    (``Backend.ingress_devices``; None: they share the underlay NIC). When every network
    has its own: the netdev layout, else the inet one."""
    if len(nets) < 2:
        return []
    own, routed_veths, tunnels = own_devices or {}, routed(nets), tunnel_matches(nets)
    if not routed_veths and all(own.get(name) is not None for name in nets):  # routed veths: no bridge to hook
        return _device_tables(nets, own, tunnels)
    chains: list[tuple[str, list[str]]] = []  # the regular chains, in the order `nft list` prints them
    arp: list[str] = []
    for name, ctx in nets.items():
        others = [o for n, o in nets.items() if n != name]
        if routed_veths:
            arp += [f'iifname {ROUTED_VETHS} arp operation request arp saddr ip {ctx.network} arp daddr ip {o.network} '
                    f'counter name "{name}_arp" drop' for o in others]
        else:
            sub, bridges = spoof_sources(ctx), _set(f'"{o.bridge}"' for o in others)
            chains.append((f"{name}_bridge", [f'ip saddr != {sub} counter name "{name}_spoof" drop',
                                              f'oifname {bridges} counter name "{name}_cross" drop']))
            arp += _arp_rules(name, ctx, others)
        tunnel = _tunnel_rules(name, tunnels)
        chains.append((f"{name}_forward", _cross_rules(name, others, "cross") + tunnel))
        chains.append((f"{name}_input", _cross_rules(name, others, "gateway") + tunnel))
    if routed_veths:
        first = f'iifname {ROUTED_VETHS} fib saddr . iif oif missing counter name "{ROUTED_SPOOF}" drop'
    else:
        first = "iifname vmap " + _set(f'"{ctx.bridge}" : jump {name}_bridge' for name, ctx in nets.items())
    hooks = {hook: [first, "ip saddr vmap " + _set(f"{ctx.network} : jump {name}_{hook}" for name, ctx in nets.items())]
             for hook in ("forward", "input")}
    return _tables(nets, chains, hooks, arp)


def _cross_rules(name: str, others: list[HostContext], counter: str) -> list[str]:
    """Drop what a packet of network ``name`` addresses to another network (counter name_counter)."""
    return [f'ip daddr {o.network} counter name "{name}_{counter}" drop' for o in others]


def _tunnel_rules(name: str, tunnels: list[str]) -> list[str]:
    """Drop a packet of network ``name`` to this host's unauthenticated tunnels (``tunnels``:
    tunnel_matches; counter name_tunnel)."""
    return [f'{m} counter name "{name}_tunnel" drop' for m in tunnels]


def _device_tables(nets: dict[str, HostContext], own: dict[str, list[str] | None],
                   tunnels: list[str]) -> list[Resource]:
    """The netdev layout: one ingress chain per bridge and per own device of each network."""
    chains: list[tuple[str, list[str], str]] = []
    arp: list[str] = []
    for name, ctx in nets.items():
        others = [o for n, o in nets.items() if n != name]
        drops = ([f'ip daddr {o.gateway} counter name "{name}_gateway" drop' for o in others]
                 + _cross_rules(name, others, "cross") + _tunnel_rules(name, tunnels))
        spoof = f'ip saddr != {spoof_sources(ctx)} counter name "{name}_spoof" drop'
        devices = own[name] or []  # not None: isolation_resources checked
        chains.append((f"{name}_bridge", [spoof, *drops], ctx.bridge))
        kind = ctx.backend.replace("-", "_")  # N_vxlan, N_wireguard (N_vxlan2 ... for a second device)
        chains += [(f"{name}_{kind}{i + 1 if i else ''}", drops, dev) for i, dev in enumerate(devices)]
        arp += _arp_rules(name, ctx, others)
    netdev = "\n\n".join([_counters(counter_names(nets))] + [_chain(n, rules, "ingress", dev) for n, rules, dev in chains])
    return [NftTable("netdev", TABLE, netdev), _arp_table(nets, arp)]


def _arp_rules(name: str, ctx: HostContext, others: list[HostContext]) -> list[str]:
    """The ARP rules of a network with a bridge: no answer for another network's address,
    none to a source outside what may enter through the bridge."""
    br, sub = f'"{ctx.bridge}"', spoof_sources(ctx)
    return ([f'iifname {br} arp saddr ip != {sub} counter name "{name}_arp" drop']
            + [f'iifname {br} arp daddr ip {o.network} counter name "{name}_arp" drop' for o in others])


def _set(elements: Iterable[str]) -> str:
    """An anonymous set as nft lists it back: one element bare, more in braces."""
    items = list(elements)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _chain(name: str, rules: list[str], hook: str | None = None, device: str | None = None) -> str:
    """A chain as nft lists it back (a base chain when ``hook``; on ``device``: netdev)."""
    on = f' device "{device}"' if device else ""
    head = f"\t\ttype filter hook {hook}{on} priority {PRIORITY}; policy accept;\n" if hook else ""
    return f"\tchain {name} {{\n{head}" + "".join(f"\t\t{r}\n" for r in rules) + "\t}"


def _counters(names: list[str]) -> str:
    return "\n".join(f"\tcounter {c} {{\n\t}}" for c in names)


def _arp_table(nets: dict[str, HostContext], arp: list[str]) -> NftTable:
    return NftTable("arp", TABLE, _counters([f"{n}_arp" for n in nets]) + "\n\n" + _chain("input", arp, "input"))


def _tables(nets: dict[str, HostContext], chains: list[tuple[str, list[str]]], hooks: dict[str, list[str]],
            arp: list[str]) -> list[Resource]:
    inet = "\n\n".join([_counters(counter_names(nets))] + [_chain(n, rules) for n, rules in chains]
                       + [_chain(hook, rules, hook) for hook, rules in hooks.items()])
    return [NftTable("inet", TABLE, inet), _arp_table(nets, arp)]
