"""Desired kernel state as a list of Resources, and the reconciler that makes the
kernel match it.

A Resource is one kernel object crossnet owns (a link, an address, a route, a
neighbour, an FDB entry, a sysctl, an nft table, ...). Each one can:

- ``describe()`` itself as the equivalent manual command (for ``--dry-run``),
- tell whether the kernel already matches (``check``),
- create or repair itself (``ensure``) and remove itself (``remove``),
- round-trip through JSON, so ``reset`` can remove exactly what ``apply`` created
  even if the cluster file changed since.

Backends (crossnet.backends.*) only produce lists of Resources; they never touch
the kernel themselves.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pyroute2.netlink.exceptions import NetlinkError

if TYPE_CHECKING:  # imported by whoever opens a socket (crossnet.netlink.open_ipr)
    from pyroute2 import IPRoute

from crossnet import netlink as nl
from crossnet.errors import ApplyError
from crossnet.nlbatch import Batch
from crossnet.nlconst import AF_INET6, IFA_F_NOPREFIXROUTE, RT_SCOPE_LINK, RTN_UNICAST
from crossnet.state import crash_point

REGISTRY: dict[str, type["Resource"]] = {}


class Env:
    """Where resources are applied: a netlink socket (this namespace), a snapshot of
    kernel state read with ONE dump per kind (links, addresses, routes, neighbours,
    FDB) so checking thousands of resources stays linear, and extra handles other
    data planes register (e.g. OVSDB). Anything that changes a kind calls
    ``changed(kind)`` so the next read dumps it again."""

    KINDS = ("links", "addresses", "routes", "neighbours", "fdb")

    def __init__(self, ipr: IPRoute, batch: bool = False, **extra: Any):
        """batch=True: route/neighbour/FDB writes are queued and sent in bursts by
        flush() (crossnet.nlbatch). Only for an ipr of the CURRENT namespace."""
        self.ipr = ipr
        self.extra = extra
        self._cache: dict[str, Any] = {}
        self.batch: Batch | None = Batch() if batch else None

    def flush(self) -> None:
        """Send queued writes; raise ApplyError naming the first refused resource."""
        if not self.batch:
            return
        failures = self.batch.commit()
        self.changed("routes", "neighbours", "fdb")
        if failures:
            res, code = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise ApplyError(f"{res.describe()}: {os.strerror(code)}{more}")

    def changed(self, *kinds: str) -> None:
        for kind in kinds or self.KINDS:
            self._cache.pop(kind, None)
            if kind == "routes":
                self._cache.pop("routes_by_dst", None)
            if kind == "links":
                self._cache.pop("links_by_index", None)

    def _get(self, kind: str, load) -> Any:
        if kind not in self._cache:
            self._cache[kind] = load()
        return self._cache[kind]

    def links(self) -> dict[str, nl.LinkInfo]:
        return self._get("links", lambda: {l.name: l for l in nl.all_links(self.ipr)})

    def link(self, name: str | None = None, index: int | None = None) -> nl.LinkInfo | None:
        if name is not None:
            return self.links().get(name)
        by_index = self._get("links_by_index", lambda: {l.index: l for l in self.links().values()})
        return by_index.get(index)

    def index(self, name: str) -> int | None:
        link = self.links().get(name)
        return link.index if link else None

    def require_index(self, name: str) -> int:
        idx = self.index(name)
        if idx is None:
            raise ApplyError(f"interface {name!r} does not exist")
        return idx

    def addresses(self, index: int | None) -> list[str]:
        return self._get("addresses", lambda: nl.all_addresses(self.ipr)).get(index, [])

    def routes(self) -> list[nl.RouteInfo]:
        return self._get("routes", lambda: nl.routes(self.ipr))

    def routes_to(self, dst: str) -> list[nl.RouteInfo]:
        def load() -> dict[str, list[nl.RouteInfo]]:
            out: dict[str, list[nl.RouteInfo]] = {}
            for r in self.routes():
                out.setdefault(r.dst, []).append(r)
            return out

        return self._get("routes_by_dst", load).get(dst, [])

    def forget_routes(self, gone: list[nl.RouteInfo]) -> None:
        """Drop routes just deleted from the snapshot instead of invalidating it:
        deleting routes to one destination changes no other route, and a full
        re-dump per removed route made `reset` of 1,000 peers take minutes."""
        if not gone:
            return
        if "routes" in self._cache:
            self._cache["routes"] = [r for r in self._cache["routes"] if r not in gone]
        by_dst = self._cache.get("routes_by_dst")
        if by_dst is not None:
            for r in gone:
                left = [x for x in by_dst.get(r.dst, []) if x not in gone]
                if left:
                    by_dst[r.dst] = left
                else:
                    by_dst.pop(r.dst, None)

    def neighbour(self, index: int, ip: str) -> tuple[str | None, int] | None:
        return self._get("neighbours", lambda: nl.all_neighbours(self.ipr)).get((index, ip))

    def fdb(self) -> set[tuple[int, str, str | None]]:
        return self._get("fdb", lambda: nl.all_fdb(self.ipr))


@dataclass
class Resource:
    kind: ClassVar[str] = "resource"
    batchable: ClassVar[bool] = False  # ensure() may only queue a write (see Env.batch)
    # what ensure() had to remember to undo itself (e.g. a sysctl's old value)
    saved: dict = field(default_factory=dict, kw_only=True, compare=False)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            REGISTRY[cls.kind] = cls

    # identity: two resources with the same key are the same kernel object
    def key(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, env: Env) -> bool:
        raise NotImplementedError

    def ensure(self, env: Env) -> None:
        raise NotImplementedError

    def remove(self, env: Env) -> None:
        raise NotImplementedError

    def preflight(self, env: Env, owned: set[str]) -> None:
        """Before anything changes (also for --dry-run): raise ApplyError if this
        resource must not be applied here. `owned`: keys of what crossnet recorded."""

    def prepare(self, env: Env) -> None:
        """Before ensure(), and before the journal is written: put into `saved`
        whatever remove() will need to restore the state ensure() changes."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["kind"] = self.kind
        return data

    @staticmethod
    def from_json(data: dict) -> "Resource":
        data = dict(data)
        cls = REGISTRY[data.pop("kind")]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _ignore_missing(fn, *args, **kw) -> None:
    try:
        fn(*args, **kw)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL):
            raise


