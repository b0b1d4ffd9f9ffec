"""Cluster state store: where hosts find the network config, their subnet lease and
their peers (like flannel's subnet.Manager). Two implementations:

* :mod:`crossnet.store.static` - the cluster file: fixed hosts, subnets carved from the file.
* :mod:`crossnet.store.etcd` - etcd v3: hosts register themselves and lease a subnet
  (atomic transaction, TTL-bound etcd lease), peers come and go through a watch.

The agent (crossnet.agent) only talks to the :class:`Store` interface.
"""

from __future__ import annotations

import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet import backends
from crossnet.errors import ConfigError, CrossnetError

if TYPE_CHECKING:
    from crossnet.netmodel import NetworkConfig


def __getattr__(name: str) -> Any:
    """``NetworkConfig`` and ``DEFAULT_TTL``: the network config is the one network model
    (crossnet.netmodel, pydantic), imported when first asked for, so that commands that
    use the store without reading its config (mesh status, `crossnet check`) need not
    load pydantic."""
    if name in ("NetworkConfig", "DEFAULT_TTL"):
        from crossnet import netmodel

        return getattr(netmodel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# backends that work with a leased per-host subnet (bridge needs LAN ranges: static file only)
STORE_BACKENDS = backends.store_backend_names()
HOST_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")  # fullmatch: "$" accepts a trailing newline


class StoreError(CrossnetError):
    """The store answered, but not with what we need (bad or missing data, no free subnet)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (retry later)."""


class NotInitialized(StoreError):
    """No network config in the store yet."""


class LeaseLost(StoreError):
    """Our subnet lease no longer exists in the store."""


# the keys of a record's `data` crossnet reads: what the backends publish (host_data,
# local_data; tests/unit/test_store_records.py checks every backend's) and
# crossnet.store.records validates; any other key a store writer adds is dropped on reading
DATA_KEYS = ("vtep_mac", "gw_mac", "wireguard_key")


@dataclass
class HostRecord:
    """What one host publishes: its underlay address, subnet and backend data."""

    name: str
    address: IPv4Address
    subnet: IPv4Network
    data: dict = field(default_factory=dict)  # backend.host_data() (e.g. vtep_mac)
    lease: int = 0  # store lease id (etcd), 0 for the static store
    revision: int = 0  # store revision of this record (etcd mod_revision)
    key: IPv4Network | None = field(default=None, compare=False)  # the subnet its store key names
    created: int = field(default=0, compare=False)  # age: etcd create_revision, cluster file order (lower = older)
    networks: dict[str, IPv4Network] = field(default_factory=dict)  # named network -> this host's subnet of it

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "address": str(self.address), "subnet": str(self.subnet), "data": self.data}
        if self.networks:  # none: the record reads as it always did
            out["networks"] = {k: str(v) for k, v in sorted(self.networks.items())}
        return out

    @classmethod
    def from_json(cls, data: Any, lease: int = 0, revision: int = 0, key: IPv4Network | None = None,
                  created: int = 0) -> HostRecord:
        try:
            if not isinstance(data, dict) or not isinstance(data["name"], str):
                raise TypeError("expected an object with a string name")
            if not isinstance(data["address"], str) or not isinstance(data["subnet"], str):
                raise TypeError("address and subnet must be strings")
            extra = data.get("data") or {}
            if not isinstance(extra, dict):
                raise TypeError("data must be an object")
            return cls(
                name=data["name"],
                address=IPv4Address(data["address"]),
                subnet=IPv4Network(data["subnet"]),
                data={k: v for k, v in extra.items() if k in DATA_KEYS},
                lease=lease,
                revision=revision,
                key=key,
                created=created,
                networks=_record_networks(data.get("networks")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"bad host record {json.dumps(data)[:200]}: {exc}") from None

    def same_content(self, other: HostRecord | None) -> bool:
        return other is not None and self.to_json() == other.to_json()


MAX_RECORD_NETWORKS = 64  # = netmodel.MAX_NETWORKS (not imported: keeps pydantic out)
NETWORK_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,11}")


def _record_networks(value: Any) -> dict[str, IPv4Network]:
    """A record's ``networks`` ({name: subnet}): safe names, IPv4 networks; else TypeError/ValueError."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_RECORD_NETWORKS:
        raise TypeError(f"networks must be an object of at most {MAX_RECORD_NETWORKS} network names")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not NETWORK_NAME_RE.fullmatch(k) or not isinstance(v, str):
            raise TypeError("networks: expected network name -> subnet string")
        out[k] = IPv4Network(v)
    return out


@dataclass
class SubnetLease:
    """This host's registration: its record and the store lease keeping it alive."""

    record: HostRecord
    lease_id: int
    ttl: int

    @property
    def subnet(self) -> IPv4Network:
        return self.record.subnet

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "lease": self.lease_id, "ttl": self.ttl}

    @classmethod
    def from_json(cls, data: dict) -> SubnetLease:
        return cls(HostRecord.from_json(data, lease=int(data.get("lease", 0))), int(data.get("lease", 0)), int(data.get("ttl", 0)))


