"""The static store: the cluster file (crossnet.config) behind the Store interface.

Hosts and subnets are fixed by the file; "acquiring" a lease returns the subnet the
file carves for this host, renew/release do nothing, and the watch reports the
whole host list again whenever the file changes (polled by modification time).
Not supported here: the bridge backend (its LAN ranges are not per-host subnets of
one overlay network; use `crossnet apply` for it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from crossnet.backends import get_backend
from crossnet.errors import ConfigError
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


class StaticStore(Store):
    kind = "static"

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 2.0):
        self.path = Path(path)
        self.poll_interval = poll_interval

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
        return NetworkConfig(
            network=cluster.container_network(),
            backend=cluster.backend,
            subnet_len=cluster.subnet_len,
            name=cluster.name,
            masquerade=cluster.masquerade,
            mtu=cluster.mtu,
            vni=cluster.vxlan.vni,
            port=cluster.vxlan.port,
            bridge=cluster.bridge,
        )

    def _records(self) -> list[HostRecord]:
        cluster = self._load()
        backend = get_backend(cluster.backend)
        subnets = cluster.host_subnets()
        return [
            HostRecord(h.name, h.address, subnets[h.name], backend.host_data(cluster.name, h.name, h.address))
            for h in cluster.hosts
        ]

    def acquire(self, cfg: NetworkConfig, name: str, address: IPv4Address, data: dict,
                previous: IPv4Network | None = None, previous_lease: int = 0, ttl: int | None = None) -> SubnetLease:
        for rec in self._records():
            if rec.name == name:
                if rec.address != address:
                    raise StoreError(f"{self.path}: host {name} has address {rec.address}, but this host uses {address}")
                return SubnetLease(HostRecord(name, address, rec.subnet, data), 0, 0)
        raise StoreError(f"{self.path}: no host named {name!r} in the cluster file")

    def renew(self, lease: SubnetLease) -> None:
        return None

    def release(self, lease: SubnetLease) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot(self._records(), self._revision())

    def watch(self, since: int, stop: threading.Event) -> Iterator[list[PeerEvent]]:
        """On every change of the file: delete events for everyone, then put events
        for the new host list (the agent applies the net difference)."""
        seen = since
        known = {r.subnet: r for r in self._records()}
        while not stop.wait(self.poll_interval):
            rev = self._revision()
            if rev == seen:
                continue
            seen = rev
            try:
                records = {r.subnet: r for r in self._records()}
            except ConfigError:
                continue  # half-written or broken file: keep what we have
            events = [PeerEvent("delete", s, None, rev) for s in known if s not in records]
            events += [PeerEvent("put", s, r, rev) for s, r in records.items() if not r.same_content(known.get(s))]
            known = records
            if events:
                yield events
