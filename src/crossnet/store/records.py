"""Validation of the host records peers publish in the store, before anything of them
reaches the kernel.

Anyone who can write to the store can publish a record; the agent programs routes,
neighbours, FDB entries and tunnel ports from them. A record is only used when

* its key and its value agree (the subnet in the value is the subnet of its key);
* its subnet is a /``subnet_len`` inside the cluster network;
* its host name is a valid host name, and not this host's;
* its address is a unicast host address: not 0.0.0.0, 255.255.255.255, multicast,
  loopback, link-local or reserved, not inside the cluster network, not this host's
  own underlay address, not the network or broadcast address of one of this host's
  connected networks;
* its MACs (``vtep_mac``, ``gw_mac``) are canonical (lower-case ``xx:xx:xx:xx:xx:xx``),
  unicast and not all-zero, and not one of this host's own;
* its subnet overlaps none of this host's routes that crossnet does not own (the
  underlay's connected route, the default route's more specific neighbours, an
  operator's static route...) nor this host's own subnet; the same for its subnets of
  the named networks (``networks``);
* no older live record claims an overlapping subnet, the same name or the same MAC
  (or WireGuard key, or what the backend says a peer takes: an OVS tunnel port name):
  the oldest record (lowest ``created``: etcd create_revision, the cluster file's host
  order) wins, the younger one is ignored until the older one goes away.

:func:`check_record` is the per-record part, :func:`select_records` the whole
selection (both pure); :class:`PeerBook` keeps the live records of a store and tells
the agent which valid peers changed, logging each rejection once and counting them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from crossnet.store import HOST_NAME_RE, HostRecord

log = logging.getLogger("crossnet.agent")

MAC_KEYS = ("vtep_mac", "gw_mac")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")  # fullmatch: "$" accepts a trailing newline
_BROADCAST = IPv4Address("255.255.255.255")
_THIS_NET = IPv4Network("0.0.0.0/8")


@dataclass(frozen=True)
class LocalView:
    """What a record is checked against: the cluster network and this host."""

    network: IPv4Network
    subnet_len: int
    name: str = ""
    address: IPv4Address | None = None
    subnet: IPv4Network | None = None  # this host's own lease
    macs: frozenset[str] = frozenset()  # this host's own MACs and WireGuard key (its backend data's values)
    foreign: tuple[IPv4Network, ...] = ()  # routes of this host that crossnet does not own
    connected: tuple[IPv4Network, ...] = ()  # this host's directly connected networks
    # the named networks (docs/networks.md): name -> (its CIDR, its subnet_len, this host's subnet of it)
    networks: Mapping[str, tuple[IPv4Network, int, IPv4Network | None]] = field(default_factory=dict)
    # what else a record's host takes on this host, one per peer (the backend's: an OVS tunnel
    # port name, Backend.peer_claims); the older record keeps it, as with names and MACs
    claims: Callable[[HostRecord], Iterable[str]] | None = None


@dataclass
class Selection:
    valid: dict[IPv4Network, HostRecord] = field(default_factory=dict)  # key (= subnet) -> record
    rejected: dict[IPv4Network, str] = field(default_factory=dict)  # key -> reason


def check_mac(value: object) -> str | None:
    """Why `value` is not a usable unicast MAC (None: it is)."""
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        return f"{value!r} is not a lower-case MAC address xx:xx:xx:xx:xx:xx"
    if int(value[:2], 16) & 1:
        return f"{value} is a multicast/broadcast MAC"
    if value == "00:00:00:00:00:00":
        return f"{value} is the all-zero MAC"
    return None


def check_address(addr: object, view: LocalView) -> str | None:
    """Why `addr` is not a peer's unicast underlay host address (None: it is)."""
    if not isinstance(addr, IPv4Address):
        return f"{addr!r} is not an IPv4 address"
    if addr in _THIS_NET:
        return f"{addr} is not a host address (0.0.0.0/8)"
    if addr == _BROADCAST:
        return f"{addr} is the broadcast address"
    if addr.is_multicast:
        return f"{addr} is a multicast address"
    if addr.is_loopback:
        return f"{addr} is a loopback address"
    if addr.is_link_local:
        return f"{addr} is a link-local address"
    if addr.is_reserved:
        return f"{addr} is a reserved address"
    if addr in view.network:
        return f"{addr} is inside the cluster network {view.network}"
    if view.address is not None and addr == view.address:
        return f"{addr} is this host's own underlay address"
    for net in view.connected:
        if net.prefixlen <= 30 and addr in net and addr in (net.network_address, net.broadcast_address):
            return f"{addr} is the {'network' if addr == net.network_address else 'broadcast'} address of {net}"
    return None