@dataclass
class PeerEvent:
    """A change seen by watch(): kind is "put" (record added/changed) or "delete".
    `subnet` is the subnet the record's key names (its value may claim another: the
    agent validates it, crossnet.store.records); a put whose value is unreadable has
    no record and says why in `error`."""

    kind: str
    subnet: IPv4Network
    record: HostRecord | None  # None for delete (and for an unreadable put)
    revision: int
    error: str | None = None


@dataclass
class Snapshot:
    hosts: list[HostRecord]
    revision: int
    invalid: dict[IPv4Network, str] = field(default_factory=dict)  # key -> why its value is unreadable


class Store(ABC):
    """The interface the agent uses. Implementations raise StoreUnavailable for
    transient problems (retry), StoreError/ConfigError for real ones."""

    kind: str = "store"
    config_watch: bool = False  # watch_config reports changes of the network config

    @abstractmethod
    def describe(self) -> str:
        """One line for logs: where the store is."""

    @abstractmethod
    def get_config(self) -> NetworkConfig:
        """The network config; NotInitialized if there is none."""

    @abstractmethod
    def acquire(self, cfg: NetworkConfig, name: str, address: IPv4Address, data: dict,
                previous: IPv4Network | None = None, previous_lease: int = 0, ttl: int | None = None) -> SubnetLease:
        """Register this host and lease a subnet atomically: keep/reuse `previous`
        (or this host's last subnet) if still free, else the lowest free one."""

    @abstractmethod
    def renew(self, lease: SubnetLease) -> None:
        """Keep the lease alive; LeaseLost if it is gone."""

    @abstractmethod
    def release(self, lease: SubnetLease) -> None:
        """Give the subnet back and forget this host."""

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """Every registered host (this one included) and the store revision."""

    @abstractmethod
    def watch(self, since: int, stop: threading.Event) -> Iterator[list[PeerEvent]]:
        """Batches of changes after revision `since`; raises StoreUnavailable when the
        connection breaks (the caller resumes from the last revision it saw)."""

    # containers: what `crossnet check` on any host pings (optional channel)

    def publish_containers(self, lease: SubnetLease, containers: list[dict[str, str]]) -> None:
        """Publish this host's containers (``[{"id", "address", "name"?}]``) next to its
        registration, bound to its lease (they vanish with it). The default: the store
        has no channel between hosts (the cluster file), nothing is published."""

    def containers(self) -> dict[str, list[dict[str, str]]] | None:
        """host name -> the containers it published; None when the store has no such
        channel (the cluster file: peers' containers are unknown)."""
        return None

    def containers_at(self) -> tuple[dict[str, list[dict[str, str]]] | None, int]:
        """:meth:`containers` and the revision to watch from (:meth:`watch_containers`)."""
        return self.containers(), 0

    def watch_containers(self, since: int, stop: threading.Event, on_open: Any = None) -> Iterator[int]:
        """Revisions after ``since`` at which some host's published containers changed
        (crossnet's DNS follows them); ``on_open(conn)`` gets the watch's connection. The
        default: no channel, nothing ever changes."""
        return iter(())

    def watch_config(self, since: int, stop: threading.Event) -> Iterator[int]:
        """Revisions (after ``since``) at which the network config changed (the agent
        follows its named networks); only when ``config_watch``."""
        return iter(())

    def interrupt_watch(self) -> None:
        """Break a blocked `watch` read from another thread (the agent's keepalive when the
        store looks dead). The default: watch does not block on a connection."""

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Use these servers from the next request on (a store with servers: etcd)."""
        raise StoreError(f"the {self.kind} store has no servers to change")

    def close(self) -> None:
        pass


def clean_containers(items: Any) -> list[dict[str, str]]:
    """Keep the well-formed container entries (id, IPv4 address, optional name, optional
    network), sorted by id. A name that is not a DNS name (crossnet.dns.name_problem) is
    dropped, the entry kept: what is published and what is read from the store only carries
    names DNS may serve. ``network``: the named network the container is attached to
    (docs/networks.md; absent or ``default``: the top-level network); an entry whose
    network is not a network name is dropped whole (it cannot be placed in any network)."""
    from crossnet.dns import name_problem

    out = []
    for c in items if isinstance(items, list) else []:
        if not isinstance(c, dict) or not c.get("id") or not c.get("address"):
            continue
        try:
            addr = str(IPv4Address(str(c["address"]).split("/")[0]))
        except ValueError:
            continue
        item = {"id": str(c["id"]), "address": addr}
        if c.get("name") and name_problem(c["name"]) is None:
            item["name"] = str(c["name"])
        net = c.get("network")
        if net is not None and net != "default":
            if not isinstance(net, str) or not NETWORK_NAME_RE.fullmatch(net):
                continue
            item["network"] = net
        out.append(item)
    return sorted(out, key=lambda c: (c["id"], c["address"]))


def validate_host_name(name: str) -> str:
    if not HOST_NAME_RE.fullmatch(name or ""):
        raise ConfigError(f"--name: invalid host name {name!r} (1..63 of letters, digits, '.', '_', '-')")
    return name


__all__ = [
    "DEFAULT_TTL",
    "STORE_BACKENDS",
    "HostRecord",
    "LeaseLost",
    "NetworkConfig",
    "NotInitialized",
    "PeerEvent",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SubnetLease",
    "clean_containers",
    "validate_host_name",
]
