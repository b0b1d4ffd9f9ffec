"""The etcd store. Keys under a prefix (default ``/crossnet``)::

    <prefix>/config                    network config (JSON), written once by `crossnet etcd init`
    <prefix>/subnets/<a.b.c.d>-<len>   one per live host: {"name", "address", "subnet", "data"},
                                       attached to the host's etcd lease (TTL): the lease
                                       expires or is revoked -> the key vanishes -> peers
                                       remove that host's routes/FDB/neighbours
    <prefix>/containers/<name>         {"name", "subnet", "containers": [{"id", "address", "name"?, "network"?}]}:
                                       the host's attached containers, bound to its lease like
                                       its subnet key (read by `crossnet check` on any host)
    <prefix>/networks/<net>/<a.b.c.d>-<len>
                                       one per live host and named network (docs/networks.md):
                                       {"name", "subnet"}, bound to the host's lease like its
                                       subnet key; the host's record lists them ("networks")
    <prefix>/hosts/<name>              {"subnet", "address", "networks"?}: the subnets this host had last,
                                       without a lease, so a host coming back after its lease
                                       expired gets the same subnet if still free; deleted by
                                       `crossnet agent --release`

A subnet is taken with one transaction: "create <prefix>/subnets/X if it does not
exist (create_revision == 0), or if it still is the record this host read
(mod_revision unchanged)"; concurrent agents racing for the same subnet get exactly
one winner, the others re-read and try the next candidate. Which subnet to try is
decided by the subnet rules (crossnet.leases.choose_subnet); this module is the I/O.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from crossnet import netconfig
from crossnet.errors import ConfigError, CrossnetError
from crossnet.leases import SubnetsExhausted, choose_subnet
from crossnet.store import (
    HostRecord,
    LeaseLost,
    NotInitialized,
    PeerEvent,
    Snapshot,
    Store,
    StoreError,
    StoreUnavailable,
    SubnetLease,
    clean_containers,
)
from crossnet.store.etcdclient import (
    GRPC_NOT_FOUND,
    KV,
    WATCH_IDLE_TIMEOUT,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    WatchCompacted,
)

if TYPE_CHECKING:
    from crossnet.netmodel import NetworkConfig

DEFAULT_PREFIX = "/crossnet"
ACQUIRE_ATTEMPTS = 64


def subnet_key_part(subnet: IPv4Network) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(part: str) -> IPv4Network | None:
    addr, sep, plen = part.rpartition("-")
    if not sep:
        return None
    try:
        return IPv4Network(f"{addr}/{plen}")
    except ValueError:
        return None


def _owner(kv: KV) -> str | None:
    """The host name a named network's subnet key holds (None: unreadable)."""
    try:
        data = json.loads(kv.value)
    except ValueError:
        return None
    return data.get("name") if isinstance(data, dict) else None


def _is_network(text: str) -> bool:
    try:
        IPv4Network(text)
    except ValueError:
        return False
    return True


def normalize_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    if prefix == "/" or any(c.isspace() for c in prefix):
        raise ConfigError(f"--prefix: invalid etcd key prefix {prefix!r}")
    return prefix


def _unavailable(exc: EtcdError) -> StoreError:
    if isinstance(exc, EtcdUnavailable):
        return StoreUnavailable(str(exc))
    return StoreError(f"etcd: {exc}")


