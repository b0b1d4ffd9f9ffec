"""Resources for the Open vSwitch backends (see crossnet.plan for the contract).

Everything in OVSDB goes through one ovsdbapp connection per Env (opened lazily,
stored in ``env.extra["ovsdb"]``), in transactions; OpenFlow rules through one
batched ``ovs-ofctl replace-flows`` per change. ``describe()`` prints the equivalent
``ovs-vsctl`` / ``ovs-ofctl`` / ``ip`` command for ``apply --dry-run``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from crossnet.errors import ApplyError
from crossnet.netlink import iproute as nl
from crossnet.ovs import db as ovsdb
from crossnet.plan.env import Env
from crossnet.plan.nic import (
    replay_order,
    route_commands,
    route_kw,
    routes_present,
    saved_routes,
)
from crossnet.plan.resources import Resource, Sysctl, refuse_foreign_link
from crossnet.state import crash_point

OWNER_KEY = "crossnet"  # external_ids:crossnet=<what> on every bridge/port crossnet creates
FLOW_COOKIE = "0xc055e7"
LINK_WAIT_S = 5.0


def ovs(env: Env) -> ovsdb.OvsDb:
    """The OVSDB connection of this Env: on first use per Env, check that Open vSwitch
    runs and take the process-wide connection to it (see ovsdb.shared)."""
    handle = env.extra.get("ovsdb")
    if handle is None:
        handle = ovsdb.shared()
        env.extra["ovsdb"] = handle
    return handle


def ovs_or_none(env: Env) -> ovsdb.OvsDb | None:
    """Like ovs(), but None when Open vSwitch is not running (remembered for this Env,
    so `status` asks once): check() then says "not as desired" instead of failing, and
    `crossnet status` can still show everything else."""
    if env.extra.get("ovsdb") is None and env.extra.get("ovsdb_down"):
        return None
    try:
        return ovs(env)
    except ovsdb.OvsNotRunning as exc:
        env.extra["ovsdb_down"] = str(exc)
        return None


def owned(row: Any) -> bool:
    """A Bridge/Port row crossnet created: it carries external_ids:crossnet."""
    return row is not None and OWNER_KEY in (row.external_ids or {})


def bridge_conflict(d: ovsdb.OvsDb, name: str) -> str | None:
    """Why crossnet must not use OVS bridge NAME (it exists and crossnet did not create it)."""
    row = d.bridge(name)
    if row is None or owned(row):
        return None
    ports = [p for p in d.ports_of(name) if p != name]
    has = f" (ports: {', '.join(ports)})" if ports else ""
    return (
        f"OVS bridge {name} already exists and was not created by crossnet (no external_ids:{OWNER_KEY}){has}; "
        f"crossnet does not take over OVS configuration it did not create: remove it (`ovs-vsctl del-br {name}`) "
        f"or rename it, then apply again (crossnet's OVS bridge names are fixed)"
    )


def port_conflict(d: ovsdb.OvsDb, bridge: str, name: str, role: str = "port") -> str | None:
    """Why crossnet must not add port NAME to BRIDGE: the port exists on a bridge crossnet
    did not create, or on crossnet's bridge without crossnet's mark."""
    other = d.bridge_of_port(name)
    if other is None:
        return None
    if other != bridge and owned(d.bridge(other)):
        return None  # moved between crossnet's own bridges, as before
    if other == bridge and (owned(d.port(name)) or not owned(d.bridge(other))):
        return None  # ours; or the bridge itself is foreign (bridge_conflict says so)
    what = "interface" if role == "nic" else "OVS port"
    where = f"OVS bridge {other}, which crossnet did not create" if other != bridge else (
        f"crossnet's bridge {other} but was not created by crossnet (no external_ids:{OWNER_KEY})")
    hint = "; or set hosts[].iface to another NIC in the cluster file" if role == "nic" else ""
    return (
        f"{what} {name} is a port of {where}; crossnet does not take it over: "
        f"remove it there (`ovs-vsctl del-port {other} {name}`){hint}, then apply again"
    )


def _changed(env: Env, *kinds: str) -> None:
    """Tell the Env's kernel-state cache that something changed."""
    env.changed(*kinds)


