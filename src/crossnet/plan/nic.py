"""Moving a NIC into a bridge (the bridge backend's takeover): the `NicTakeover`
resource and the saved address and route records it moves and gives back."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pyroute2.netlink.exceptions import NetlinkError

if TYPE_CHECKING:  # imported by whoever opens a socket (crossnet.netlink.iproute.open_ipr)
    from pyroute2 import IPRoute

from crossnet.netlink import iproute as nl
from crossnet.errors import ApplyError
from crossnet.netlink.const import AF_INET6, IFA_F_NOPREFIXROUTE, RT_SCOPE_LINK, RTN_UNICAST
from crossnet.state import crash_point
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource, _ignore_missing


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
            # its connectivity whatever failed (remove() reads links: the snapshot from
            # before the NIC was enslaved would make it leave the NIC a port of the bridge)
            env.changed()
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