def _remove_link(env: Env, name: str, kind: str) -> None:
    """Delete link NAME (recorded as crossnet's) if it is still a KIND link."""
    info = env.link(name)
    if info is not None and info.kind == kind:
        _ignore_missing(env.ipr.link, "del", index=info.index)
        env.changed()


def refuse_foreign_link(env: Env, name: str, key: str, owned: set[str], hint: str) -> None:
    """crossnet never adopts (changes, enslaves into, deletes) a link it did not
    create: link NAME existing while crossnet has no record of creating it (in
    applied.json or the journal of an interrupted apply) is refused, naming it."""
    info = env.link(name)
    if info is None or key in owned:
        return
    what = [f"{info.kind or 'plain'} link"]
    ports = sorted(l.name for l in env.links().values() if l.master == info.index)
    if ports:
        what.append(f"ports: {', '.join(ports)}")
    addrs = env.addresses(info.index)
    if addrs:
        what.append(f"addresses: {', '.join(addrs)}")
    raise ApplyError(
        f"interface {name} already exists and was not created by crossnet ({'; '.join(what)}); "
        f"crossnet does not take over or delete links it did not create: remove or rename it{hint}, "
        "then apply again"
    )


# ---------------------------------------------------------------- links


@dataclass
class Bridge(Resource):
    kind: ClassVar[str] = "bridge"
    name: str
    mtu: int
    mac: str | None = None

    def key(self) -> str:
        return f"link:{self.name}"

    def describe(self) -> str:
        mac = f" address {self.mac}" if self.mac else ""
        return f"ip link add {self.name} type bridge{mac} && ip link set {self.name} mtu {self.mtu} up"

    def check(self, env: Env) -> bool:
        info = env.link(self.name)
        return (
            info is not None
            and info.kind == "bridge"
            and info.mtu == self.mtu
            and info.up
            and (self.mac is None or info.mac == self.mac)
        )

    def ensure(self, env: Env) -> None:
        info = env.link(self.name)
        if info is not None and info.kind != "bridge":
            raise ApplyError(f"interface {self.name} exists but is a {info.kind or 'plain'} link, not a bridge")
        kw = {"address": self.mac} if self.mac else {}
        if info is None:
            env.ipr.link("add", ifname=self.name, kind="bridge", **kw)
            env.changed("links")
        env.ipr.link("set", index=env.require_index(self.name), mtu=self.mtu, state="up", **kw)
        env.changed("links")

    def remove(self, env: Env) -> None:
        _remove_link(env, self.name, "bridge")

    def preflight(self, env: Env, owned: set[str]) -> None:
        refuse_foreign_link(env, self.name, self.key(), owned, " (or choose another name with `bridge:` in the cluster file)")


