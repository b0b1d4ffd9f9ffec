"""The subnet rules, pure (no I/O, no store, no kernel): which subnet a host gets and
when a change would be a forbidden renumbering. One module, used by all of crossnet's
ways of handing out subnets (flannel keeps its ``LocalManager`` rules apart from its
etcd ``Registry`` the same way):

* the cluster file (crossnet.config, for ``apply`` and the static store):
  :func:`carve_subnets` gives every host a block strictly in file order -- its pin, or the
  lowest free block -- so a host's block depends only on the hosts before it and
  appending a host never moves an earlier one; a pin that is an earlier host's block is
  a :class:`CarveError` naming that host's field;
* a store that leases subnets (crossnet.store.etcd, which keeps only the transactions):
  :func:`choose_subnet` keeps what the host had (its live lease's subnet, its previous,
  the one the store remembers for it) when that is still free, else the lowest free
  subnet nobody else remembers, else the lowest free one;
* "a host's subnet never moves" (``crossnet apply`` against its applied state, the
  static store against what it handed out): :func:`check_kept` refuses a renumbering
  with one line naming ``hosts[i].subnet`` and how to keep the subnet.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network

from crossnet.errors import ConfigError, IpamError

Reserved = IPv4Network | IPv4Address


def _as_network(item: Reserved) -> IPv4Network:
    return IPv4Network(item) if isinstance(item, IPv4Address) else item


def span(net: IPv4Network) -> tuple[int, int]:
    """Inclusive integer range [first, last] covered by ``net``."""
    return int(net.network_address), int(net.broadcast_address)


def _check_prefixlen(network: IPv4Network, prefixlen: int) -> None:
    if not network.prefixlen <= prefixlen <= 32:
        raise IpamError(
            f"block length /{prefixlen} does not fit in {network} (needs /{network.prefixlen}../32)"
        )


class CarveError(IpamError):
    """A carving problem that belongs to one host: ``hosts[index]``'s ``field``
    (``"subnet"`` or ``"address"``). ``owner`` is the index of the earlier host whose
    block is in the way (None: no such host, e.g. space ran out or a bad pin)."""

    def __init__(
        self,
        message: str,
        index: int,
        field: str,
        owner: int | None = None,
        block: IPv4Network | None = None,
    ) -> None:
        super().__init__(message)
        self.index, self.field, self.owner, self.block = index, field, owner, block


def _check_pin(network: IPv4Network, prefixlen: int, index: int, name: str, subnet: IPv4Network) -> None:
    if subnet.prefixlen != prefixlen:
        raise CarveError(f"host '{name}': pinned {subnet} is not a /{prefixlen}", index, "subnet")
    if not subnet.subnet_of(network):
        raise CarveError(f"host '{name}': pinned {subnet} is not inside {network}", index, "subnet")


class _Occupied:
    """Occupied address space as sorted, disjoint, merged inclusive integer spans
    (``starts[i]..ends[i]``): a lookup is one bisection, so carving n hosts is
    O(n log n) plus list inserts, not O(n²)."""

    def __init__(self, nets: Iterable[IPv4Network]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for net in nets:
            self.add(net)

    def add(self, net: IPv4Network) -> None:
        first, last = span(net)
        # merge with every span that overlaps or touches [first, last]
        lo = bisect.bisect_left(self._ends, first - 1)
        hi = bisect.bisect_right(self._starts, last + 1)
        if lo < hi:
            first = min(first, self._starts[lo])
            last = max(last, self._ends[hi - 1])
        self._starts[lo:hi] = [first]
        self._ends[lo:hi] = [last]

    def conflict_end(self, first: int, last: int) -> int | None:
        """End of the occupied run overlapping [first, last] that reaches furthest, or
        None if the range is free. (Runs are merged, so everything up to the returned
        end is occupied from the conflict on.)"""
        i = bisect.bisect_right(self._starts, last) - 1  # last run starting <= last
        if i >= 0 and self._ends[i] >= first:
            return self._ends[i]
        return None


def carve_subnets(
    network: IPv4Network,
    prefixlen: int,
    hosts: Sequence[tuple[str, IPv4Network | None]],
    reserved: Iterable[Reserved] = (),
    addresses: Sequence[IPv4Address | None] | None = None,
) -> dict[str, IPv4Network]:
    """Give every host a /``prefixlen`` block of ``network``, strictly in file order.

    Each host, in the given order, either keeps its pinned block (second tuple element)
    or takes the lowest block overlapping nothing ``reserved`` and no block of an
    earlier host. So a host's block depends only on the hosts before it: appending a
    host -- pinned or not -- never moves an earlier host's block. A pin that is already
    an earlier host's block is a :class:`CarveError` on that pin, never a reshuffle.

    ``addresses`` (bridge backend: the hosts' own LAN addresses, same order as
    ``hosts``): the blocks of a host and of the hosts after it avoid its address, and an
    address inside an earlier host's block is a :class:`CarveError` on that address.

    Pinned blocks are not checked against ``reserved`` or ``addresses`` (the caller
    decides what a pinned block may contain). Raises :class:`CarveError` for a bad pin,
    a collision or when space runs out, :class:`IpamError` for duplicate names.
    """
    _check_prefixlen(network, prefixlen)
    names = [name for name, _ in hosts]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise IpamError(f"duplicate host name '{dup}'")
    if addresses is not None and len(addresses) != len(hosts):
        raise IpamError(f"{len(addresses)} addresses for {len(hosts)} hosts")
    occupied = _Occupied(_as_network(r) for r in reserved)
    owners: dict[IPv4Network, int] = {}  # block -> index of the host that has it
    size = 1 << (32 - prefixlen)
    start, end = span(network)
    cursor = start  # lowest-first + only growing occupancy: never need to look back
    result: dict[str, IPv4Network] = {}
    for index, (name, subnet) in enumerate(hosts):
        address = addresses[index] if addresses is not None else None
        if address is not None:
            holder = owners.get(IPv4Network((address, prefixlen), strict=False))
            if holder is not None:
                block = result[names[holder]]
                raise CarveError(
                    f"host '{name}': address {address} is inside {block} of host "
                    f"'{names[holder]}' (blocks are carved in file order)",
                    index, "address", holder, block,
                )
            occupied.add(IPv4Network(address))
        if subnet is not None:
            _check_pin(network, prefixlen, index, name, subnet)
            holder = owners.get(subnet)
            if holder is not None:
                raise CarveError(
                    f"host '{name}': pinned {subnet} is already the block of host "
                    f"'{names[holder]}' (blocks are carved in file order)",
                    index, "subnet", holder, subnet,
                )
            block = subnet
        else:
            found = _next_free_block(occupied, cursor, size, end)
            if found is None:
                raise CarveError(
                    f"no free /{prefixlen} left in {network} for host '{name}'", index, "subnet"
                )
            cursor = found
            block = IPv4Network((cursor, prefixlen))
        occupied.add(block)
        owners[block] = index
        result[name] = block
    return result


def _next_free_block(occupied: _Occupied, cursor: int, size: int, end: int) -> int | None:
    while cursor + size - 1 <= end:
        conflict = occupied.conflict_end(cursor, cursor + size - 1)
        if conflict is None:
            return cursor
        cursor = (conflict // size + 1) * size  # first aligned block after the conflict
    return None


def count_free_blocks(
    network: IPv4Network, prefixlen: int, reserved: Iterable[Reserved] = ()
) -> int:
    """How many /``prefixlen`` blocks of ``network`` overlap none of ``reserved``."""
    _check_prefixlen(network, prefixlen)
    shift = 32 - prefixlen
    base, end = span(network)
    hit: list[tuple[int, int]] = []  # inclusive ranges of block indexes
    for item in reserved:
        first, last = span(_as_network(item))
        first, last = max(first, base), min(last, end)
        if first <= last:
            hit.append(((first - base) >> shift, (last - base) >> shift))
    return (1 << (prefixlen - network.prefixlen)) - _merged_length(hit)


def _merged_length(ranges: list[tuple[int, int]]) -> int:
    total, reach = 0, -1
    for first, last in sorted(ranges):
        first = max(first, reach + 1)
        if first <= last:
            total += last - first + 1
        reach = max(reach, last)
    return total


# --------------------------------------------------------------------------- store leases


class SubnetsExhausted(IpamError):
    """No free subnet left for a host (a store turns this into its own error)."""


def fits(network: IPv4Network, subnet_len: int, subnet: IPv4Network | None) -> bool:
    """``subnet`` is a /``subnet_len`` block of ``network`` (what a host may hold)."""
    return subnet is not None and subnet.prefixlen == subnet_len and subnet.subnet_of(network)


def _lowest_free(network: IPv4Network, subnet_len: int, occupied: Iterable[IPv4Network]) -> IPv4Network | None:
    size = 1 << (32 - subnet_len)
    start, end = span(network)
    found = _next_free_block(_Occupied(occupied), start, size, end)
    return None if found is None else IPv4Network((found, subnet_len))


def choose_subnet(
    network: IPv4Network,
    subnet_len: int,
    taken: Collection[IPv4Network],
    wanted: Sequence[IPv4Network | None] = (),
    mine: Collection[IPv4Network] = (),
    avoid: Collection[IPv4Network] = (),
) -> IPv4Network:
    """The subnet a host leases from a store, given the subnets ``taken`` (held by
    anyone, this host included):

    1. the first of ``wanted`` (in the caller's order of preference: the subnet its live
       lease holds, the one it persisted locally, the one the store remembers for it,
       those it holds) that is a /``subnet_len`` of ``network`` and free or in ``mine``
       (held by this host);
    2. else the lowest free subnet not in ``avoid`` (the ones other hosts remember: a
       host coming back after its lease expired gets its subnet again);
    3. else the lowest free subnet.

    Entries of ``taken`` that are not a /``subnet_len`` of ``network`` (a hostile or
    stale store key) block nothing. Raises :class:`SubnetsExhausted` when none is free.
    """
    taken_here = {s for s in taken if fits(network, subnet_len, s)}
    own = set(mine)
    for s in wanted:
        if fits(network, subnet_len, s) and (s not in taken_here or s in own):
            assert s is not None
            return s
    avoided = [s for s in avoid if fits(network, subnet_len, s)]
    choice = _lowest_free(network, subnet_len, [*taken_here, *avoided])
    if choice is None:
        choice = _lowest_free(network, subnet_len, taken_here)
    if choice is None:
        count = 1 << (subnet_len - network.prefixlen)
        raise SubnetsExhausted(
            f"network {network} has no free /{subnet_len} subnet left "
            f"({len(taken_here)} hosts hold all {count})"
        )
    return choice


# --------------------------------------------------------------------------- never renumber


def check_kept(
    index: int,
    host: str,
    held: IPv4Network | str | None,
    now: IPv4Network,
    *,
    holds: str = "holds",
    start_over: str,
    source: str = "",
) -> None:
    """A host's subnet never moves: ``now`` (what the cluster file gives host
    ``hosts[index]`` today) must be ``held`` (what it had: the applied state, the
    subnet a store handed out, as a network or as recorded text; None = nothing yet).
    Otherwise a :class:`ConfigError`
    naming ``hosts[index].subnet`` -- renumbering would leave its containers with
    stale addresses and give one host's subnet to another on every peer.
    ``holds`` says how it had it, ``start_over`` how to renumber on purpose."""
    if held is None or str(held) == str(now):
        return
    prefix = f"{source}: " if source else ""
    raise ConfigError(
        f"{prefix}hosts[{index}].subnet: the cluster file now gives host {host} {now}, but it {holds} {held} "
        f"(hosts inserted, removed or reordered before it, or network changed); keep it by pinning "
        f"'subnet: {held}' on host {host} (and adding new hosts at the end of the list), or {start_over}"
    )
