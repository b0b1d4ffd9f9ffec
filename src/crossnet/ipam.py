"""IP address management: container addresses of one host's subnet.

* Which subnet (block) a host gets is decided by the subnet rules in
  :mod:`crossnet.leases` (``carve_subnets``, ``count_free_blocks`` and ``CarveError`` are
  re-exported here under their old names).
* :class:`AddressPool` hands out container addresses of one host's subnet and persists
  them in a JSON file, safely across concurrent processes (``flock`` + atomic replace).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from crossnet.state import check_state_dir, lock_fd, write_json_atomic
from crossnet.errors import IpamError
from crossnet.leases import CarveError, carve_subnets, count_free_blocks, span
from crossnet.stateformat import upgrade

__all__ = ["STATE_VERSION", "AddressPool", "Allocation", "CarveError", "carve_subnets", "count_free_blocks"]

STATE_VERSION = 1

# --------------------------------------------------------------------------- state file


def _ensure_dir(directory: Path) -> None:
    """Create ``directory`` and missing parents with mode 0o700 (existing ones untouched)."""
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask


# --------------------------------------------------------------------------- pool


@dataclass
class Allocation:
    key: str
    address: IPv4Address
    meta: dict[str, Any] = field(default_factory=dict)
    # set by allocate() when this call created the entry: the pointer before it (for undo)
    created: bool = field(default=False, compare=False, repr=False)
    previous_last: IPv4Address | None = field(default=None, compare=False, repr=False)


@dataclass
class _State:
    last: IPv4Address | None
    allocations: dict[str, Allocation]

    def owner(self, address: IPv4Address) -> str | None:
        return next((a.key for a in self.allocations.values() if a.address == address), None)


class AddressPool:
    """Persistent allocator of container addresses in one host's subnet.

    ``subnet`` is the network containers live in (its network and broadcast addresses are
    never handed out), ``usable`` the part this pool hands out (default: all of
    ``subnet``), ``reserved`` addresses are never handed out (gateway, host addresses).
    """

    def __init__(
        self,
        path: Path | str,
        subnet: IPv4Network,
        reserved: Iterable[IPv4Address] = (),
        usable: IPv4Network | None = None,
    ) -> None:
        self.path = Path(path)
        self.lock_path = Path(f"{self.path}.lock")
        self.subnet = subnet
        self.usable = usable if usable is not None else subnet
        if not self.usable.subnet_of(subnet):
            raise IpamError(f"usable range {self.usable} is not inside subnet {subnet}")
        self.reserved = frozenset(reserved)
        if subnet.prefixlen <= 30:
            self.reserved |= {subnet.network_address, subnet.broadcast_address}

    # ---- public API

    def allocate(
        self,
        key: str,
        requested: IPv4Address | None = None,
        meta: dict[str, Any] | None = None,
        meta_for: Callable[[IPv4Address], dict[str, Any]] | None = None,
        durable: bool = True,
    ) -> Allocation:
        """Address for ``key``: its existing one, ``requested``, or the next free one
        after the last handed out (round robin, wrapping). Existing meta is kept; a new
        allocation records ``meta`` plus ``meta_for(address)`` (metadata that depends
        on the address, e.g. a MAC derived from it) in the same write. ``durable=False``:
        the write survives a crash of the process, not necessarily a power loss
        (write_text_atomic's sync_dir; for a caller whose allocation dies with the machine)."""
        with self._locked():
            state = self._read()
            existing = state.allocations.get(key)
            if existing is not None:
                if requested is not None and requested != existing.address:
                    raise IpamError(
                        f"'{key}' already has {existing.address}, cannot also take {requested}"
                    )
                return existing
            if requested is not None:
                address = self._check_requested(state, requested)
            else:
                address = self._next(state, key)
            alloc = Allocation(key, address, {**(meta or {}), **(meta_for(address) if meta_for else {})},
                               created=True, previous_last=state.last)
            state.allocations[key] = alloc
            state.last = address
            self._write(state, durable)
            return alloc

    def release(self, key: str) -> Allocation | None:
        with self._locked():
            state = self._read()
            alloc = state.allocations.pop(key, None)
            if alloc is not None:
                self._write(state)
            return alloc

    def undo(self, alloc: Allocation) -> None:
        """Take back an allocation this pool's allocate() just created (the attach it was
        for failed): the entry goes and the next-address pointer moves back, unless
        another allocation came since (then only the entry goes). An allocation that was
        not created by that call, or that changed meanwhile, is left alone. (The entry may
        already be released, e.g. by a detach that undid the attach: the pointer still
        moves back.)"""
        if not alloc.created:
            return
        with self._locked():
            state = self._read()
            current = state.allocations.get(alloc.key)
            if current is not None and current.address != alloc.address:
                return
            changed = state.allocations.pop(alloc.key, None) is not None
            if state.last == alloc.address:
                state.last = alloc.previous_last
                changed = True
            if changed:
                self._write(state)

    def release_if(self, key: str, expected: Allocation,
                   before: Callable[[Allocation], bool] | None = None) -> Allocation | None:
        """release(key) only if the entry is still ``expected`` (same address and meta):
        a collector that judged an entry stale never removes one re-made meanwhile.
        ``before(entry)`` runs under the pool's lock first (no allocation can happen
        meanwhile); when it returns False nothing is released."""
        with self._locked():
            state = self._read()
            current = state.allocations.get(key)
            if current is None or current.address != expected.address or current.meta != expected.meta:
                return None
            if before is not None and not before(current):
                return None
            del state.allocations[key]
            self._write(state)
            return current

    def get(self, key: str) -> Allocation | None:
        return self._read().allocations.get(key)

    def entries(self) -> dict[str, Allocation]:
        return self._read().allocations

    def update_meta(self, key: str, meta: dict[str, Any], durable: bool = True) -> None:
        """Merge ``meta`` into the allocation's meta (``dict.update``; ``durable``: as
        for allocate)."""
        with self._locked():
            state = self._read()
            alloc = state.allocations.get(key)
            if alloc is None:
                raise IpamError(f"no address allocated for '{key}' in {self.path}")
            alloc.meta.update(meta)
            self._write(state, durable)

    # ---- choosing addresses

    def _check_requested(self, state: _State, address: IPv4Address) -> IPv4Address:
        if address not in self.usable:
            raise IpamError(f"requested address {address} is outside {self.usable}")
        if address in self.reserved:
            raise IpamError(f"requested address {address} is reserved in {self.subnet}")
        owner = state.owner(address)
        if owner is not None:
            raise IpamError(f"requested address {address} is already taken by '{owner}'")
        return address

    def _next(self, state: _State, key: str) -> IPv4Address:
        taken = {a.address for a in state.allocations.values()}
        for address in self._round_robin(state.last):
            if address not in taken and address not in self.reserved:
                return address
        raise IpamError(
            f"no free address left in {self.usable} for '{key}' ({len(taken)} allocated)"
        )

    def _round_robin(self, last: IPv4Address | None) -> Iterator[IPv4Address]:
        first, end = span(self.usable)
        start = int(last) + 1 if last is not None and first <= int(last) < end else first
        for value in range(start, end + 1):
            yield IPv4Address(value)
        for value in range(first, start):
            yield IPv4Address(value)

    # ---- persistence

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _ensure_dir(self.path.parent)
        check_state_dir(self.path.parent)
        fd = lock_fd(self.lock_path)  # 0600, replaced if others could open it
        try:
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _read(self) -> _State:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _State(None, {})
        except (OSError, ValueError) as exc:
            raise IpamError(
                f"{self.path}: unreadable IPAM state: {exc}".replace("\n", " ")
            ) from exc
        return self._decode(raw)

    def _decode(self, raw: Any) -> _State:
        try:
            raw = upgrade("ipam.json", raw, self.path)  # older formats migrated, newer refused
            if IPv4Network(raw["subnet"]) != self.subnet:
                raise IpamError(
                    f"{self.path}: state is for subnet {raw['subnet']}, not {self.subnet}"
                )
            last = IPv4Address(raw["last"]) if raw.get("last") else None
            allocations = {
                key: Allocation(key, IPv4Address(entry["address"]), dict(entry.get("meta") or {}))
                for key, entry in raw["allocations"].items()
            }
        except IpamError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise IpamError(f"{self.path}: malformed IPAM state: {exc!r}") from exc
        return _State(last, allocations)

    def _write(self, state: _State, durable: bool = True) -> None:
        data = {
            "version": STATE_VERSION,
            "subnet": str(self.subnet),
            "last": str(state.last) if state.last is not None else None,
            "allocations": {
                key: {"address": str(a.address), "meta": a.meta}
                for key, a in state.allocations.items()
            },
        }
        write_json_atomic(self.path, data, sync_dir=durable)
