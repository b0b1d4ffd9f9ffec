"""Desired kernel state as a list of Resources (the reconciler that makes the kernel
match it is crossnet.plan.reconciler).

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
import re
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from crossnet.errors import ApplyError
from crossnet.netlink import iproute as nl
from crossnet.plan.env import Env

REGISTRY: dict[str, type["Resource"]] = {}
# kinds defined by a module the commands import only when they need it (start-up time):
# from_json imports it to read a record holding one (tests/unit/test_ebpf.py checks the list)
LAZY_KINDS: dict[str, str] = {"ebpf-programs": "crossnet.ebpf.host", "ebpf-config": "crossnet.ebpf.host",
                              "ebpf-tc": "crossnet.ebpf.host"}


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
        resource must not be applied here. `owned`: keys of what crossnet recorded.
        Default: what :meth:`conflict` says, recorded or not."""
        why = self.conflict(env)
        if why:
            raise ApplyError(why)

    def conflict(self, env: Env) -> str | None:
        """Why `apply` would refuse to (re)create this resource here (something crossnet did
        not create is in the way), or None: `status` gives it with the drift."""
        return None

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
        kind = data.pop("kind")
        if kind not in REGISTRY and kind in LAZY_KINDS:
            import importlib

            importlib.import_module(LAZY_KINDS[kind])
        cls = REGISTRY.get(kind)
        if cls is None:  # e.g. a record written by a newer crossnet: one line, not a KeyError
            raise ApplyError(f"crossnet's record of this host names a resource kind this crossnet does not know: "
                             f"{kind!r} (written by another version of crossnet?)")
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

    # bridge netfilter (br_netfilter) off on crossnet's own bridges: nothing of crossnet's
    # needs bridged frames in the IP hooks (docs/benchmarks-parity.md). The per-bridge
    # switches can only turn the hooks ON for one bridge while the namespace's
    # net.bridge.bridge-nf-call-* sysctls are 0 (BridgeNetfilterOff), so they must stay 0.
    NF_CALL: ClassVar[tuple[str, ...]] = ("iptables", "ip6tables", "arptables")

    def describe(self) -> str:
        mac = f" address {self.mac}" if self.mac else ""
        nf = " ".join(f"nf_call_{t} 0" for t in self.NF_CALL)
        return (f"ip link add {self.name} type bridge{mac} && ip link set {self.name} mtu {self.mtu} up"
                f" && ip link set dev {self.name} type bridge {nf}")

    def check(self, env: Env) -> bool:
        info = env.link(self.name)
        return (
            info is not None
            and info.kind == "bridge"
            and info.mtu == self.mtu
            and info.up
            and (self.mac is None or info.mac == self.mac)
            and all(not info.info_data.get(f"IFLA_BR_NF_CALL_{t.upper()}", 0) for t in self.NF_CALL)
        )

    def ensure(self, env: Env) -> None:
        info = env.link(self.name)
        if info is not None and info.kind != "bridge":
            raise ApplyError(f"interface {self.name} exists but is a {info.kind or 'plain'} link, not a bridge")
        kw = {"address": self.mac} if self.mac else {}
        if info is None:
            env.ipr.link("add", ifname=self.name, kind="bridge", **kw)
            env.changed("links")
        env.ipr.link("set", index=env.require_index(self.name), mtu=self.mtu, state="up", kind="bridge",
                     **{f"br_nf_call_{t}": 0 for t in self.NF_CALL}, **kw)
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
        # as crossnet makes it: a route typed from --dry-run is then crossnet's (docs/security.md)
        parts.append(f"proto {nl.RTPROT_CROSSNET}")
        return " ".join(parts)

    def _kw(self, env: Env) -> dict:
        net = ipaddress.ip_network(self.dst)
        kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "table": nl.RT_TABLE_MAIN,
                              "proto": nl.RTPROT_CROSSNET}
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

    def preflight(self, env: Env, owned: set[str]) -> None:
        """crossnet never takes over a route it did not make: `ensure`'s `ip route replace`
        would overwrite the main table's route to this destination without a metric, and
        the record would then make it crossnet's (`reset`, the peer going away, delete
        it) -- also an admin's route identical to crossnet's. Unless this route is
        recorded (an older crossnet's routes carry proto static, not the marker), such a
        route must carry crossnet's protocol number (RTPROT_CROSSNET)."""
        if self.key() in owned:
            return
        for r in self._current(env):
            if not r.metric and r.proto != nl.RTPROT_CROSSNET:
                via = f" via {r.gateway}" if r.gateway else ""
                link = env.link(index=r.oif) if r.oif else None
                dev = f" dev {link.name}" if link else ""
                raise ApplyError(
                    f"route {r.dst}{via}{dev} already exists and was not made by crossnet; crossnet does not "
                    "take over or delete routes it did not make: delete it, then apply again"
                )

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
            env.batch.route_replace(self.dst, self.gateway, oif, self.onlink, self, nl.RTPROT_CROSSNET)
            return
        env.ipr.route("replace", **self._kw(env))
        env.changed("routes")

    def remove(self, env: Env) -> None:
        # only the route ensure() makes: through its device (gone with the device: gone), with
        # no metric, crossnet's protocol number (proto static: an older crossnet's) -- others
        # to the same destination (an admin's fallback through another device or with a
        # metric, an identical one `ip route` made: proto boot) are not crossnet's
        own = env.index(self.dev) if self.dev else None
        if self.dev and own is None:
            return
        gone = [r for r in self._current(env)
                if r.gateway == self.gateway and (own is None or r.oif == own) and not r.metric
                and r.proto in (nl.RTPROT_CROSSNET, nl.RTPROT_STATIC)]
        for r in gone:
            net = ipaddress.ip_network(self.dst)
            kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "table": nl.RT_TABLE_MAIN,
                                  "proto": r.proto}
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


