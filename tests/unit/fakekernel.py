"""A fake kernel for the reconciler, without root: `FakeKernel` keeps links, addresses,
routes, neighbours and FDB entries in memory; `FakeIpr` is the slice of pyroute2's
IPRoute the resources of crossnet.plan call (link/addr/route/neigh/fdb); `FakeEnv` is a
real `plan.Env` (same snapshot cache and `changed()` rules) whose dumps read the fake
kernel, and whose batch (a real `nlbatch.Batch`, messages packed as for the kernel)
commits into it. Every write is appended to `FakeKernel.log`, in order; a write can be
refused with an errno (`FakeKernel.refuse`) to drive the rollback paths.

Used by tests/unit/test_reconcile.py and tests/unit/test_agent_sync.py."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from crossnet.netlink import garp
from crossnet.netlink import iproute as nl
from crossnet.netlink.batch import Batch
from crossnet.netlink.const import (
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RTPROT_KERNEL,
    RTPROT_STATIC,
)
from crossnet.plan.env import Env
from crossnet.plan.resources import BridgeNetfilterOff, Fdb, Neigh, Route, Sysctl


class FakeKernel:
    def __init__(self) -> None:
        self.links: dict[str, nl.LinkInfo] = {}
        self.addrs: dict[int, list[str]] = {}
        self.routes: list[nl.RouteInfo] = []
        self.neigh: dict[tuple[int, str], tuple[str, int]] = {}
        self.fdb: set[tuple[int, str, str | None]] = set()
        self.log: list[tuple[str, ...]] = []  # every write, in order: (op, what)
        self.refuse: dict[tuple[str, str], int] = {}  # (op, what) -> errno
        self.dumps = 0  # how many dumps the Env read (its snapshot cache)
        self._next = 1

    # ---- the machine's own state (a test sets it up)
    def add_link(self, name: str, kind: str | None = None, mtu: int = 1500, mac: str | None = None,
                 up: bool = True, info: dict | None = None) -> int:
        idx = self._next = self._next + 1
        self.links[name] = nl.LinkInfo(idx, name, kind, mtu, mac, up, None, dict(info or {}))
        return idx

    def add_addr(self, dev: str, cidr: str, connected: bool = True) -> None:
        idx = self.links[dev].index
        self.addrs.setdefault(idx, []).append(cidr)
        if connected:
            net = ipaddress.ip_interface(cidr).network
            self.routes.append(nl.RouteInfo(str(net), None, idx, RTPROT_KERNEL, RT_SCOPE_LINK,
                                            cidr.split("/")[0], 0, None))

    def index(self, name: str) -> int | None:
        link = self.links.get(name)
        return link.index if link else None

    def name_of(self, index: int) -> str:
        return next(n for n, li in self.links.items() if li.index == index)

    def route(self, dst: str) -> nl.RouteInfo | None:
        return next((r for r in self.routes if r.dst == dst and r.proto != RTPROT_KERNEL), None)

    # ---- stand-ins for the crossnet.netlink lookups that bypass the Env (a test patches
    # them in: monkeypatch.setattr(nl, "link_info", kernel.link_info))
    def link_info(self, ipr: Any, name: str | None = None, index: int | None = None) -> nl.LinkInfo | None:
        if name is not None:
            return self.links.get(name)
        return next((li for li in self.links.values() if li.index == index), None)

    def route_get(self, ipr: Any, dst: str) -> nl.RouteInfo | None:
        """The most specific route to `dst` (the kernel's `ip route get`)."""
        addr = ipaddress.ip_address(dst)
        best = max((r for r in self.routes if addr in ipaddress.ip_network(r.dst)),
                   key=lambda r: ipaddress.ip_network(r.dst).prefixlen, default=None)
        return replace(best, dst=f"{dst}/32") if best else None

    # ---- writes
    def write(self, op: str, what: str) -> None:
        code = self.refuse.get((op, what))
        if code:
            raise NetlinkError(code)  # its text: the errno's, as from the kernel
        self.log.append((op, what))

    def route_replace(self, dst: str, gateway: str | None, oif: int | None, proto: int = RTPROT_STATIC) -> None:
        self.write("route", dst)
        self.routes = [r for r in self.routes if not (r.dst == dst and r.proto != RTPROT_KERNEL)]
        self.routes.append(nl.RouteInfo(dst, gateway, oif, proto,
                                        RT_SCOPE_LINK if not gateway else 0, None, 0, None))

    def neigh_replace(self, idx: int, ip: str, mac: str) -> None:
        self.write("neigh", f"{self.name_of(idx)}:{ip}")
        self.neigh[(idx, ip)] = (mac, NUD_PERMANENT)

    def fdb_append(self, idx: int, mac: str, dst: str) -> None:
        self.write("fdb", f"{self.name_of(idx)}:{mac}:{dst}")
        self.fdb.add((idx, mac, dst))


def machine() -> FakeKernel:
    """A host: lo, and eth0 with 10.56.0.1/24 (its connected route)."""
    k = FakeKernel()
    k.add_link("lo", mac="00:00:00:00:00:00")
    k.add_link("eth0", mac="52:54:00:00:00:01")
    k.add_addr("eth0", "10.56.0.1/24")
    return k


def install(monkeypatch: Any, kernel: FakeKernel, proc_dir: Path, ip_forward: str = "0") -> list[str]:
    """Route what bypasses the Env to the fake: netlink.link_info/route_get, the sysctl
    files and bridge netfilter's (under `proc_dir`, never the machine's /proc/sys) and gratuitous ARP (recorded,
    never sent). Returns the list the announced host names are appended to."""
    proc = proc_dir / "ip_forward"
    proc.write_text(f"{ip_forward}\n")
    monkeypatch.setattr(Sysctl, "path", property(lambda self: proc))
    bridge_nf = proc_dir / "sys"  # br_netfilter "loaded", its sysctls at the default 1
    (bridge_nf / "net" / "bridge").mkdir(parents=True, exist_ok=True)
    for name in BridgeNetfilterOff.NAMES:
        (bridge_nf / name.replace(".", "/")).write_text("1\n")
    monkeypatch.setattr(BridgeNetfilterOff, "ROOT", bridge_nf)
    monkeypatch.setattr(nl, "link_info", kernel.link_info)
    monkeypatch.setattr(nl, "route_get", kernel.route_get)
    announced: list[str] = []
    monkeypatch.setattr(garp, "announce", lambda ctx, ipr: announced.append(ctx.host) or [])
    return announced


def bridge_info(kw: dict[str, Any]) -> dict[str, Any]:
    """pyroute2's bridge attributes (br_nf_call_iptables=0) as a link dump shows them."""
    return {f"IFLA_BR_{a[3:].upper()}": v for a, v in kw.items() if a.startswith("br_")}


class FakeIpr:
    """The calls crossnet.plan's link/address/route/neighbour/FDB resources make."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.k = kernel

    def link(self, op: str, index: int | None = None, ifname: str | None = None, kind: str | None = None,
             address: str | None = None, mtu: int | None = None, state: str | None = None,
             master: int | None = None, **kw: Any) -> None:
        k = self.k
        if op == "add":
            k.write("link-add", ifname)
            if ifname in k.links:
                raise NetlinkError(errno.EEXIST, "exists")
            info = {f"IFLA_VXLAN_{a[6:].upper()}": v for a, v in kw.items() if a.startswith("vxlan_")}
            info.update(bridge_info(kw))
            k.add_link(ifname, kind, mac=address, up=False, info=info)
            return
        name = k.name_of(index)
        if op == "del":
            k.write("link-del", name)
            del k.links[name]
            k.addrs.pop(index, None)
            k.routes = [r for r in k.routes if r.oif != index]
            return
        assert op == "set", op
        k.write("link-set", name)
        li = k.links[name]
        k.links[name] = replace(li, mtu=mtu if mtu is not None else li.mtu, mac=address or li.mac,
                                up=True if state == "up" else li.up, master=master if master is not None else li.master,
                                info_data={**li.info_data, **bridge_info(kw)})

    def addr(self, op: str, index: int, address: str, prefixlen: int, **kw: Any) -> None:
        cidr = f"{address}/{prefixlen}"
        self.k.write(f"addr-{op}", f"{self.k.name_of(index)}:{cidr}")
        have = self.k.addrs.setdefault(index, [])
        if op == "add":
            have.append(cidr)
        elif cidr in have:
            have.remove(cidr)
        else:
            raise NetlinkError(errno.EADDRNOTAVAIL, "no such address")

    def route(self, op: str, dst: str, dst_len: int, gateway: str | None = None, oif: int | None = None,
              **kw: Any) -> None:
        cidr = f"{dst}/{dst_len}"
        if op == "replace":
            self.k.route_replace(cidr, gateway, oif, kw.get("proto", RTPROT_STATIC))  # pyroute2's default: static
            return
        self.k.write("route-del", cidr)
        # like the kernel: one route, the first in metric order that matches; a device or a
        # metric or protocol named must match, one not named matches any
        match = sorted((r for r in self.k.routes if r.dst == cidr and r.gateway == gateway and r.proto != RTPROT_KERNEL
                        and (oif is None or r.oif == oif) and (not kw.get("priority") or r.metric == kw["priority"])
                        and (not kw.get("proto") or r.proto == kw["proto"])),
                       key=lambda r: r.metric or 0)
        if not match:
            raise NetlinkError(errno.ESRCH, "no such route")
        self.k.routes.remove(match[0])

    def neigh(self, op: str, dst: str, lladdr: str, ifindex: int, **kw: Any) -> None:
        if op == "replace":
            self.k.neigh_replace(ifindex, dst, lladdr)
            return
        self.k.write("neigh-del", f"{self.k.name_of(ifindex)}:{dst}")
        self.k.neigh.pop((ifindex, dst), None)

    def fdb(self, op: str, ifindex: int, lladdr: str, dst: str, **kw: Any) -> None:
        if op == "append":
            self.k.fdb_append(ifindex, lladdr, dst)
            return
        self.k.write("fdb-del", f"{self.k.name_of(ifindex)}:{lladdr}:{dst}")
        self.k.fdb.discard((ifindex, lladdr, dst))


class FakeBatch(Batch):
    """nlbatch.Batch whose commit writes the queued objects into the fake kernel, in
    order, and reports refused ones the way Batch.commit does ([(tag, errno)])."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__()
        self.k = kernel
        self.commits: list[int] = []  # size of every burst sent

    def commit(self, ignore: tuple[int, ...] = (errno.EEXIST,)) -> list[tuple[Any, int]]:
        failures = []
        if self.messages:
            self.commits.append(len(self.messages))
        for _mtype, _flags, body, tag in self.messages:
            try:
                if isinstance(tag, Route):
                    proto = body[5]  # struct rtmsg: family dst_len src_len tos table protocol ...
                    self.k.route_replace(tag.dst, tag.gateway, self.k.index(tag.dev) if tag.dev else None, proto)
                elif isinstance(tag, Neigh):
                    self.k.neigh_replace(self.k.index(tag.dev), tag.ip, tag.mac)
                elif isinstance(tag, Fdb):
                    self.k.fdb_append(self.k.index(tag.dev), tag.mac, tag.dst)
                else:
                    raise TypeError(f"not a batchable resource: {tag!r}")
            except NetlinkError as exc:
                if exc.code not in ignore:
                    failures.append((tag, exc.code))
        self.messages.clear()
        return failures


class FakeEnv(Env):
    """A real plan.Env over the fake kernel (its snapshot cache included)."""

    def __init__(self, kernel: FakeKernel, batch: bool = False) -> None:
        super().__init__(FakeIpr(kernel), batch=False)
        self.kernel = kernel
        self.batch = FakeBatch(kernel) if batch else None

    def _dump(self, value: Any) -> Any:
        self.kernel.dumps += 1
        return value

    def links(self) -> dict[str, nl.LinkInfo]:
        return self._get("links", lambda: self._dump(dict(self.kernel.links)))

    def addresses(self, index: int | None) -> list[str]:
        return self._get("addresses", lambda: self._dump({i: list(a) for i, a in self.kernel.addrs.items()})
                         ).get(index, [])

    def routes(self) -> list[nl.RouteInfo]:
        return self._get("routes", lambda: self._dump(list(self.kernel.routes)))

    def neighbour(self, index: int, ip: str) -> tuple[str | None, int] | None:
        return self._get("neighbours", lambda: self._dump(dict(self.kernel.neigh))).get((index, ip))

    def fdb(self) -> set[tuple[int, str, str | None]]:
        return self._get("fdb", lambda: self._dump(set(self.kernel.fdb)))