def check_record(key: IPv4Network | None, rec: HostRecord, view: LocalView) -> str | None:
    """Why the record stored under `key` must not be used (None: it may, unless an
    older record claims the same subnet, name or MAC: see select_records)."""
    if key is None:
        return "key: not a subnet key <a.b.c.d>-<len>"
    if not isinstance(rec.name, str) or not HOST_NAME_RE.fullmatch(rec.name):
        return f"name: {rec.name!r} is not a valid host name"
    if view.name and rec.name == view.name:
        return f"name: {rec.name} is this host's name"
    sub = rec.subnet
    if not isinstance(sub, IPv4Network):
        return f"subnet: {sub!r} is not an IPv4 network"
    if sub != key:
        return f"subnet: {sub} does not match its key {key}"
    if sub.prefixlen != view.subnet_len:
        return f"subnet: {sub} is not a /{view.subnet_len}"
    if not sub.subnet_of(view.network):
        return f"subnet: {sub} is outside the cluster network {view.network}"
    if view.subnet is not None and sub.overlaps(view.subnet):
        return f"subnet: {sub} is this host's subnet"
    for net in view.foreign:
        if net.prefixlen > 0 and net.overlaps(sub):
            return f"subnet: {sub} overlaps this host's route {net}"
    why = check_address(rec.address, view) or _networks_problem(rec, view)
    if why:
        return why if why.startswith("networks") else f"address: {why}"
    if not isinstance(rec.data, dict):
        return "data: not an object"
    for k in MAC_KEYS:
        if k in rec.data:
            why = check_mac(rec.data[k])
            if why:
                return f"data.{k}: {why}"
            if rec.data[k] in view.macs:
                return f"data.{k}: {rec.data[k]} is this host's own MAC"
    from crossnet.wg.keys import validate_host_data

    why = validate_host_data(rec.data)  # data.wireguard_key: a 32-byte base64 public key
    if why is None and rec.data.get("wireguard_key") in view.macs:  # (its canonical spelling: one spelling each)
        return "data.wireguard_key: this host's own WireGuard public key"
    return why


def _networks_problem(rec: HostRecord, view: LocalView) -> str | None:
    """Why a record's subnets of the named networks must not be used: each one this host
    knows is a /subnet_len inside that network's CIDR, not this host's own, overlapping
    none of this host's routes that crossnet does not own (a network this host does not
    know yet is ignored until its config arrives)."""
    for name, sub in sorted(rec.networks.items()):
        known = view.networks.get(name)
        if known is None:
            continue
        cidr, subnet_len, own = known
        if sub.prefixlen != subnet_len or not sub.subnet_of(cidr):
            return f"networks.{name}: {sub} is not a /{subnet_len} inside network {name}'s {cidr}"
        if own is not None and sub.overlaps(own):
            return f"networks.{name}: {sub} is this host's subnet of network {name}"
        for net in view.foreign:
            if net.prefixlen > 0 and net.overlaps(sub):
                return f"networks.{name}: {sub} overlaps this host's route {net}"
    return None


def _age(item: tuple[IPv4Network, HostRecord]) -> tuple:
    key, rec = item
    created = rec.created if isinstance(rec.created, int) and rec.created > 0 else 1 << 62
    return (created, int(key.network_address), key.prefixlen)


def select_records(records: Mapping[IPv4Network, HostRecord], view: LocalView,
                   invalid: Mapping[IPv4Network, str] | None = None) -> Selection:
    """The records to program (key -> record) and the rejected ones (key -> reason).
    `invalid`: keys whose value could not even be parsed (already rejected)."""
    out = Selection(rejected=dict(invalid or {}))
    candidates = []
    for key, rec in records.items():
        why = check_record(key, rec, view)
        if why:
            out.rejected[key] = why
        else:
            candidates.append((key, rec))
    # every candidate is an aligned /subnet_len (check_record): two overlap only when equal
    by_subnet: dict[IPv4Network, IPv4Network] = {}
    names: dict[str, IPv4Network] = {}
    macs: dict[str, IPv4Network] = {}
    wg_keys: dict[str, IPv4Network] = {}
    claimed: dict[str, IPv4Network] = {}  # an entry of view.claims -> the key holding it
    net_subnets: dict[tuple[str, IPv4Network], IPv4Network] = {}  # (network, subnet) -> key (all aligned)
    for key, rec in sorted(candidates, key=_age):
        why = None
        claims = sorted(set(view.claims(rec))) if view.claims else []
        taken = next((c for c in claims if c in claimed), None)
        other = by_subnet.get(rec.subnet)
        clash_net = next(((n, s) for n, s in sorted(rec.networks.items()) if (n, s) in net_subnets), None)
        if clash_net is not None:
            why = (f"networks.{clash_net[0]}: {clash_net[1]} is already claimed by the older record "
                   f"{net_subnets[clash_net]}")
        elif other is not None:
            why = f"subnet: {rec.subnet} is already claimed by the older record {other} ({out.valid[other].name})"
        elif rec.name in names:
            why = f"name: {rec.name} is already claimed by the older record {names[rec.name]}"
        else:
            mine = [rec.data[k] for k in MAC_KEYS if k in rec.data]
            clash = next((m for m in mine if m in macs), None)
            wg = rec.data.get("wireguard_key")
            if clash is not None:
                why = f"data: MAC {clash} is already claimed by the older record {macs[clash]}"
            elif wg is not None and wg in wg_keys:
                # one public key = one WireGuard peer entry: a second host would take over its traffic
                why = f"data.wireguard_key: already claimed by the older record {wg_keys[wg]}"
            elif taken is not None:
                why = f"name: {rec.name} needs the {taken}, already claimed by the older record {claimed[taken]}"
        if why:
            out.rejected[key] = why
            continue
        for c in claims:
            claimed[c] = key
        out.valid[key] = rec
        by_subnet[rec.subnet] = key
        names[rec.name] = key
        for k in MAC_KEYS:
            if k in rec.data:
                macs[rec.data[k]] = key
        if "wireguard_key" in rec.data:
            wg_keys[rec.data["wireguard_key"]] = key
        for n, s in rec.networks.items():
            net_subnets[(n, s)] = key
    return out