@dataclass
class BridgeNetfilterOff(Resource):
    """Bridge netfilter off in this namespace: `net.bridge.bridge-nf-call-{iptables,
    ip6tables,arptables}` = 0. With br_netfilter loaded every bridge of a namespace passes
    its frames through the IP/ARP netfilter hooks while these are 1 (each new namespace
    starts at 1); a bridge's own nf_call_* attributes can only add the hooks, never remove
    them (measured, docs/benchmarks-parity.md). Nothing of crossnet's needs bridged frames
    in those hooks (masquerade, expose and the isolation tables act on routed packets), so
    crossnet turns them off -- but only while its own bridges (`ours`) are the only ones in
    the namespace: another bridge (Docker's, a CNI's) may rely on them, so then crossnet
    leaves them as they are (check() is satisfied) rather than fight over them.
    No br_netfilter (no /proc/sys/net/bridge): nothing to do. remove() restores the values
    it found."""

    kind: ClassVar[str] = "bridge-nf-off"
    ours: list[str] = field(default_factory=list)
    NAMES: ClassVar[tuple[str, ...]] = tuple(f"net.bridge.bridge-nf-call-{t}" for t in Bridge.NF_CALL)
    ROOT: ClassVar[Path] = Path("/proc/sys")

    def key(self) -> str:
        return "sysctl:net.bridge.bridge-nf-call"

    def path(self, name: str) -> Path:
        return self.ROOT / name.replace(".", "/")

    def describe(self) -> str:
        others = f"no bridge but {', '.join(self.ours)}" if self.ours else "no other bridge"
        return (f"sysctl -w {' '.join(f'{n}=0' for n in self.NAMES)}"
                f"   # while br_netfilter is loaded and this host has {others}")

    def foreign(self, env: Env) -> list[str]:
        return sorted(l.name for l in env.links().values() if l.kind == "bridge" and l.name not in self.ours)

    def _current(self) -> dict[str, str]:
        out = {}
        for name in self.NAMES:
            with contextlib.suppress(OSError):
                out[name] = self.path(name).read_text().strip()
        return out

    def check(self, env: Env) -> bool:
        current = self._current()
        return not current or all(v == "0" for v in current.values()) or bool(self.foreign(env))

    def prepare(self, env: Env) -> None:
        for name, value in self._current().items():
            if value != "0":
                self.saved.setdefault(name, value)

    def ensure(self, env: Env) -> None:
        if self.foreign(env):
            return
        for name, value in self._current().items():
            if value != "0":
                self.saved.setdefault(name, value)
                self.path(name).write_text("0")

    def remove(self, env: Env) -> None:
        for name, value in self.saved.items():
            if name in self.NAMES and value in ("0", "1"):
                with contextlib.suppress(OSError):
                    self.path(name).write_text(value)


def nft(script: str) -> subprocess.CompletedProcess:
    """Run an nft script (nft has no netlink library on PyPI; this is the control plane only)."""
    return subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)


_NFT_SET = re.compile(r"\{ ([^{}]*) \}")  # an anonymous set or map written on one line


def nft_line(line: str) -> str:
    """A line of nft text with its one-line sets' elements sorted: nft lists a set's
    elements in an order of its own (a hash set's, not the order they were given in)."""
    return _NFT_SET.sub(lambda m: "{ " + ", ".join(sorted(m.group(1).split(", "))) + " }", line.strip())


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
        have = [nft_line(line) for line in out.stdout.splitlines() if line.strip()]
        want = [nft_line(line) for line in self.body.splitlines() if line.strip()]
        it = iter(have)
        return all(any(w == h for h in it) for w in want)

    def preflight(self, env: Env, owned: set[str]) -> None:
        """crossnet never replaces (ensure) or deletes (remove) a table it did not create: the
        table existing while crossnet has no record of it (applied.json, or the journal of
        an interrupted apply) is refused. Only asked for a table not on record."""
        if self.key() in owned:
            return
        try:
            found = subprocess.run(["nft", "list", "table", self.family, self.name], capture_output=True).returncode == 0
        except OSError:
            return  # no nft: check/ensure say so
        if found:
            raise ApplyError(f"nftables table {self.family} {self.name} already exists and was not created by crossnet; "
                             "crossnet does not replace or delete tables it did not create: delete it, then apply again")

    def ensure(self, env: Env) -> None:
        # declaring then deleting then re-creating in one transaction replaces it atomically
        script = f"table {self.family} {self.name}\ndelete table {self.family} {self.name}\n" + self.script()
        res = nft(script)
        if res.returncode != 0:
            raise ApplyError(f"nft failed for table {self.family} {self.name}: {res.stderr.strip().splitlines()[-1:]}")

    def remove(self, env: Env) -> None:
        nft(f"table {self.family} {self.name}\ndelete table {self.family} {self.name}\n")