class EtcdStore(Store):
    kind = "etcd"
    config_watch = True

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX):
        self.client = client
        self.prefix = normalize_prefix(prefix)
        self._watch_conn = None
        self._config_conn = None
        self._watch_lock = threading.Lock()

    @classmethod
    def connect(cls, endpoints: str, prefix: str = DEFAULT_PREFIX, cert: str | None = None, key: str | None = None,
                cacert: str | None = None, timeout: float = 5.0) -> EtcdStore:
        return cls(EtcdClient(endpoints, cert=cert, key=key, cacert=cacert, timeout=timeout), prefix)

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Talk to these etcd endpoints from the next request on (EtcdClient.set_endpoints)."""
        self.client.set_endpoints(endpoints)

    # ------------------------------------------------------------------ keys

    @property
    def config_key(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        return f"{self.prefix}/subnets/"

    @property
    def hosts_prefix(self) -> str:
        return f"{self.prefix}/hosts/"

    @property
    def containers_prefix(self) -> str:
        return f"{self.prefix}/containers/"

    @property
    def networks_prefix(self) -> str:
        return f"{self.prefix}/networks/"

    def network_key(self, network: str, subnet: IPv4Network) -> str:
        return f"{self.networks_prefix}{network}/{subnet_key_part(subnet)}"

    def containers_key(self, name: str) -> str:
        return self.containers_prefix + name

    def subnet_key(self, subnet: IPv4Network) -> str:
        return self.subnets_prefix + subnet_key_part(subnet)

    def host_key(self, name: str) -> str:
        return self.hosts_prefix + name

    def describe(self) -> str:
        return f"etcd {self.client.describe()} prefix {self.prefix}"

    # ------------------------------------------------------------------ config

    def get_config(self) -> NetworkConfig:
        try:
            kv = self.client.get(self.config_key)
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if kv is None:
            raise NotInitialized(
                f"no network config at {self.config_key} in etcd {self.client.describe()}; "
                f"run `crossnet etcd init --etcd URL --network CIDR` first"
            )
        try:
            data = json.loads(kv.value)
        except ValueError:
            raise StoreError(f"etcd {self.config_key}: not valid JSON") from None
        try:
            return netconfig.parse(data, source=f"etcd {self.config_key}")
        except ConfigError as exc:  # someone wrote a bad config: a store problem, not a CLI one
            raise StoreError(str(exc)) from None
        except CrossnetError as exc:  # the validating helper failed (crossnet.netconfig): try again later
            raise StoreError(f"etcd {self.config_key}: {exc}") from None

    def init_config(self, cfg: NetworkConfig, force: bool = False) -> str:
        """Write the config once. Returns "created", "unchanged" or "replaced"."""
        value = json.dumps(cfg.to_json(), sort_keys=True)
        c = self.client
        try:
            ok, responses, _ = c.txn([c.cmp_create(self.config_key, 0)], [c.op_put(self.config_key, value)],
                                     [c.op_range(self.config_key)])
            if ok:
                return "created"
            kvs = responses[0]["response_range"].get("kvs", [])
            current = KV.from_json(kvs[0]) if kvs else None
            if current is not None:
                try:
                    # the settings' values, not their JSON: to_json() writes WireGuard's and auto's
                    # settings only when given, so the same config reads back in other words
                    if netconfig.parse(json.loads(current.value)).model_dump() == cfg.model_dump():
                        return "unchanged"
                except (ValueError, ConfigError):
                    pass
            if not force:
                old = current.value.decode(errors="replace") if current else "?"
                raise ConfigError(
                    f"--network: a different network config already exists at {self.config_key} ({old}); "
                    "use --force to replace it (then restart every agent)"
                )
            c.put(self.config_key, value)
            return "replaced"
        except EtcdError as exc:
            raise _unavailable(exc) from None

    # ------------------------------------------------------------------ records

    def _record(self, kv: KV) -> HostRecord | None:
        try:
            return self._parse(kv)
        except StoreError:
            return None

    def _parse(self, kv: KV) -> HostRecord:
        """The record in `kv`, with the subnet its key names (None: not a subnet key)
        and its age (create_revision); StoreError when the value is unreadable."""
        key = parse_subnet_key(kv.key[len(self.subnets_prefix):]) if kv.key.startswith(self.subnets_prefix) else None
        try:
            data = json.loads(kv.value)
        except ValueError:
            raise StoreError(f"{kv.key}: value is not valid JSON") from None
        return HostRecord.from_json(data, lease=kv.lease, revision=kv.mod_revision, key=key,
                                    created=kv.create_revision)

    def snapshot(self) -> Snapshot:
        """Every record under a subnet key (keys that name no subnet are never used);
        values that cannot be read are listed in `invalid` (the agent rejects them)."""
        try:
            kvs, rev = self.client.range(self.subnets_prefix, prefix=True)
        except EtcdError as exc:
            raise _unavailable(exc) from None
        hosts, invalid = [], {}
        for kv in kvs:
            key = parse_subnet_key(kv.key[len(self.subnets_prefix):])
            if key is None:
                continue
            try:
                hosts.append(self._parse(kv))
            except StoreError as exc:
                invalid[key] = f"value: {exc}"
        return Snapshot(hosts, rev, invalid)

    def remembered(self) -> dict[str, IPv4Network]:
        """host name -> the subnet it had last (<prefix>/hosts/)."""
        return {h: s for h, (s, _) in self._remembered().items()}

    def _remembered(self) -> dict[str, tuple[IPv4Network, dict]]:
        """host name -> (the subnet it had last, its named networks' as recorded)."""
        kvs, _ = self.client.range(self.hosts_prefix, prefix=True)
        out = {}
        for kv in kvs:
            try:
                data = json.loads(kv.value)
                nets = data.get("networks")
                out[kv.key[len(self.hosts_prefix):]] = (IPv4Network(data["subnet"]), nets if isinstance(nets, dict) else {})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return out

    def _lease_networks(self, cfg: NetworkConfig, name: str, lease_id: int,
                        remembered: dict[str, tuple[IPv4Network, dict]]) -> dict[str, IPv4Network]:
        """This host's subnet of every named network of ``cfg``, each one key
        ``<prefix>/networks/<net>/<subnet>`` bound to ``lease_id``, taken by the same rules
        and the same kind of transaction as the main subnet (crossnet.leases: what it had,
        else the lowest free one no other host remembers); its keys of networks no longer
        in ``cfg`` are deleted."""
        c = self.client
        kvs, _ = c.range(self.networks_prefix, prefix=True)
        by_net: dict[str, dict[IPv4Network, KV]] = {}
        for kv in kvs:
            net_name, _, part = kv.key[len(self.networks_prefix):].partition("/")
            sub = parse_subnet_key(part)
            if sub is not None:
                by_net.setdefault(net_name, {})[sub] = kv
        out: dict[str, IPv4Network] = {}
        for net in cfg.networks:
            taken = by_net.get(net.name, {})
            for attempt in range(ACQUIRE_ATTEMPTS):
                mine = {s: kv for s, kv in taken.items() if _owner(kv) == name}
                live = [s for s, kv in mine.items() if kv.lease == lease_id]
                had = {h: IPv4Network(n[net.name]) for h, (_, n) in remembered.items()
                       if isinstance(n.get(net.name), str) and _is_network(n[net.name])}
                try:
                    sub = choose_subnet(net.network, net.subnet_len or cfg.subnet_len, taken,
                                        wanted=[*live, had.get(name), *mine], mine=list(mine),
                                        avoid=[s for h, s in had.items() if h != name])
                except SubnetsExhausted as exc:
                    raise StoreError(f"network {net.name}: {exc}") from None
                stale = [(s, kv) for s, kv in mine.items() if s != sub]
                kv = taken.get(sub)
                if kv is not None and kv.lease == lease_id and not stale:
                    break
                key = self.network_key(net.name, sub)
                compare = [c.cmp_mod(key, kv.mod_revision) if kv is not None else c.cmp_create(key, 0)]
                ops = [c.op_put(key, json.dumps({"name": name, "subnet": str(sub)}, sort_keys=True), lease=lease_id)]
                for _s, okv in stale:
                    compare.append(c.cmp_mod(okv.key, okv.mod_revision))
                    ops.append(c.op_delete(okv.key))
                ok, _, _ = c.txn(compare, ops)
                if ok:
                    break
                time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 8))  # lost a race: re-read, retry
                again, _ = c.range(f"{self.networks_prefix}{net.name}/", prefix=True)
                taken = {s: k for k in again if (s := parse_subnet_key(k.key.rpartition("/")[2])) is not None}
            else:
                raise StoreError(f"network {net.name}: could not acquire a subnet after {ACQUIRE_ATTEMPTS} attempts")
            out[net.name] = sub
        wanted = {n.name for n in cfg.networks}
        for net_name, taken in by_net.items():  # a network removed from the config: give its subnet back
            for okv in taken.values() if net_name not in wanted else ():
                if _owner(okv) == name:
                    c.txn([c.cmp_mod(okv.key, okv.mod_revision)], [c.op_delete(okv.key)])
        return out

    # ------------------------------------------------------------------ leases

    def acquire(self, cfg: NetworkConfig, name: str, address: IPv4Address, data: dict,
                previous: IPv4Network | None = None, previous_lease: int = 0, ttl: int | None = None) -> SubnetLease:
        try:
            return self._acquire(cfg, name, address, data, previous, previous_lease, ttl or cfg.ttl)
        except EtcdError as exc:
            raise _unavailable(exc) from None

    def _acquire(self, cfg: NetworkConfig, name: str, address: IPv4Address, data: dict,
                 previous: IPv4Network | None, previous_lease: int, ttl: int) -> SubnetLease:
        c = self.client
        lease_id = 0
        if previous_lease and c.lease_keepalive(previous_lease) > 0:
            lease_id = previous_lease  # our lease survived a restart (and is now refreshed): peers see no change
        for attempt in range(ACQUIRE_ATTEMPTS):
            kvs, _ = c.range(self.subnets_prefix, prefix=True)
            taken: dict[IPv4Network, KV] = {}
            mine: list[tuple[IPv4Network, KV]] = []
            for kv in kvs:
                sub = parse_subnet_key(kv.key[len(self.subnets_prefix):])
                if sub is None:
                    continue
                taken[sub] = kv
                rec = self._record(kv)
                if rec is not None and rec.name == name:
                    mine.append((sub, kv))
            remembered_all = self._remembered()
            remembered = {h: sub for h, (sub, _) in remembered_all.items()}
            live = [m for m, kv in mine if lease_id and kv.lease == lease_id]
            try:  # the rules (crossnet.leases): keep what this host had if free, else the lowest free
                sub = choose_subnet(cfg.network, cfg.subnet_len, taken,
                                    wanted=[*live, previous, remembered.get(name), *(m for m, _ in mine)],
                                    mine=[m for m, _ in mine],
                                    avoid=[s for h, s in remembered.items() if h != name])
            except SubnetsExhausted as exc:
                raise StoreError(str(exc)) from None
            kv = taken.get(sub)
            if kv is not None and kv.lease and kv.lease != lease_id and c.lease_ttl(kv.lease) > 0:
                rec = self._record(kv)
                if rec is not None and rec.address != address:
                    raise StoreError(
                        f"host name {name!r} is already registered by {rec.address} with a live lease "
                        f"(subnet {sub}); use another --name, or wait for its lease (TTL {cfg.ttl}s) to expire"
                    )
            if not lease_id:
                lease_id, ttl = c.lease_grant(ttl)
            nets = self._lease_networks(cfg, name, lease_id, remembered_all)
            if kv is not None and kv.lease == lease_id:
                rec = self._record(kv)
                want = HostRecord(name, address, sub, data, networks=nets)
                if rec is not None and want.same_content(rec) and not [m for m in mine if m[0] != sub]:
                    return SubnetLease(HostRecord(name, address, sub, data, lease_id, kv.mod_revision, networks=nets),
                                       lease_id, ttl)
            record = HostRecord(name, address, sub, data, networks=nets)
            key = self.subnet_key(sub)
            compare = [c.cmp_mod(key, kv.mod_revision) if kv is not None else c.cmp_create(key, 0)]
            remember = {"subnet": str(sub), "address": str(address),
                        **({"networks": {k: str(v) for k, v in nets.items()}} if nets else {})}
            ops = [
                c.op_put(key, json.dumps(record.to_json(), sort_keys=True), lease=lease_id),
                c.op_put(self.host_key(name), json.dumps(remember)),
            ]
            for other, okv in mine:  # this host held other subnets before (e.g. lost local state)
                if other != sub:
                    compare.append(c.cmp_mod(okv.key, okv.mod_revision))
                    ops.append(c.op_delete(okv.key))
            ok, _, rev = c.txn(compare, ops)
            if ok:
                record.lease, record.revision = lease_id, rev
                return SubnetLease(record, lease_id, ttl)
            time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 8))  # lost a race: re-read, retry
        raise StoreError(f"could not acquire a subnet after {ACQUIRE_ATTEMPTS} attempts (too much contention)")

    def renew(self, lease: SubnetLease) -> None:
        try:
            ttl = self.client.lease_keepalive(lease.lease_id)
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if ttl <= 0:
            raise LeaseLost(f"etcd lease {lease.lease_id:x} for subnet {lease.subnet} has expired")

    def release(self, lease: SubnetLease) -> None:
        c = self.client
        try:
            c.lease_revoke(lease.lease_id)  # deletes <prefix>/subnets/X with it
            key = self.subnet_key(lease.subnet)
            kv = c.get(key)
            if kv is not None:  # still there under another lease of ours? drop it if it is ours
                rec = self._record(kv)
                if rec is not None and rec.name == lease.record.name:
                    c.txn([c.cmp_mod(key, kv.mod_revision)], [c.op_delete(key)])
            c.delete(self.host_key(lease.record.name))
        except EtcdError as exc:
            if exc.code == GRPC_NOT_FOUND:
                return
            raise _unavailable(exc) from None

    # ------------------------------------------------------------------ containers

    def publish_containers(self, lease: SubnetLease, containers: list[dict[str, str]]) -> None:
        value = {"name": lease.record.name, "subnet": str(lease.subnet), "containers": clean_containers(containers)}
        try:
            self.client.put(self.containers_key(lease.record.name), json.dumps(value, sort_keys=True),
                            lease=lease.lease_id)
        except EtcdError as exc:
            if exc.code == GRPC_NOT_FOUND:  # "requested lease not found": it expired
                raise LeaseLost(f"etcd lease {lease.lease_id:x} for subnet {lease.subnet} has expired") from None
            raise _unavailable(exc) from None

    def containers(self) -> dict[str, list[dict[str, str]]]:
        return self.containers_at()[0]

    def containers_at(self) -> tuple[dict[str, list[dict[str, str]]], int]:
        """Every host's published containers and the store revision they were read at."""
        try:
            kvs, rev = self.client.range(self.containers_prefix, prefix=True)
        except EtcdError as exc:
            raise _unavailable(exc) from None
        out: dict[str, list[dict[str, str]]] = {}
        for kv in kvs:
            try:
                data = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(data, dict):
                out[kv.key[len(self.containers_prefix):]] = clean_containers(data.get("containers"))
        return out, rev

    def watch_containers(self, since: int, stop: threading.Event, on_open: Any = None,
                         read_timeout: float = WATCH_IDLE_TIMEOUT) -> Iterator[int]:
        """The revisions (after ``since``) at which some host's published containers
        changed; ends after ``read_timeout`` seconds without even a progress notification
        (the caller watches again).
        ``on_open(conn)``: the watch's connection (to break a blocked read when stopping)."""
        return self._changes(self.containers_prefix, True, since, stop, read_timeout, on_open)

    def watch_config(self, since: int, stop: threading.Event, read_timeout: float = WATCH_IDLE_TIMEOUT) -> Iterator[int]:
        """The revisions (after ``since``) at which the network config key changed; ends
        after ``read_timeout`` seconds without even a progress notification (the caller
        watches again)."""
        def opened(conn) -> None:
            with self._watch_lock:
                self._config_conn = conn

        try:
            yield from self._changes(self.config_key, False, since, stop, read_timeout, opened)
        finally:
            with self._watch_lock:
                self._config_conn = None

    def _changes(self, key: str, prefix: bool, since: int, stop: threading.Event, read_timeout: float,
                 on_open: Any) -> Iterator[int]:
        """The revisions (after ``since``) at which ``key`` (or what it prefixes) changed."""
        try:
            for events, rev in self.client.watch(key, since, prefix=prefix, read_timeout=read_timeout,
                                                 on_open=on_open):
                if stop.is_set():
                    return
                if events:
                    yield rev
        except WatchCompacted as exc:
            raise StoreUnavailable(f"watch: {exc}") from None
        except EtcdError as exc:
            raise _unavailable(exc) from None

    # ------------------------------------------------------------------ watch

    def watch(self, since: int, stop: threading.Event, read_timeout: float = WATCH_IDLE_TIMEOUT) -> Iterator[list[PeerEvent]]:
        def opened(conn) -> None:
            with self._watch_lock:
                self._watch_conn = conn

        try:
            for events, rev in self.client.watch(self.subnets_prefix, since, prefix=True, read_timeout=read_timeout,
                                                 on_open=opened):
                if stop.is_set():
                    return
                out = []
                for ev in events:
                    sub = parse_subnet_key(ev.kv.key[len(self.subnets_prefix):])
                    if sub is None:
                        continue
                    if ev.type == "DELETE":
                        out.append(PeerEvent("delete", sub, None, ev.kv.mod_revision))
                    else:
                        try:
                            out.append(PeerEvent("put", sub, self._parse(ev.kv), ev.kv.mod_revision))
                        except StoreError as exc:
                            out.append(PeerEvent("put", sub, None, ev.kv.mod_revision, error=f"value: {exc}"))
                yield out  # may be empty (watch created, progress): tells the caller the stream is alive
        except WatchCompacted as exc:
            raise StoreUnavailable(f"watch: {exc}") from None
        except EtcdError as exc:
            raise _unavailable(exc) from None
        finally:
            with self._watch_lock:
                self._watch_conn = None

    def interrupt_watch(self) -> None:
        """Break a blocked watch read (called from another thread when etcd looks dead)."""
        import socket

        with self._watch_lock:
            conns = [self._watch_conn, self._config_conn]
        for conn in conns:
            if conn is not None and conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.interrupt_watch()
        self.client.close()