@dataclass
class Vxlan(Resource):
    kind: ClassVar[str] = "vxlan"
    name: str
    vni: int
    port: int
    local: str
    dev: str
    mtu: int
    mac: str

    def key(self) -> str:
        return f"link:{self.name}"

    def describe(self) -> str:
        return (
            f"ip link add {self.name} type vxlan id {self.vni} local {self.local} dev {self.dev} "
            f"dstport {self.port} nolearning && ip link set {self.name} address {self.mac} mtu {self.mtu} up"
        )

    def _matches(self, info: nl.LinkInfo, env: Env) -> bool:
        d = info.info_data
        return (
            info.kind == "vxlan"
            and d.get("IFLA_VXLAN_ID") == self.vni
            and d.get("IFLA_VXLAN_LOCAL") == self.local
            and d.get("IFLA_VXLAN_PORT") == self.port
            and d.get("IFLA_VXLAN_LINK") == env.index(self.dev)
            and not d.get("IFLA_VXLAN_LEARNING")
        )

    def check(self, env: Env) -> bool:
        info = env.link(self.name)
        return info is not None and self._matches(info, env) and info.mtu == self.mtu and info.up and info.mac == self.mac

    def ensure(self, env: Env) -> None:
        info = env.link(self.name)
        if info is not None and not self._matches(info, env):
            env.ipr.link("del", index=info.index)  # wrong parameters: recreate
            env.changed()
            info = None
        if info is None:
            env.ipr.link(
                "add",
                ifname=self.name,
                kind="vxlan",
                vxlan_id=self.vni,
                vxlan_local=self.local,
                vxlan_link=env.require_index(self.dev),
                vxlan_port=self.port,
                vxlan_learning=0,
                address=self.mac,
            )
            env.changed("links")
        idx = env.require_index(self.name)
        if info is None or info.mac != self.mac:
            env.ipr.link("set", index=idx, address=self.mac)
        # apart from the address: one request setting an address (even the same one) and a
        # new MTU flushes the device's neighbour table, the peers' permanent entries included
        env.ipr.link("set", index=idx, mtu=self.mtu, state="up")
        env.changed("links")

    def remove(self, env: Env) -> None:
        _remove_link(env, self.name, "vxlan")

    def preflight(self, env: Env, owned: set[str]) -> None:
        refuse_foreign_link(env, self.name, self.key(), owned, " (or choose another `vxlan.vni` in the cluster file)")


# ---------------------------------------------------------------- addresses, routes, neighbours