def _link(env: Env, name: str) -> nl.LinkInfo | None:
    return nl.link_info(env.ipr, name)


def _wait_link(env: Env, name: str, timeout: float = LINK_WAIT_S) -> nl.LinkInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = _link(env, name)
        if info is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _changed(env, "links")
    if info is None:
        raise ApplyError(f"ovs-vswitchd did not create interface {name} within {timeout:.0f}s (see its log)")
    return info


def _vsctl_value(v: Any) -> str:
    s = str(v)
    return s if re.fullmatch(r"[\w.:/-]+", s) else f'"{s}"'


# ---------------------------------------------------------------- bridges and ports


@dataclass
class OvsBridge(Resource):
    """An OVS bridge with its internal (LOCAL) port of the same name."""

    kind: ClassVar[str] = "ovs-bridge"
    name: str
    datapath: str = "netdev"  # OVSDB datapath_type: netdev (userspace) | system (kernel)
    fail_mode: str | None = None  # secure: no flows (drop) until crossnet installs them
    hwaddr: str | None = None  # MAC of the bridge's internal port
    mtu: int | None = None  # mtu_request of the internal port
    role: str = "bridge"

    def key(self) -> str:
        return f"ovs-bridge:{self.name}"

    def _sets(self) -> tuple[list[str], list[str]]:
        br = [f"datapath_type={self.datapath}"]
        if self.fail_mode:
            br.append(f"fail_mode={self.fail_mode}")
        if self.hwaddr:
            br.append(f"other_config:hwaddr={_vsctl_value(self.hwaddr)}")
        br.append(f"external_ids:{OWNER_KEY}={self.role}")
        iface = [f"mtu_request={self.mtu}"] if self.mtu else []
        return br, iface

    def describe(self) -> str:
        br, iface = self._sets()
        out = f"ovs-vsctl --may-exist add-br {self.name} -- set bridge {self.name} {' '.join(br)}"
        if iface:
            out += f" -- set interface {self.name} {' '.join(iface)}"
        return out

    def check(self, env: Env) -> bool:
        d = ovs_or_none(env)
        if d is None:
            return False
        row = d.bridge(self.name)
        if row is None or not owned(row):  # someone else's bridge is never "as desired"
            return False
        if row.datapath_type != self.datapath or ovsdb.one(row.fail_mode) != self.fail_mode:
            return False
        if self.hwaddr and row.other_config.get("hwaddr") != self.hwaddr:
            return False
        if row.external_ids.get(OWNER_KEY) != self.role:
            return False
        iface = d.interface(self.name)
        if iface is None or not ovsdb.one(iface.ofport) or ovsdb.one(iface.ofport) < 0:
            return False
        if self.mtu and ovsdb.one(iface.mtu_request) != self.mtu:
            return False
        # the internal port is a kernel device in both datapaths (a tap device with
        # netdev, an `openvswitch` device with system), and crossnet enslaves it
        link = _link(env, self.name)
        return link is not None and not (self.mtu and link.mtu != self.mtu)

    def ensure(self, env: Env) -> None:
        d = ovs(env)
        conflict = bridge_conflict(d, self.name)
        if conflict:
            raise ApplyError(conflict)
        api = d.api
        with d.transaction() as txn:
            txn.add(api.add_br(self.name, may_exist=True, datapath_type=self.datapath))
            cols: list[tuple[str, Any]] = [("external_ids", {OWNER_KEY: self.role})]
            if self.fail_mode:
                cols.append(("fail_mode", self.fail_mode))
            if self.hwaddr:
                cols.append(("other_config", {"hwaddr": self.hwaddr}))
            txn.add(api.db_set("Bridge", self.name, *cols))
            if self.mtu:
                txn.add(api.db_set("Interface", self.name, ("mtu_request", self.mtu)))
        if not self.fail_mode:
            with contextlib.suppress(Exception), d.transaction() as txn:
                txn.add(api.db_clear("Bridge", self.name, "fail_mode"))
        _wait_link(env, self.name)  # both datapaths: Enslave and AddressMove need the device
        _changed(env, "links")

    def preflight(self, env: Env, owned_keys: set[str]) -> None:
        """A kernel link of this name with no OVS bridge behind it (an admin's dummy, tap,
        Linux bridge) is refused: OVS would take it for the bridge's internal port (a
        persistent tap it even opens), crossnet would enslave it, and remove() delete it.
        With an OVSDB row, bridge_conflict judges the row (the link is its internal port)."""
        if self.key() in owned_keys or env.link(self.name) is None:
            return
        d = ovs_or_none(env)
        if d is not None and d.bridge(self.name) is not None:
            return
        refuse_foreign_link(env, self.name, self.key(), owned_keys, " (crossnet's OVS bridge names are fixed)")

    def remove(self, env: Env) -> None:
        d = ovs(env)
        row = d.bridge(self.name)
        if row is not None and not owned(row):
            return  # replaced by a bridge crossnet did not create: not ours to delete
        if row is not None:
            with d.transaction() as txn:
                txn.add(d.api.del_br(self.name, if_exists=True))
        # internal ports of a netdev bridge are tap devices; make sure none is left
        deadline = time.monotonic() + LINK_WAIT_S
        while _link(env, self.name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        link = _link(env, self.name)
        if link is not None and link.kind == "tun":
            with contextlib.suppress(NetlinkError):
                env.ipr.link("del", index=link.index)
        _changed(env)


@dataclass
class OvsPort(Resource):
    """A port of an OVS bridge: a system interface (type ""), or a tunnel (gre, vxlan)."""

    kind: ClassVar[str] = "ovs-port"
    bridge: str
    name: str
    type: str = ""
    options: dict[str, str] = field(default_factory=dict)
    role: str = "port"

    def key(self) -> str:
        return f"ovs-port:{self.name}"

    def describe(self) -> str:
        out = f"ovs-vsctl --may-exist add-port {self.bridge} {self.name}"
        sets = [f"type={self.type}"] if self.type else []
        sets += [f"options:{k}={_vsctl_value(v)}" for k, v in sorted(self.options.items())]
        if sets:
            out += f" -- set interface {self.name} {' '.join(sets)}"
        return out

    def check(self, env: Env) -> bool:
        d = ovs_or_none(env)
        if d is None or d.bridge_of_port(self.name) != self.bridge or not owned(d.port(self.name)):
            return False
        iface = d.interface(self.name)
        if iface is None or iface.type != self.type or dict(iface.options) != self.options:
            return False
        ofport = ovsdb.one(iface.ofport)
        return bool(ofport) and ofport > 0 and not ovsdb.one(iface.error)

    def ensure(self, env: Env) -> None:
        d = ovs(env)
        conflict = port_conflict(d, self.bridge, self.name, self.role)
        if conflict:
            raise ApplyError(conflict)
        api = d.api
        other = d.bridge_of_port(self.name)
        if other is not None and other != self.bridge:
            with d.transaction() as txn:
                txn.add(api.del_port(self.name, bridge=other, if_exists=True))
        exists = other == self.bridge and d.interface(self.name) is not None
        with d.transaction() as txn:
            txn.add(api.add_port(self.bridge, self.name, may_exist=True))
            txn.add(api.db_set("Port", self.name, ("external_ids", {OWNER_KEY: self.role})))
            if exists:
                txn.add(api.db_clear("Interface", self.name, "options"))
            cols: list[tuple[str, Any]] = [("type", self.type)]
            if self.options:
                cols.append(("options", dict(self.options)))
            txn.add(api.db_set("Interface", self.name, *cols))
        iface = d.interface(self.name)
        err = ovsdb.one(iface.error) if iface is not None else "no Interface row"
        if err:
            raise ApplyError(f"ovs-vswitchd rejected port {self.name} on {self.bridge}: {err}")
        _changed(env, "links")

    def remove(self, env: Env) -> None:
        d = ovs(env)
        if owned(d.port(self.name)):  # a port crossnet did not create is left alone
            with d.transaction() as txn:
                txn.add(d.api.del_port(self.name, if_exists=True))
        _changed(env, "links")


# ---------------------------------------------------------------- the underlay address on br-phy


@dataclass
class AddressMove(Resource):
    """Native tunnelling in the userspace datapath needs the tunnel endpoint address
    on an OVS bridge's internal port: move the NIC's IPv4 addresses and its routes to
    DEV (br-phy), which already holds the NIC as a port. `saved` keeps the NIC's
    original addresses and routes so remove() gives them back (like plan.NicTakeover
    for the Linux bridge, without `ip link set master`: the userspace datapath reads
    the NIC through a packet socket)."""

    kind: ClassVar[str] = "ovs-address-move"
    nic: str
    dev: str

    def key(self) -> str:
        return f"takeover:{self.nic}"

    def describe(self) -> str:
        addrs = self.saved.get("addresses") or ["<nic addresses>"]
        cmds = [f"ip link set {self.dev} up"]
        cmds += [f"ip addr add {a} dev {self.dev}" for a in addrs]
        cmds.append(f"ip addr flush dev {self.nic}")
        routes = self.saved.get("routes")
        if routes:
            cmds += route_commands(routes, self.dev)
        else:
            cmds.append(f"ip route replace default via <gateway> dev {self.dev}")
        return " && ".join(cmds)

    def check(self, env: Env) -> bool:
        nic = _link(env, self.nic)
        dev = _link(env, self.dev)
        if nic is None or dev is None or not nic.up or not dev.up:
            return False
        if nl.addresses(env.ipr, nic.index):
            return False
        have = set(nl.addresses(env.ipr, dev.index))
        # without a record (status of a fresh plan) the address must at least have moved
        if not have or not set(self.saved.get("addresses", [])) <= have:
            return False
        return routes_present(env, self.saved.get("routes", []), dev.index)  # in every table

    def prepare(self, env: Env) -> None:
        """Record the NIC's addresses and routes before anything changes (apply writes
        them to its journal then: an apply killed half-way can be completed or undone)."""
        if "addresses" in self.saved:
            return
        nic = _link(env, self.nic)
        if nic is None:
            raise ApplyError(f"interface {self.nic!r} does not exist")
        addrs = nl.addresses(env.ipr, nic.index)
        if not addrs:
            raise ApplyError(f"{self.nic} has no IPv4 address to move onto {self.dev}")
        self.saved["addresses"] = addrs
        self.saved["routes"] = saved_routes(env, nic.index)

    def ensure(self, env: Env) -> None:
        self.prepare(env)
        nic = _link(env, self.nic)
        assert nic is not None
        dev = _wait_link(env, self.dev)
        try:
            if not nic.up:
                env.ipr.link("set", index=nic.index, state="up")
            env.ipr.link("set", index=dev.index, state="up")
            for cidr in self.saved["addresses"]:
                iface = ipaddress.ip_interface(cidr)
                if cidr not in nl.addresses(env.ipr, dev.index):
                    env.ipr.addr("add", index=dev.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                    crash_point()
                if cidr in nl.addresses(env.ipr, nic.index):
                    env.ipr.addr("del", index=nic.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                    crash_point()
            for r in replay_order(self.saved["routes"]):
                env.ipr.route("replace", **route_kw(r, dev.index))
                crash_point()
        except Exception:
            with contextlib.suppress(Exception):
                self.remove(env)  # half-moved: give the NIC its addresses and routes back
            raise
        finally:
            _changed(env)

    def remove(self, env: Env) -> None:
        nic = _link(env, self.nic)
        dev = _link(env, self.dev)
        if nic is None:
            return
        for cidr in self.saved.get("addresses", []):
            iface = ipaddress.ip_interface(cidr)
            if dev is not None:
                with contextlib.suppress(NetlinkError):
                    env.ipr.addr("del", index=dev.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            if cidr not in nl.addresses(env.ipr, nic.index):
                env.ipr.addr("add", index=nic.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        env.ipr.link("set", index=nic.index, state="up")
        for r in replay_order(self.saved.get("routes", [])):
            with contextlib.suppress(NetlinkError):
                env.ipr.route("replace", **route_kw(r, nic.index))
        _changed(env)


# ---------------------------------------------------------------- per-device sysctl


@dataclass
class DevSysctl(Sysctl):
    """A sysctl of an interface crossnet creates in the same apply (net.ipv4.conf.<dev>.*):
    not there yet means "needs doing", not an error."""

    kind: ClassVar[str] = "dev-sysctl"

    def check(self, env: Env) -> bool:
        try:
            return super().check(env)
        except FileNotFoundError:
            return False


@dataclass
class DevIpv6Off(DevSysctl):
    """IPv6 off on an interface crossnet creates (``net.ipv6.conf.<dev>.disable_ipv6=1``),
    set before the interface comes up: crossnet's networks are IPv4 only, and Open vSwitch's
    userspace datapath sometimes drops a tunnel packet it receives while a new internal
    port comes up with IPv6 (its link-local address, DAD, MLD): 2-3 packets per 25 ports
    measured, none with IPv6 off on the port and its Linux bridge (docs/ovs.md, "Packets
    lost while a bridge is added"). A kernel without IPv6 (no /proc/sys/net/ipv6): nothing
    to do. remove() leaves the value: the interface goes with the network (turning IPv6
    back on first would bring back the very packets this avoids, next to the networks that
    stay)."""

    kind: ClassVar[str] = "dev-ipv6-off"
    IPV6: ClassVar[Path] = Path("/proc/sys/net/ipv6")

    @classmethod
    def of(cls, dev: str) -> DevIpv6Off:
        return cls(f"net.ipv6.conf.{dev}.disable_ipv6", "1")

    def check(self, env: Env) -> bool:
        return not self.IPV6.is_dir() or super().check(env)

    def ensure(self, env: Env) -> None:
        if self.IPV6.is_dir():
            super().ensure(env)

    def remove(self, env: Env) -> None:
        pass


# ---------------------------------------------------------------- OpenFlow


_PORT_REF = re.compile(r"(in_port=|output:)([A-Za-z_][\w.-]*)")


@dataclass
class OvsFlows(Resource):
    """The complete OpenFlow table of a bridge crossnet owns, replaced in one batch
    (`ovs-ofctl replace-flows`) when it differs (`ovs-ofctl diff-flows`). Flows name
    ports; they are resolved to OpenFlow port numbers from OVSDB at check/ensure time,
    so a port renumbered by a restarted ovs-vswitchd is noticed and repaired."""

    kind: ClassVar[str] = "ovs-flows"
    bridge: str
    flows: list[str] = field(default_factory=list)

    def key(self) -> str:
        return f"ovs-flows:{self.bridge}"

    def describe(self) -> str:
        body = "\n".join(self.flows)
        return f"ovs-ofctl replace-flows {self.bridge} - <<'EOF'\n{body}\nEOF"

    def _numbered(self, env: Env) -> str | None:
        d = ovs(env)
        out = []
        missing = []

        def sub(m: re.Match) -> str:
            name = m.group(2)
            if name in ("LOCAL", "IN_PORT", "ALL", "FLOOD", "NORMAL", "CONTROLLER", "NONE"):
                return m.group(0)
            iface = d.interface(name)
            ofport = ovsdb.one(iface.ofport) if iface is not None else None
            if not ofport or ofport < 0:
                missing.append(name)
                return m.group(0)
            return f"{m.group(1)}{ofport}"

        for flow in self.flows:
            out.append(_PORT_REF.sub(sub, flow))
        if missing:
            return None
        return "\n".join(out) + "\n"

    def check(self, env: Env) -> bool:
        d = ovs_or_none(env)
        if d is None or d.bridge(self.bridge) is None:
            return False
        text = self._numbered(env)
        if text is None:
            return False
        fd, path = tempfile.mkstemp(prefix="crossnet-flows.", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            proc = ovsdb.ofctl("diff-flows", self.bridge, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return proc.returncode == 0 and not proc.stdout.strip()

    def ensure(self, env: Env) -> None:
        text = self._numbered(env)
        if text is None:
            raise ApplyError(f"flows for {self.bridge}: a port they name has no OpenFlow number yet")
        proc = ovsdb.ofctl("replace-flows", self.bridge, "-", input=text)
        if proc.returncode != 0:
            raise ApplyError(f"ovs-ofctl replace-flows {self.bridge}: {ovsdb.last_line(proc)}")

    def remove(self, env: Env) -> None:
        if owned(ovs(env).bridge(self.bridge)):
            ovsdb.ofctl("del-flows", self.bridge, f"cookie={FLOW_COOKIE}/-1")


# ---------------------------------------------------------------- tunnel neighbour cache


_NEIGH_LINE = re.compile(r"^(\d+\.\d+\.\d+\.\d+)\s+([0-9a-f:]{17})\s+(\S+)", re.IGNORECASE)


def tunnel_neighbours() -> list[tuple[str, str, str]]:
    """(ip, mac, bridge) from `ovs-appctl tnl/neigh/show`."""
    proc = ovsdb.appctl("tnl/neigh/show")
    out = []
    for line in proc.stdout.splitlines():
        m = _NEIGH_LINE.match(line.strip())
        if m:
            out.append((m.group(1), m.group(2).lower(), m.group(3)))
    return out


NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # REACHABLE STALE DELAY PROBE PERMANENT


@dataclass
class TunnelNeighbours(Resource):
    """OVS's userspace tunnel neighbour cache must agree with the kernel's ARP table
    on DEV (br-phy): a stale entry (a peer or router that changed its MAC, an
    entry learnt from a host kernel answering on its enslaved NIC) black-holes
    every tunnel packet to that next hop. When they disagree, flush the cache;
    OVS re-resolves the next hop itself with the next tunnel packet."""

    kind: ClassVar[str] = "ovs-tnl-neigh"
    dev: str

    def key(self) -> str:
        return f"ovs-tnl-neigh:{self.dev}"

    def describe(self) -> str:
        return (
            "ovs-appctl tnl/neigh/flush && ovs-appctl revalidator/purge"
            f"  # only if `ovs-appctl tnl/neigh/show` disagrees with `ip neigh show dev {self.dev}`"
        )

    def _stale(self, env: Env) -> list[str]:
        idx = nl.ifindex(env.ipr, self.dev)
        if idx is None:
            return []
        kernel: dict[str, str] = {}
        for n in env.ipr.get_neighbours(family=nl.AF_INET, ifindex=idx):
            mac = n.get_attr("NDA_LLADDR")
            if mac and n["state"] & NUD_VALID:
                kernel[n.get_attr("NDA_DST")] = mac.lower()
        return [ip for ip, mac, br in tunnel_neighbours() if br == self.dev and ip in kernel and kernel[ip] != mac]

    def check(self, env: Env) -> bool:
        return not self._stale(env)

    def ensure(self, env: Env) -> None:
        # the flush alone does not touch datapath flows that already carry the stale
        # tunnel header (kept alive by the very traffic they black-hole): purge them so
        # the next packet is translated again and OVS re-resolves the next hop
        for cmd in ("tnl/neigh/flush", "revalidator/purge"):
            proc = ovsdb.appctl(cmd)
            if proc.returncode != 0:
                raise ApplyError(f"ovs-appctl {cmd}: {ovsdb.last_line(proc)}")

    def remove(self, env: Env) -> None:
        """Nothing to undo (a cache)."""


__all__ = ["FLOW_COOKIE", "AddressMove", "DevIpv6Off", "DevSysctl", "OvsBridge", "OvsFlows", "OvsPort", "TunnelNeighbours",
           "bridge_conflict", "ovs", "ovs_or_none", "owned", "port_conflict"]
