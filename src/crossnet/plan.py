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
            res, errno = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise ApplyError(f"{res.describe()}: {os.strerror(errno)}{more}")

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
        if exc.code not in (2, 3, 19, 99):  # ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL
            raise


def _remove_link(env: Env, name: str) -> None:
    idx = env.index(name)
    if idx is not None:
        _ignore_missing(env.ipr.link, "del", index=idx)
        env.changed()


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
        _remove_link(env, self.name)


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
        env.ipr.link("set", index=env.require_index(self.name), address=self.mac, mtu=self.mtu, state="up")
        env.changed("links")

    def remove(self, env: Env) -> None:
        _remove_link(env, self.name)


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
            if exc.code != 17:  # EEXIST: already there (another writer)
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


def pending(desired: list[Resource], previous: list[Resource], env: Env) -> list[Change]:
    """What reconcile() would do, without doing it."""
    want_keys = {r.key() for r in desired}
    out = [Change("remove", r) for r in reversed(previous) if r.key() not in want_keys]
    prev_keys = {r.key() for r in previous}
    for r in desired:
        if not r.check(env):
            out.append(Change("repair" if r.key() in prev_keys else "create", r))
    return out


def reconcile(desired: list[Resource], previous: list[Resource], env: Env) -> Outcome:
    """Make the kernel match `desired`. Resources in `previous` but not desired are
    removed (reverse order). On failure, everything this call created is rolled
    back, then ApplyError is raised."""
    prev_by_key = {r.key(): r for r in previous}
    want_keys = {r.key() for r in desired}
    outcome = Outcome()
    created: list[Resource] = []
    for r in desired:
        old = prev_by_key.get(r.key())
        if old is not None and old.saved and not r.saved:
            r.saved = dict(old.saved)
    # check everything against ONE snapshot of the kernel, then fix what differs
    # (checking after each change would re-dump tables: quadratic with many peers)
    ok = [r.check(env) for r in desired]
    r: Resource | None = None
    try:
        for r, fine in zip(desired, ok):
            if fine:
                continue
            old = prev_by_key.get(r.key())
            if not r.batchable:
                env.flush()  # queued writes first: this one may depend on them
            r.ensure(env)
            if old is None:
                created.append(r)
            outcome.changes.append(Change("repair" if old is not None else "create", r))
        r = None
        env.flush()
    except Exception as exc:
        failed = r
        for undo in reversed(created):
            with contextlib.suppress(Exception):
                undo.remove(env)
        env.changed()
        if env.batch:
            env.batch.messages.clear()
        if isinstance(exc, ApplyError):
            raise ApplyError(f"{exc} (rolled back)") from exc
        what = failed.describe() if failed is not None else "apply"
        raise ApplyError(f"{what}: {exc} (rolled back)") from exc
    for r in reversed(previous):
        if r.key() not in want_keys:
            r.remove(env)
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


@dataclass
class NicTakeover(Resource):
    """The tutorial's bridge method: enslave NIC to BRIDGE and move the NIC's IPv4
    addresses and routes onto the bridge (the bridge already carries the NIC's MAC,
    so neighbours' ARP caches stay valid). `saved` keeps the NIC's original
    addresses and routes so remove() gives them back."""

    kind: ClassVar[str] = "nic-takeover"
    nic: str
    bridge: str

    def key(self) -> str:
        return f"takeover:{self.nic}"

    def describe(self) -> str:
        addrs = self.saved.get("addresses") or ["<the NIC's addresses>"]
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
        have = set(nl.addresses(env.ipr, br))
        if not set(self.saved.get("addresses", [])) <= have:
            return False
        current = {(r.dst, r.gateway) for r in nl.routes(env.ipr) if r.oif == br}
        return all((r["dst"], r["gateway"]) in current for r in self.saved.get("routes", []))

    def ensure(self, env: Env) -> None:
        nic_idx = nl.require_index(env.ipr, self.nic)
        br_idx = nl.require_index(env.ipr, self.bridge)
        if "addresses" not in self.saved:
            self.saved["addresses"] = nl.addresses(env.ipr, nic_idx)
            self.saved["routes"] = saved_routes(env, nic_idx)
        try:
            env.ipr.link("set", index=nic_idx, master=br_idx, state="up")
            for cidr in self.saved["addresses"]:
                iface = ipaddress.ip_interface(cidr)
                if cidr not in nl.addresses(env.ipr, br_idx):
                    env.ipr.addr("add", index=br_idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                _ignore_missing(env.ipr.addr, "del", index=nic_idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            for r in replay_order(self.saved["routes"]):
                env.ipr.route("replace", **route_kw(r, br_idx))
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
        if br_idx is not None:
            _ignore_missing(env.ipr.link, "set", index=nic_idx, master=0)
        for cidr in self.saved.get("addresses", []):
            iface = ipaddress.ip_interface(cidr)
            if br_idx is not None:
                _ignore_missing(env.ipr.addr, "del", index=br_idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            if cidr not in nl.addresses(env.ipr, nic_idx):
                env.ipr.addr("add", index=nic_idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        env.ipr.link("set", index=nic_idx, state="up")
        for r in replay_order(self.saved.get("routes", [])):
            with contextlib.suppress(NetlinkError):
                env.ipr.route("replace", **route_kw(r, nic_idx))
        env.changed()


def saved_routes(env: Env, index: int) -> list[dict]:
    """The routes through interface `index` that were not made by the kernel for an
    address, as records route_kw() can replay on another device (or back)."""
    return [
        {
            "dst": r.dst,
            "gateway": r.gateway,
            "metric": r.metric,
            "proto": r.proto,
            "scope": r.scope,
            "prefsrc": r.prefsrc,
            "onlink": bool(r.flags & nl.RTNH_F_ONLINK),
        }
        for r in nl.routes(env.ipr)
        if r.oif == index and r.proto != nl.RTPROT_KERNEL
    ]


def route_commands(routes: list[dict], dev: str) -> list[str]:
    """saved_routes() records as the `ip route` lines that would replay them on `dev`."""
    out = []
    for r in replay_order(routes):
        via = f" via {r['gateway']}" if r.get("gateway") else ""
        dst = "default" if r["dst"] == "0.0.0.0/0" else r["dst"]
        onlink = " onlink" if r.get("onlink") else ""
        out.append(f"ip route replace {dst}{via} dev {dev}{onlink}")
    return out


def replay_order(routes: list[dict]) -> list[dict]:
    """Saved routes in an order the kernel accepts: narrower scopes (link routes a
    gateway may depend on) before universe routes, gateway-less before via."""
    return sorted(routes, key=lambda r: (-(r.get("scope") or 0), bool(r.get("gateway"))))


def route_kw(r: dict, oif: int) -> dict:
    """pyroute2 keyword arguments that recreate a saved_routes() record through `oif`."""
    net = ipaddress.ip_network(r["dst"])
    kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif, "table": nl.RT_TABLE_MAIN}
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
    return kw