@dataclass
class Address(Resource):
    kind: ClassVar[str] = "address"
    dev: str
    cidr: str  # "10.32.0.1/24"

    def key(self) -> str:
        return f"addr:{self.dev}:{self.cidr}"

    def describe(self) -> str:
        return f"ip addr add {self.cidr} dev {self.dev}"

    def check(self, env: Env) -> bool:
        idx = env.index(self.dev)
        return idx is not None and self.cidr in env.addresses(idx)

    def ensure(self, env: Env) -> None:
        if self.check(env):
            return
        iface = ipaddress.ip_interface(self.cidr)
        env.ipr.addr("add", index=env.require_index(self.dev), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        env.changed("addresses", "routes")

    def remove(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is None:
            return
        iface = ipaddress.ip_interface(self.cidr)
        _ignore_missing(env.ipr.addr, "del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        env.changed("addresses", "routes")


@dataclass
class Route(Resource):
    kind: ClassVar[str] = "route"
    batchable: ClassVar[bool] = True
    dst: str  # CIDR
    gateway: str | None = None
    dev: str | None = None
    onlink: bool = False
    src: str | None = None

    def key(self) -> str:
        return f"route:{self.dst}"

    def describe(self) -> str:
        parts = [f"ip route replace {self.dst}"]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        if self.onlink:
            parts.append("onlink")
        if self.src:
            parts.append(f"src {self.src}")
        return " ".join(parts)

    def _kw(self, env: Env) -> dict:
        net = ipaddress.ip_network(self.dst)
        kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "table": nl.RT_TABLE_MAIN}
        if self.gateway:
            kw["gateway"] = self.gateway
        if self.dev:
            kw["oif"] = env.require_index(self.dev)
        if self.onlink:
            kw["flags"] = nl.RTNH_F_ONLINK
        if self.src:
            kw["prefsrc"] = self.src
        return kw

    def _current(self, env: Env) -> list[nl.RouteInfo]:
        return [r for r in env.routes_to(self.dst) if r.proto != nl.RTPROT_KERNEL]

    def check(self, env: Env) -> bool:
        want_oif = env.index(self.dev) if self.dev else None
        if self.dev and want_oif is None:
            return False
        for r in self._current(env):
            if r.gateway == self.gateway and (want_oif is None or r.oif == want_oif):
                return True
        return False

    def ensure(self, env: Env) -> None:
        if env.batch is not None and not self.src:
            oif = env.require_index(self.dev) if self.dev else None
            env.batch.route_replace(self.dst, self.gateway, oif, self.onlink, self)
            return
        env.ipr.route("replace", **self._kw(env))
        env.changed("routes")

    def remove(self, env: Env) -> None:
        gone = [r for r in self._current(env) if r.gateway == self.gateway]
        for r in gone:
            net = ipaddress.ip_network(self.dst)
            kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "table": nl.RT_TABLE_MAIN}
            if r.gateway:
                kw["gateway"] = r.gateway
            if r.oif:
                kw["oif"] = r.oif
            _ignore_missing(env.ipr.route, "del", **kw)
        env.forget_routes(gone)


@dataclass
class Neigh(Resource):
    kind: ClassVar[str] = "neigh"
    batchable: ClassVar[bool] = True
    dev: str
    ip: str
    mac: str

    def key(self) -> str:
        return f"neigh:{self.dev}:{self.ip}"

    def describe(self) -> str:
        return f"ip neigh replace {self.ip} lladdr {self.mac} dev {self.dev} nud permanent"

    def check(self, env: Env) -> bool:
        idx = env.index(self.dev)
        found = env.neighbour(idx, self.ip) if idx is not None else None
        return found is not None and found[0] == self.mac and bool(found[1] & nl.NUD_PERMANENT)

    def ensure(self, env: Env) -> None:
        idx = env.require_index(self.dev)
        if env.batch is not None:
            env.batch.neigh_replace(idx, self.ip, self.mac, self)
            return
        env.ipr.neigh("replace", dst=self.ip, lladdr=self.mac, ifindex=idx, state=nl.NUD_PERMANENT)
        env.changed("neighbours")

    def remove(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is not None:
            _ignore_missing(env.ipr.neigh, "del", dst=self.ip, lladdr=self.mac, ifindex=idx)
            env.changed("neighbours")


@dataclass
class Fdb(Resource):
    """A VXLAN forwarding entry: frames for MAC go to the VTEP at DST."""

    kind: ClassVar[str] = "fdb"
    batchable: ClassVar[bool] = True
    dev: str
    mac: str
    dst: str

    def key(self) -> str:
        return f"fdb:{self.dev}:{self.mac}:{self.dst}"

    def describe(self) -> str:
        return f"bridge fdb append {self.mac} dev {self.dev} dst {self.dst} self permanent"

    def check(self, env: Env) -> bool:
        idx = env.index(self.dev)
        return idx is not None and (idx, self.mac, self.dst) in env.fdb()

    def ensure(self, env: Env) -> None:
        idx = env.require_index(self.dev)
        if env.batch is not None:
            env.batch.fdb_append(idx, self.mac, self.dst, self)
            return
        try:
            env.ipr.fdb("append", ifindex=idx, lladdr=self.mac, dst=self.dst, state=nl.NUD_PERMANENT, flags=nl.NTF_SELF)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # already there (another writer)
                raise
        env.changed("fdb")

    def remove(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is not None:
            _ignore_missing(env.ipr.fdb, "del", ifindex=idx, lladdr=self.mac, dst=self.dst)
            env.changed("fdb")


@dataclass
class Enslave(Resource):
    """Put DEV into bridge MASTER (and bring it up)."""

    kind: ClassVar[str] = "enslave"
    dev: str
    master: str

    def key(self) -> str:
        return f"enslave:{self.dev}"

    def describe(self) -> str:
        return f"ip link set {self.dev} master {self.master} up"

    def check(self, env: Env) -> bool:
        info = env.link(self.dev)
        return info is not None and info.master == env.index(self.master) and info.up

    def ensure(self, env: Env) -> None:
        env.ipr.link("set", index=env.require_index(self.dev), master=env.require_index(self.master), state="up")
        env.changed("links")

    def remove(self, env: Env) -> None:
        idx = env.index(self.dev)
        if idx is not None:
            _ignore_missing(env.ipr.link, "set", index=idx, master=0)
            env.changed("links")


# ---------------------------------------------------------------- sysctl, nftables


@dataclass
class Sysctl(Resource):
    kind: ClassVar[str] = "sysctl"
    name: str  # e.g. net.ipv4.ip_forward
    value: str

    @property
    def path(self) -> Path:
        return Path("/proc/sys") / self.name.replace(".", "/")

    def key(self) -> str:
        return f"sysctl:{self.name}"

    def describe(self) -> str:
        return f"sysctl -w {self.name}={self.value}"

    def check(self, env: Env) -> bool:
        return self.path.read_text().strip() == self.value

    def prepare(self, env: Env) -> None:
        # recorded (journal) before the value changes, so an apply killed right
        # after writing it still leaves reset the value to restore
        with contextlib.suppress(OSError):
            current = self.path.read_text().strip()
            if current != self.value:
                self.saved.setdefault("previous", current)

    def ensure(self, env: Env) -> None:
        current = self.path.read_text().strip()
        if current != self.value:
            self.saved.setdefault("previous", current)
            self.path.write_text(self.value)

    def remove(self, env: Env) -> None:
        previous = self.saved.get("previous")
        if previous is not None:
            with contextlib.suppress(OSError):
                self.path.write_text(previous)


def nft(script: str) -> subprocess.CompletedProcess:
    """Run an nft script (nft has no netlink library on PyPI; this is the control plane only)."""
    return subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)


@dataclass
class NftTable(Resource):
    """A whole nftables table owned by crossnet, replaced atomically when it differs."""

    kind: ClassVar[str] = "nft-table"
    family: str
    name: str
    body: str  # the table's chains/rules, nft syntax, without the `table` line

    def key(self) -> str:
        return f"nft:{self.family}:{self.name}"

    def script(self) -> str:
        return f"table {self.family} {self.name} {{\n{self.body}\n}}\n"

    def describe(self) -> str:
        return "nft -f - <<'EOF'\n" + self.script() + "EOF"

    def check(self, env: Env) -> bool:
        out = subprocess.run(
            ["nft", "list", "table", self.family, self.name], text=True, capture_output=True
        )
        if out.returncode != 0:
            return False
        # compare normalised rule text: every non-empty line of our body must be present, in order
        have = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        want = [line.strip() for line in self.body.splitlines() if line.strip()]
        it = iter(have)
        return all(any(w == h for h in it) for w in want)

    def ensure(self, env: Env) -> None:
        # declaring then deleting then re-creating in one transaction replaces it atomically
        script = f"table {self.family} {self.name}\ndelete table {self.family} {self.name}\n" + self.script()
        res = nft(script)
        if res.returncode != 0:
            raise ApplyError(f"nft failed for table {self.family} {self.name}: {res.stderr.strip().splitlines()[-1:]}")

    def remove(self, env: Env) -> None:
        nft(f"table {self.family} {self.name}\ndelete table {self.family} {self.name}\n")


# ---------------------------------------------------------------- reconciler


@dataclass
class Change:
    action: str  # create | repair | remove
    resource: Resource

    def __str__(self) -> str:
        if self.action == "remove":
            return f"remove  {self.resource.key()}"
        return f"{self.action:7} {self.resource.describe()}"


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)  # what is now owned, in creation order


class Journal:
    """Where reconcile() writes down, before its first kernel change, every resource
    it may own afterwards (with what they must restore): see crossnet.state.
    The base class keeps nothing (callers without a state dir)."""

    def write(self, resources: list[Resource]) -> None:
        """Persist `resources` durably (fsync) before returning."""

    def discard(self) -> None:
        """The kernel is back to the recorded state: the entry is no longer needed."""


def preflight(desired: list[Resource], previous: list[Resource], env: Env) -> None:
    """Refuse, before anything changes, what must not be applied (links crossnet did
    not create, NIC configuration it cannot move faithfully)."""
    owned = {r.key() for r in previous}
    prev_by_key = {r.key(): r for r in previous}
    for r in desired:
        old = prev_by_key.get(r.key())
        if old is not None and old.saved and not r.saved:
            r.saved = dict(old.saved)
        r.preflight(env, owned)


def pending(desired: list[Resource], previous: list[Resource], env: Env) -> list[Change]:
    """What reconcile() would do, without doing it."""
    preflight(desired, previous, env)
    want_keys = {r.key() for r in desired}
    out = [Change("remove", r) for r in reversed(previous) if r.key() not in want_keys]
    prev_keys = {r.key() for r in previous}
    for r in desired:
        if not r.check(env):
            out.append(Change("repair" if r.key() in prev_keys else "create", r))
    return out


def reconcile(desired: list[Resource], previous: list[Resource], env: Env, journal: Journal | None = None) -> Outcome:
    """Make the kernel match `desired`. Resources in `previous` but not desired are
    removed (reverse order). On failure, everything this call created is rolled
    back, then ApplyError is raised. With a journal, every resource this call may
    own afterwards (previous and desired, with the state each must restore) is
    written to it before the first kernel change."""
    prev_by_key = {r.key(): r for r in previous}
    want_keys = {r.key() for r in desired}
    outcome = Outcome()
    created: list[Resource] = []
    preflight(desired, previous, env)  # also carries recorded `saved` over to desired
    # check everything against ONE snapshot of the kernel, then fix what differs
    # (checking after each change would re-dump tables: quadratic with many peers)
    ok = [r.check(env) for r in desired]
    todo = [r for r, fine in zip(desired, ok) if not fine]
    for r in todo:  # nothing has changed yet: a failure here needs no rollback
        try:
            r.prepare(env)
        except ApplyError:
            raise
        except Exception as exc:
            raise ApplyError(f"{r.describe()}: {exc}") from exc
    if journal is not None and (todo or any(r.key() not in want_keys for r in previous)):
        journal.write([r for r in previous if r.key() not in want_keys] + list(desired))
    crash_point()
    r: Resource | None = None
    try:
        for r, fine in zip(desired, ok):
            if fine:
                continue
            old = prev_by_key.get(r.key())
            if not r.batchable:
                env.flush()  # queued writes first: this one may depend on them
            r.ensure(env)
            crash_point()
            if old is None:
                created.append(r)
            outcome.changes.append(Change("repair" if old is not None else "create", r))
        r = None
        env.flush()
    except Exception as exc:
        failed = r
        undone = True
        for undo in reversed(created):
            try:
                undo.remove(env)
            except Exception:  # noqa: BLE001 - undo the others; the journal keeps this one
                undone = False
        env.changed()
        if env.batch:
            env.batch.messages.clear()
        if journal is not None and undone:
            journal.discard()
        if isinstance(exc, ApplyError):
            raise ApplyError(f"{exc} (rolled back)") from exc
        what = failed.describe() if failed is not None else "apply"
        raise ApplyError(f"{what}: {exc} (rolled back)") from exc
    for r in reversed(previous):
        if r.key() not in want_keys:
            r.remove(env)
            crash_point()
            outcome.changes.append(Change("remove", r))
    outcome.resources = list(desired)
    return outcome


def teardown(resources: list[Resource], env: Env) -> list[Change]:
    changes = []
    for r in reversed(resources):
        r.remove(env)
        changes.append(Change("remove", r))
    env.changed()
    return changes


# ---------------------------------------------------------------- moving a NIC into a bridge

# route attributes a saved record replays; a route via the NIC with any other
# (nexthop objects, encapsulation, realms, ...) is refused rather than half-moved
_ROUTE_ATTRS = {"RTA_TABLE", "RTA_DST", "RTA_GATEWAY", "RTA_OIF", "RTA_PRIORITY", "RTA_PREFSRC",
                "RTA_METRICS", "RTA_CACHEINFO", "RTA_PREF"}


def addr_record(a: str | dict) -> dict:
    """A saved address: {"local", "prefixlen", "peer", "broadcast", "scope", "flags"}
    (records written before point-to-point support are plain "a.b.c.d/len")."""
    if isinstance(a, dict):
        return a
    iface = ipaddress.ip_interface(a)
    return {"local": str(iface.ip), "prefixlen": iface.network.prefixlen}


def addr_text(a: str | dict) -> str:
    """`ip addr` spelling: 10.66.0.1 peer 10.66.0.2/32, or 10.1.0.5/24."""
    a = addr_record(a)
    if a.get("peer"):
        return f"{a['local']} peer {a['peer']}/{a['prefixlen']}"
    return f"{a['local']}/{a['prefixlen']}"


def _addr_id(a: dict) -> tuple:
    return (a["local"], a["prefixlen"], a.get("peer"))


def link_addresses(ipr: IPRoute, index: int) -> list[dict]:
    """IPv4 addresses of a link as saved records, in kernel order (primaries first)."""
    out = []
    for msg in ipr.get_addr(family=nl.AF_INET, index=index):
        local = nl.attr(msg, "IFA_LOCAL") or nl.attr(msg, "IFA_ADDRESS")
        peer = nl.attr(msg, "IFA_ADDRESS")
        rec: dict[str, Any] = {"local": local, "prefixlen": msg["prefixlen"]}
        if peer and peer != local:
            rec["peer"] = peer
        if nl.attr(msg, "IFA_BROADCAST"):
            rec["broadcast"] = nl.attr(msg, "IFA_BROADCAST")
        if msg["scope"]:
            rec["scope"] = msg["scope"]
        flags = (nl.attr(msg, "IFA_FLAGS") or msg["flags"]) & IFA_F_NOPREFIXROUTE
        if flags:
            rec["flags"] = flags
        out.append(rec)
    return out


def addr_kw(a: str | dict, index: int) -> dict:
    """pyroute2 keyword arguments that add (or delete) a saved address on `index`."""
    a = addr_record(a)
    kw: dict[str, Any] = {"index": index, "local": a["local"], "address": a.get("peer") or a["local"],
                          "prefixlen": a["prefixlen"]}
    if a.get("broadcast"):
        kw["broadcast"] = a["broadcast"]
    if a.get("scope"):
        kw["scope"] = a["scope"]
    if a.get("flags"):
        kw["flags"] = a["flags"]
    return kw


def _has_addr(env: Env, index: int, a: str | dict) -> bool:
    want = _addr_id(addr_record(a))
    return any(_addr_id(h) == want for h in link_addresses(env.ipr, index))


def _route_text(r: dict) -> str:
    dst = "default" if r["dst"] == "0.0.0.0/0" else r["dst"]
    via = f" via {r['gateway']}" if r.get("gateway") else ""
    table = f" table {r['table']}" if r.get("table", nl.RT_TABLE_MAIN) != nl.RT_TABLE_MAIN else ""
    return f"{dst}{via}{table}"


def _route_record(msg: Any) -> dict:
    dst = nl.attr(msg, "RTA_DST", "0.0.0.0")
    rec: dict[str, Any] = {
        "dst": f"{dst}/{msg['dst_len']}",
        "gateway": nl.attr(msg, "RTA_GATEWAY"),
        "metric": nl.attr(msg, "RTA_PRIORITY"),
        "proto": msg["proto"],
        "scope": msg["scope"],
        "prefsrc": nl.attr(msg, "RTA_PREFSRC"),
        "onlink": bool(msg["flags"] & nl.RTNH_F_ONLINK),
        "table": nl.attr(msg, "RTA_TABLE") or msg["table"],
    }
    if msg["type"] != RTN_UNICAST:
        rec["type"] = msg["type"]
    if msg["tos"]:
        rec["tos"] = msg["tos"]
    metrics = nl.attr(msg, "RTA_METRICS")
    if metrics:
        rec["metrics"] = [[k, v] for k, v in metrics.get("attrs", [])]
    return rec


def saved_routes(env: Env, index: int) -> list[dict]:
    """The IPv4 routes through interface `index`, in every routing table, that were
    not made by the kernel for an address, as records route_kw() can replay on
    another device (or back). Multipath routes are not included (see nic_problems)."""
    return [
        _route_record(m)
        for m in env.ipr.get_routes(family=nl.AF_INET)
        if nl.attr(m, "RTA_OIF") == index and m["proto"] != nl.RTPROT_KERNEL
    ]


def nic_problems(env: Env, index: int, nic: str) -> list[str]:
    """What on NIC a takeover cannot move faithfully: multipath routes through it,
    routes with attributes it does not replay, IPv6 beyond the link-local address
    (which the bridge gets too: it takes over the NIC's MAC)."""
    out = []
    for m in env.ipr.get_routes(family=nl.AF_INET):
        hops = nl.attr(m, "RTA_MULTIPATH")
        if hops and any(h.get("oif") == index for h in hops):
            dst = nl.attr(m, "RTA_DST", "0.0.0.0")
            rec = {"dst": f"{dst}/{m['dst_len']}", "table": nl.attr(m, "RTA_TABLE") or m["table"]}
            out.append(f"multipath route {_route_text(rec)}")
        elif nl.attr(m, "RTA_OIF") == index and m["proto"] != nl.RTPROT_KERNEL:
            extra = sorted({k for k, _ in m["attrs"]} - _ROUTE_ATTRS)
            if extra:
                out.append(f"route {_route_text(_route_record(m))} ({', '.join(extra)})")
    for m in env.ipr.get_addr(family=AF_INET6, index=index):
        if m["scope"] != RT_SCOPE_LINK:
            out.append(f"IPv6 address {nl.attr(m, 'IFA_ADDRESS')}/{m['prefixlen']}")
    for m in env.ipr.get_routes(family=AF_INET6):
        hops = nl.attr(m, "RTA_MULTIPATH") or []
        via = nl.attr(m, "RTA_OIF") == index or any(h.get("oif") == index for h in hops)
        if via and m["proto"] != nl.RTPROT_KERNEL:
            dst = nl.attr(m, "RTA_DST") or "::"
            gw = nl.attr(m, "RTA_GATEWAY")
            where = "default" if not m["dst_len"] else f"{dst}/{m['dst_len']}"
            out.append(f"IPv6 route {where}" + (f" via {gw}" if gw else ""))
    return out


@dataclass
class NicTakeover(Resource):
    """The tutorial's bridge method: enslave NIC to BRIDGE and move the NIC's IPv4
    addresses (point-to-point peers, broadcast, scope included) and its routes in
    every table onto the bridge (the bridge already carries the NIC's MAC, so
    neighbours' ARP caches stay valid). What it cannot move faithfully (multipath
    routes, IPv6 beyond link-local) is refused before anything changes.

    `saved` keeps the NIC's original addresses and routes so remove() gives them
    back. prepare() fills it before the first change, and apply writes it to the
    journal then, so an apply killed at any point can be completed or undone."""

    kind: ClassVar[str] = "nic-takeover"
    nic: str
    bridge: str

    def key(self) -> str:
        return f"takeover:{self.nic}"

    def describe(self) -> str:
        addrs = [addr_text(a) for a in self.saved.get("addresses", [])] or ["<the NIC's addresses>"]
        routes = self.saved.get("routes") or [{"dst": "<the NIC's routes>", "gateway": None}]
        cmds = [f"ip link set {self.nic} master {self.bridge} up", f"ip addr flush dev {self.nic}"]
        cmds += [f"ip addr add {a} dev {self.bridge}" for a in addrs]
        cmds += route_commands(routes, self.bridge)
        return " && ".join(cmds)

    def check(self, env: Env) -> bool:
        nic = nl.link_info(env.ipr, self.nic)
        br = env.index(self.bridge)
        if nic is None or br is None or nic.master != br or not nic.up:
            return False
        if nl.addresses(env.ipr, nic.index):
            return False
        if not all(_has_addr(env, br, a) for a in self.saved.get("addresses", [])):
            return False
        return routes_present(env, self.saved.get("routes", []), br)

    def _capture(self, env: Env) -> None:
        if "addresses" in self.saved:  # recorded by an earlier (maybe interrupted) apply
            return
        nic = nl.link_info(env.ipr, self.nic)
        if nic is None:
            raise ApplyError(f"interface {self.nic!r} does not exist")
        if nic.master:
            owner = env.link(index=nic.master)
            raise ApplyError(
                f"{self.nic} is already a port of {owner.name if owner else nic.master} and crossnet has no record "
                f"of its addresses and routes; crossnet does not take over an enslaved NIC: release it "
                f"(`ip link set {self.nic} nomaster`) and give it back its addresses, then apply again"
            )
        problems = nic_problems(env, nic.index, self.nic)
        if problems:
            raise ApplyError(
                f"backend bridge cannot move {self.nic}'s {'; '.join(problems)} onto {self.bridge}; "
                f"nothing was changed: remove it from {self.nic} (or use backend host-gw or vxlan, "
                "which leave the NIC alone), then apply again"
            )
        self.saved["addresses"] = link_addresses(env.ipr, nic.index)
        self.saved["routes"] = saved_routes(env, nic.index)

    def preflight(self, env: Env, owned: set[str]) -> None:
        self._capture(env)

    def prepare(self, env: Env) -> None:
        self._capture(env)

    def ensure(self, env: Env) -> None:
        self._capture(env)
        nic_idx = nl.require_index(env.ipr, self.nic)
        br_idx = nl.require_index(env.ipr, self.bridge)
        try:
            env.ipr.link("set", index=nic_idx, master=br_idx, state="up")
            crash_point()
            for a in self.saved["addresses"]:
                if not _has_addr(env, br_idx, a):
                    env.ipr.addr("add", **addr_kw(a, br_idx))
                    crash_point()
                _ignore_missing(env.ipr.addr, "del", **addr_kw(a, nic_idx))
                crash_point()
            for r in replay_order(self.saved["routes"]):
                env.ipr.route("replace", **route_kw(r, br_idx))
                crash_point()
        except Exception:
            # half-way: the NIC has lost its addresses (and with them its routes);
            # give everything back before the error travels up, so the host keeps
            # its connectivity whatever failed
            with contextlib.suppress(Exception):
                self.remove(env)
            raise
        finally:
            env.changed()

    def remove(self, env: Env) -> None:
        nic_idx = env.index(self.nic)
        br_idx = env.index(self.bridge)
        if nic_idx is None:
            return
        nic = env.link(index=nic_idx)
        if br_idx is not None and nic is not None and nic.master == br_idx:
            _ignore_missing(env.ipr.link, "set", index=nic_idx, master=0)
            crash_point()
        for a in self.saved.get("addresses", []):
            if br_idx is not None:
                _ignore_missing(env.ipr.addr, "del", **addr_kw(a, br_idx))
                crash_point()
            if not _has_addr(env, nic_idx, a):
                env.ipr.addr("add", **addr_kw(a, nic_idx))
                crash_point()
        env.ipr.link("set", index=nic_idx, state="up")
        for r in replay_order(self.saved.get("routes", [])):
            with contextlib.suppress(NetlinkError):
                env.ipr.route("replace", **route_kw(r, nic_idx))
                crash_point()
        env.changed()


def routes_present(env: Env, routes: list[dict], oif: int) -> bool:
    """Every saved route is in its table through `oif`."""
    current = {
        (nl.attr(m, "RTA_TABLE") or m["table"], _route_record(m)["dst"], nl.attr(m, "RTA_GATEWAY"))
        for m in env.ipr.get_routes(family=nl.AF_INET)
        if nl.attr(m, "RTA_OIF") == oif
    }
    return all((r.get("table") or nl.RT_TABLE_MAIN, r["dst"], r.get("gateway")) in current for r in routes)


def route_commands(routes: list[dict], dev: str) -> list[str]:
    """saved_routes() records as the `ip route` lines that would replay them on `dev`."""
    out = []
    for r in replay_order(routes):
        via = f" via {r['gateway']}" if r.get("gateway") else ""
        dst = "default" if r["dst"] == "0.0.0.0/0" else r["dst"]
        onlink = " onlink" if r.get("onlink") else ""
        table = f" table {r['table']}" if r.get("table", nl.RT_TABLE_MAIN) != nl.RT_TABLE_MAIN else ""
        metric = f" metric {r['metric']}" if r.get("metric") else ""
        out.append(f"ip route replace {dst}{via} dev {dev}{table}{metric}{onlink}")
    return out


def replay_order(routes: list[dict]) -> list[dict]:
    """Saved routes in an order the kernel accepts: narrower scopes (link routes a
    gateway may depend on) before universe routes, gateway-less before via."""
    return sorted(routes, key=lambda r: (-(r.get("scope") or 0), bool(r.get("gateway"))))


def route_kw(r: dict, oif: int) -> dict:
    """pyroute2 keyword arguments that recreate a saved_routes() record through `oif`."""
    net = ipaddress.ip_network(r["dst"])
    kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif,
                          "table": r.get("table") or nl.RT_TABLE_MAIN}
    if r.get("gateway"):
        kw["gateway"] = r["gateway"]
    if r.get("metric") is not None:
        kw["priority"] = r["metric"]
    if r.get("proto") is not None:
        kw["proto"] = r["proto"]
    if r.get("scope") is not None:
        kw["scope"] = r["scope"]
    if r.get("prefsrc"):
        kw["prefsrc"] = r["prefsrc"]
    if r.get("onlink"):
        kw["flags"] = nl.RTNH_F_ONLINK
    if r.get("type"):
        kw["type"] = r["type"]
    if r.get("tos"):
        kw["tos"] = r["tos"]
    if r.get("metrics"):
        kw["metrics"] = {str(k).lower().removeprefix("rtax_"): v for k, v in r["metrics"]}
    return kw
