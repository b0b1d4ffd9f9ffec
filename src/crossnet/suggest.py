"""Suggestions for rejected values: an error that refuses a value names one that works
when there is one (`network: 192.168.0.0/16 overlaps the underlay ...; a free range:
10.0.0.0/16`). Pure functions of addresses and networks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network

# where container networks are usually taken from (RFC 1918), in this order
PRIVATE = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
MAX_CANDIDATES = 4096  # per prefix length: the search stays well under a millisecond or two


def _candidates(network: IPv4Network, plen: int, pinned: list[IPv4Network]) -> Iterator[IPv4Network]:
    if pinned:  # the one network of this size that holds every pinned subnet, if any
        if all(p.prefixlen >= plen for p in pinned):
            sup = {p.supernet(new_prefix=plen) for p in pinned}
            if len(sup) == 1:
                yield sup.pop()
        return
    if plen > network.prefixlen:  # smaller: inside the rejected network first
        yield from _first(network.subnets(new_prefix=plen))
    for block in PRIVATE:
        if plen >= block.prefixlen:
            yield from _first(block.subnets(new_prefix=plen))


def _first(nets: Iterable[IPv4Network]) -> Iterator[IPv4Network]:
    for i, n in enumerate(nets):
        if i >= MAX_CANDIDATES:
            return
        yield n


def free_network(network: IPv4Network, subnet_len: int, hosts: int, avoid_addresses: Iterable[IPv4Address],
                 avoid_networks: Iterable[IPv4Network] = (), pinned: Iterable[IPv4Network] = ()) -> IPv4Network | None:
    """A network of the same size as `network` or smaller that contains none of
    `avoid_addresses`, overlaps none of `avoid_networks`, holds every `pinned` subnet
    and still has a /`subnet_len` for each of `hosts` hosts; None when there is none."""
    addrs = list(avoid_addresses)
    nets = list(avoid_networks)
    pins = list(pinned)
    for plen in range(network.prefixlen, subnet_len):
        if (1 << (subnet_len - plen)) < hosts:
            break
        for cand in _candidates(network, plen, pins):
            if cand == network or cand.prefixlen != plen:
                continue
            if any(a in cand for a in addrs) or any(cand.overlaps(n) for n in nets):
                continue
            if all(p.subnet_of(cand) for p in pins):
                return cand
    return None