def describe(rec: HostRecord | None) -> str:
    if rec is None:
        return "unreadable value"
    return f"name={rec.name!r} address={rec.address} subnet={rec.subnet}"


class PeerBook:
    """The live records of the store (this host's own excluded) by key, and the
    valid peers selected from them. Every rejection is logged once (again only when
    the record or the reason changes) and counted in `rejected_total`."""

    def __init__(self) -> None:
        self.records: dict[IPv4Network, HostRecord] = {}
        self.invalid: dict[IPv4Network, str] = {}  # key -> why its value is unusable
        self.rejected: dict[IPv4Network, str] = {}
        self.rejected_total = 0
        self._logged: dict[IPv4Network, tuple] = {}

    def load(self, records: Iterable[HostRecord], invalid: Mapping[IPv4Network, str] | None = None) -> None:
        """A full snapshot: replaces everything known."""
        self.records = {}
        for rec in records:
            key = rec.key if rec.key is not None else rec.subnet
            self.records[key] = rec
        self.invalid = dict(invalid or {})
        for key in self.invalid:
            self.records.pop(key, None)

    def put(self, key: IPv4Network, rec: HostRecord | None, error: str | None = None) -> None:
        if rec is None:
            self.records.pop(key, None)
            self.invalid[key] = error or "value: not a host record"
        else:
            self.invalid.pop(key, None)
            self.records[key] = rec

    def delete(self, key: IPv4Network) -> None:
        self.records.pop(key, None)
        self.invalid.pop(key, None)

    def discard(self, keys: Iterable[IPv4Network]) -> None:
        for key in list(keys):
            self.delete(key)

    def select(self, view: LocalView) -> dict[IPv4Network, HostRecord]:
        sel = select_records(self.records, view, self.invalid)
        for key, why in sorted(sel.rejected.items()):
            rec = self.records.get(key)
            mark = (rec.to_json() if rec is not None else None, why)
            if self._logged.get(key) == mark:
                continue
            self._logged[key] = mark
            self.rejected_total += 1
            log.warning("rejected store record %s (%s): %s", key, describe(rec), why)
        for key in [k for k in self._logged if k not in sel.rejected]:
            del self._logged[key]
        self.rejected = sel.rejected
        return sel.valid

    def rejected_json(self, limit: int = 100) -> list[dict]:
        """The live rejected records (the first `limit`: a writer may fill the store)."""
        out = []
        for key, why in sorted(self.rejected.items())[:limit]:
            rec = self.records.get(key)
            out.append({"key": f"{key.network_address}-{key.prefixlen}", "name": rec.name if rec else None,
                        "reason": why})
        return out


def filter_containers(published: Mapping[str, list[dict]], subnets: Mapping[str, IPv4Network],
                      named: Mapping[str, Mapping[str, IPv4Network]] | None = None) -> tuple[dict, int]:
    """Keep the published containers of hosts with a valid record (`subnets`: host
    name -> its validated subnet), and of those only the addresses inside the host's
    subnet (not its network, gateway or broadcast address): `crossnet check` pings
    them from this host's containers. A container of a named network (its ``network``)
    is checked against the host's validated subnet of that network instead (`named`:
    host name -> network -> subnet); none: it is dropped. Returns (kept, number dropped)."""
    kept: dict[str, list[dict]] = {}
    dropped = 0
    for name, items in published.items():
        good = []
        for c in items or []:
            net = c.get("network")
            sub = subnets.get(name)  # a host without a valid record: none of its containers
            if sub is not None and net is not None:
                sub = (named or {}).get(name, {}).get(net)
            try:
                addr = IPv4Address(str(c.get("address")))
            except ValueError:
                addr = None
            if (sub is None or addr is None or addr not in sub
                    or addr in (sub.network_address, sub.network_address + 1, sub.broadcast_address)):
                dropped += 1
                continue
            good.append(c)
        if name in subnets:
            kept[name] = good
    return kept, dropped


__all__ = ["LocalView", "PeerBook", "Selection", "check_address", "check_mac", "check_record", "filter_containers",
           "select_records"]
