"""An in-memory Store for driving the agent without etcd (as flannel tests its subnet
manager with a mock registry): one network config, host records keyed by subnet with
a lease each, a revision counter, and the watch events every change makes. A test
plays the other hosts (`join`, `leave`) and the store's failures (`expire`: a lease
that ran out; `unavailable`: etcd down).

Used by tests/unit/test_agent_sync.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

from crossnet.store import (
    HostRecord,
    LeaseLost,
    NetworkConfig,
    PeerEvent,
    Snapshot,
    Store,
    StoreUnavailable,
    SubnetLease,
)


class MemoryStore(Store):
    kind = "memory"

    def __init__(self, cfg: NetworkConfig, where: str = "memory store"):
        self.cfg = cfg
        self.where = where
        self.records: dict[IPv4Network, HostRecord] = {}
        self.revision = 1
        self.events: list[PeerEvent] = []
        self.unavailable = False
        self._lease = 100

    # ---- the other side: what a test does to the registry
    def _bump(self) -> int:
        self.revision += 1
        return self.revision

    def join(self, name: str, address: str, subnet: str | None = None, data: dict | None = None,
             networks: dict | None = None) -> HostRecord:
        """Another host registers (in the subnet given, else the lowest free one; ``networks``:
        its subnets of the named networks)."""
        net = IPv4Network(subnet) if subnet else self._free()
        for old in [s for s, r in self.records.items() if r.name == name and s != net]:
            del self.records[old]  # a host holds one subnet
        self._lease += 1
        rev = self._bump()
        rec = HostRecord(name, IPv4Address(address), net, dict(data or {}), lease=self._lease, revision=rev, key=net,
                         created=rev, networks={k: IPv4Network(v) for k, v in (networks or {}).items()})
        self.records[net] = rec
        self.events.append(PeerEvent("put", net, rec, rev))
        return rec

    def leave(self, name: str) -> None:
        """A host's record goes away (released, or its lease expired)."""
        net = next(s for s, r in self.records.items() if r.name == name)
        del self.records[net]
        self.events.append(PeerEvent("delete", net, None, self._bump()))

    expire = leave

    def events_since(self, revision: int) -> list[PeerEvent]:
        return [ev for ev in self.events if ev.revision > revision]

    def _free(self, previous: IPv4Network | None = None, name: str | None = None) -> IPv4Network:
        held = self.records.get(previous) if previous is not None else None
        if previous is not None and (held is None or held.name == name):
            return previous
        return next(s for s in self.cfg.network.subnets(new_prefix=self.cfg.subnet_len) if s not in self.records)

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailable("memory store: unavailable")

    # ---- the Store interface (what the agent calls)
    def describe(self) -> str:
        return self.where

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Like a store with servers (etcd): describe() names them."""
        self.where = ",".join(endpoints)

    def get_config(self) -> NetworkConfig:
        self._check()
        return self.cfg

    def acquire(self, cfg, name, address, data, previous=None, previous_lease=0, ttl=None) -> SubnetLease:
        self._check()
        net = self._free(previous, name)
        nets = self._free_networks(cfg, name)
        rec = self.join(name, str(address), str(net), data, networks=nets)
        return SubnetLease(HostRecord(name, rec.address, net, dict(data), networks=nets), rec.lease, ttl or cfg.ttl)

    def _free_networks(self, cfg, name: str) -> dict[str, IPv4Network]:
        """One subnet per named network: the one this host holds, else the lowest free (crossnet.leases)."""
        from crossnet.leases import choose_subnet

        out = {}
        for n in cfg.networks:
            held = {r.networks[n.name]: r.name for r in self.records.values() if n.name in r.networks}
            mine = [s for s, owner in held.items() if owner == name]
            out[n.name] = choose_subnet(n.network, n.subnet_len or cfg.subnet_len, held, wanted=mine, mine=mine)
        return out

    def renew(self, lease: SubnetLease) -> None:
        self._check()
        rec = self.records.get(lease.subnet)
        if rec is None or rec.lease != lease.lease_id:
            raise LeaseLost(f"lease {lease.lease_id:x} is gone")

    def release(self, lease: SubnetLease) -> None:
        self._check()
        if lease.subnet in self.records:
            self.leave(self.records[lease.subnet].name)

    def snapshot(self) -> Snapshot:
        self._check()
        return Snapshot(list(self.records.values()), self.revision)

    def watch(self, since: int, stop: threading.Event) -> Iterator[list[PeerEvent]]:
        self._check()
        events = self.events_since(since - 1)
        if events:
            yield events
