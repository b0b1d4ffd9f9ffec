"""The static store: the cluster file (crossnet.config) behind the Store interface.

Hosts and subnets are fixed by the file; "acquiring" a lease returns the subnet the
file carves for this host, renew/release do nothing, and the watch reports the
whole host list again whenever the file changes (polled by modification time).
Not supported here: the bridge backend (its LAN ranges are not per-host subnets of
one overlay network; use `crossnet apply` for it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from crossnet.backends import get_backend
from crossnet.errors import ConfigError
from crossnet.leases import check_kept
from crossnet.store import (
    HostRecord,
    NetworkConfig,
    NotInitialized,
    PeerEvent,
    Snapshot,
    Store,
    StoreError,
    SubnetLease,
)

log = logging.getLogger("crossnet.agent")


class StaticStore(Store):
    kind = "static"

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 2.0):
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._accepted: dict[str, IPv4Network] = {}  # subnets handed out so far: an edit must not move them

    def describe(self) -> str:
        return f"cluster file {self.path}"

    def _load(self):
        from crossnet.config import load_cluster

        if not self.path.exists():
            raise NotInitialized(f"{self.path}: no such cluster file")
        return load_cluster(self.path)

    def _revision(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def get_config(self) -> NetworkConfig:
        cluster = self._load()
        if cluster.is_bridge:
            raise ConfigError(f"{self.path}: backend bridge is not supported by the agent; use `crossnet apply`")
        return NetworkConfig.of(cluster)  # the cluster file's network settings, as a store's config

    def _records(self) -> list[HostRecord]:
        cluster = self._load()
        backend = get_backend(cluster.backend)
        subnets = cluster.host_subnets()
        nets = [(n.name, cluster.network_subnets(j)) for j, n in enumerate(cluster.networks)]  # docs/networks.md
        # key: the subnet itself; age: the host's place in the file (the first one wins a
        # conflict; the agent validates these like any store's records, crossnet.store.records)
        return [
            HostRecord(h.name, h.address, subnets[h.name],
                       {**backend.host_data(cluster.name, h.name, h.address), **h.published_data()},
                       key=subnets[h.name], created=i + 1, networks={n: subs[h.name] for n, subs in nets})
            for i, h in enumerate(cluster.hosts)
        ]

    def _checked_records(self) -> list[HostRecord]:
        return self._accept(self._records())

    def _accept(self, records: list[HostRecord]) -> list[HostRecord]:
        """`records` (the file's hosts, in file order), refusing an edit that moves a
        subnet already handed out (it would give one host's subnet to another on every peer)."""
        for i, r in enumerate(records):
            try:
                self._check_kept(i, r, self._accepted.get(r.name))
            except ConfigError as exc:
                raise StoreError(f"ignoring this edit of the cluster file: {exc}") from None
        self._accepted.update({r.name: r.subnet for r in records})
        return records

    def acquire(self, cfg: NetworkConfig, name: str, address: IPv4Address, data: dict,
                previous: IPv4Network | None = None, previous_lease: int = 0, ttl: int | None = None) -> SubnetLease:
        records = self._records()
        for i, rec in enumerate(records):
            if rec.name == name:
                if rec.address != address:
                    raise StoreError(f"{self.path}: host {name} has address {rec.address}, but this host uses {address}")
                self._check_kept(i, rec, previous)
                self._accept(records)
                return SubnetLease(HostRecord(name, address, rec.subnet, data, networks=rec.networks), 0, 0)
        raise StoreError(f"{self.path}: no host named {name!r} in the cluster file")

    def _check_kept(self, index: int, rec: HostRecord, held: IPv4Network | None) -> None:
        check_kept(index, rec.name, held, rec.subnet, source=str(self.path),
                   start_over="stop its agent with --release first to renumber it")

    def renew(self, lease: SubnetLease) -> None:
        return None

    def release(self, lease: SubnetLease) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot(self._checked_records(), self._revision())

    def watch(self, since: int, stop: threading.Event) -> Iterator[list[PeerEvent]]:
        """On every change of the file: delete events for everyone, then put events
        for the new host list (the agent applies the net difference)."""
        seen = since
        known = {r.subnet: r for r in self._checked_records()}
        while not stop.wait(self.poll_interval):
            rev = self._revision()
            if rev == seen:
                continue
            seen = rev
            try:
                records = {r.subnet: r for r in self._checked_records()}
            except ConfigError:
                continue  # half-written or broken file: keep what we have
            except StoreError as exc:  # renumbering: keep what we have
                log.error("%s", exc)
                continue
            events = [PeerEvent("delete", s, None, rev) for s in known if s not in records]
            events += [PeerEvent("put", s, r, rev) for s, r in records.items() if not r.same_content(known.get(s))]
            known = records
            if events:
                yield events
