"""Isolation between the named networks of one host (docs/networks.md, docs/security.md).

Pure: given this host's context of every network (the top-level one named ``default``),
the nftables tables that keep them apart, as two `NftTable` resources of crossnet's own
(``inet crossnet_iso`` and ``arp crossnet_iso``). For every network N (bridge brN, this
host's subnet sN, network netN) and O = every other network's CIDR:

    forward  iifname brN ip saddr != sN        drop  counter N_spoof    (a container sends only from its subnet)
             ip saddr netN ip daddr O          drop  counter N_cross    (this host's and every other host's)
             iifname brN oifname <other bridges> drop counter N_cross   (whatever else is routed)
    input    iifname brN ip saddr != sN        drop  counter N_spoof
             iifname brN ip daddr O            drop  counter N_gateway  (the other networks' gateways are this host's)
             ip saddr netN ip daddr O          drop  counter N_gateway  (… also from N's containers on other hosts)
    arp in   iifname brN arp daddr ip O        drop  counter N_arp      (no ARP answer for another network's gateway)
             iifname brN arp saddr ip != sN    drop  counter N_arp

With routed container veths (``datapath: ebpf``, docs/datapath.md) there is no bridge per
network: a container's host veth (``cnv…``, crossnet.containers.host_ifname) has no master
and a /32 route to the container. nftables cannot tell a routed veth's network from its
name, so the rules above that name a bridge become

    forward  iifname "cnv*" fib saddr . iif oif missing  drop  counter spoof   (strict reverse path:
    input    iifname "cnv*" fib saddr . iif oif missing  drop  counter spoof    a container sends only
                                                                                from its own /32)
    arp in   iifname "cnv*" arp operation request arp saddr ip netN arp daddr ip O  drop  counter N_arp

(requests only: the host resolves a routed container by ARP from whichever of its addresses
the kernel picks, possibly another network's gateway on ``lo``, so replies must pass) and
the address rules (``ip saddr netN ip daddr O``) do the rest: a source that passed the
reverse-path check is the container's own address, in its own network. (The eBPF programs
forward only within one network: crossnet.ebpf, bpf/crossnet_tc.c.)

Both tables are replaced atomically (`NftTable.ensure`), so adding or removing a network
never opens nor closes anything for the others. The text is what `nft list table` prints
back, line for line (`NftTable.check`).

With ovs-gre/ovs-vxlan the tunnel is a port of brN (its OVS bridge's internal port), so
frames of N's containers on other hosts, and ARP of their gateways, enter through brN:
there sN in the `saddr !=` rules is netN (`spoof_sources`). A container still cannot send
from another network's address; other networks' frames never reach brN (their own OVS
bridge and tunnel key).
"""

from __future__ import annotations

from crossnet.backends.base import HostContext
from crossnet.plan.resources import NftTable, Resource

TABLE = "crossnet_iso"
PRIORITY = "filter - 10"  # before other filter chains: a drop here is final
ROUTED_VETHS = '"cnv*"'  # crossnet.containers.host_ifname: every routed container veth
ROUTED_SPOOF = "spoof"  # the routed veths' one anti-spoofing counter (no network name lacks "_": no clash)


def routed(nets: dict[str, HostContext]) -> bool:
    """The networks have routed container veths (one datapath for all of them)."""
    return any(getattr(ctx, "datapath", "kernel") == "ebpf" for ctx in nets.values())


def counter_names(nets: dict[str, HostContext]) -> list[str]:
    if routed(nets):  # one anti-spoofing rule for every routed veth
        return [ROUTED_SPOOF] + [f"{n}_{what}" for n in nets for what in ("cross", "gateway")]
    return [f"{n}_{what}" for n in nets for what in ("spoof", "cross", "gateway")]


def spoof_sources(ctx: HostContext) -> str:
    """What may enter through the network's bridge: this host's subnet, or the whole
    network when the backend's tunnel is a port of that bridge (ovs-gre, ovs-vxlan)."""
    return str(ctx.network if ctx.backend.startswith("ovs-") else ctx.subnet)


def isolation_resources(nets: dict[str, HostContext]) -> list[Resource]:
    """The isolation tables for ``nets`` (name -> this host's context of that network);
    none for a single network."""
    if len(nets) < 2:
        return []
    if routed(nets):
        return _routed_resources(nets)
    fwd: list[str] = []  # the order `nft list` prints them back in
    inp: list[str] = []
    arp: list[str] = []
    for name, ctx in nets.items():
        br, sub, net = f'"{ctx.bridge}"', spoof_sources(ctx), str(ctx.network)
        others = [o for n, o in nets.items() if n != name]  # one rule each: nft merges and reorders set elements
        fwd.append(f'iifname {br} ip saddr != {sub} counter name "{name}_spoof" drop')
        inp.append(f'iifname {br} ip saddr != {sub} counter name "{name}_spoof" drop')
        arp.append(f'iifname {br} arp saddr ip != {sub} counter name "{name}_arp" drop')
        for o in others:
            fwd += [f'ip saddr {net} ip daddr {o.network} counter name "{name}_cross" drop',
                    f'iifname {br} oifname "{o.bridge}" counter name "{name}_cross" drop']
            inp += [f'iifname {br} ip daddr {o.network} counter name "{name}_gateway" drop',
                    f'ip saddr {net} ip daddr {o.network} counter name "{name}_gateway" drop']
            arp.append(f'iifname {br} arp daddr ip {o.network} counter name "{name}_arp" drop')

    return _tables(nets, fwd, inp, arp)


def _routed_resources(nets: dict[str, HostContext]) -> list[Resource]:
    """The tables for routed container veths (module docstring)."""
    spoof = f'iifname {ROUTED_VETHS} fib saddr . iif oif missing counter name "{ROUTED_SPOOF}" drop'
    fwd, inp, arp = [spoof], [spoof], []
    for name, ctx in nets.items():
        for o in (o for n, o in nets.items() if n != name):
            fwd.append(f'ip saddr {ctx.network} ip daddr {o.network} counter name "{name}_cross" drop')
            inp.append(f'ip saddr {ctx.network} ip daddr {o.network} counter name "{name}_gateway" drop')
            arp.append(f'iifname {ROUTED_VETHS} arp operation request arp saddr ip {ctx.network} arp daddr ip {o.network} '
                       f'counter name "{name}_arp" drop')
    return _tables(nets, fwd, inp, arp)


def _tables(nets: dict[str, HostContext], fwd: list[str], inp: list[str], arp: list[str]) -> list[Resource]:
    def chain(hook: str, rules: list[str]) -> str:
        head = f"\ttype filter hook {hook} priority {PRIORITY}; policy accept;"
        return f"\tchain {hook} {{\n\t{head}\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}"

    def counters(names: list[str]) -> str:
        return "\n".join(f"\tcounter {c} {{\n\t}}" for c in names)

    inet = counters(counter_names(nets)) + "\n\n" + chain("forward", fwd) + "\n\n" + chain("input", inp)
    arps = counters([f"{n}_arp" for n in nets]) + "\n\n" + chain("input", arp)
    return [NftTable("inet", TABLE, inet), NftTable("arp", TABLE, arps)]
