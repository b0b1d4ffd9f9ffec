"""Attach / detach a container's network namespace to this host's crossnet network.

attach: allocate an address (crossnet.ipam, persistent, locked), create a veth pair
with one end directly inside the container namespace, put the host end where the
backend wants it (Linux bridge, OVS bridge…), configure address, MTU and default
route inside the container. Idempotent; on failure everything it created is undone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from crossnet import datapath
from crossnet.backends.base import Backend, HostContext
from crossnet.dns import resolv as dns_resolv
from crossnet.errors import ConfigError, CrossnetError, IpamError
from crossnet.ipam import AddressPool
from crossnet.netlink import iproute as nl
from crossnet.netlink import raw as nlraw
from crossnet.plan.env import Env
from crossnet.state import StateDir, crash_point

LOOPBACK_IFINDEX = 1  # lo is ifindex 1 in every network namespace


class NotReady(CrossnetError):
    """A transient condition: the container bridge does not exist (yet): `crossnet apply`
    has not run, or is running right now. Trying again later may succeed."""


class InUse(CrossnetError):
    """The container id is attached to another live network namespace, or the interface
    name in this namespace is crossnet's attachment of another container id."""

    def __init__(self, msg: str, owner: str | None = None):
        super().__init__(msg)
        self.owner = owner  # the IPAM key that holds the interface, when known


class HostNamespace(ConfigError):
    """The target is the network namespace crossnet itself runs in (or the initial one,
    PID 1's): attaching it would replace this host's default route (and detaching it
    would then remove it). Refused before anything is changed."""


def netns_ident(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace file: the namespace's identity, whatever path
    names it (/run/netns/NAME, /proc/PID/ns/net, a bind mount); None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def own_namespaces() -> dict[tuple[int, int], str]:
    """identity -> description of the namespaces an attach must never target: the one
    this process (and this thread) runs in, and the initial one (PID 1's, in this PID
    namespace) when it differs."""
    out: dict[tuple[int, int], str] = {}
    for path, what in (("/proc/thread-self/ns/net", "this host's own network namespace (the one crossnet runs in)"),
                       ("/proc/self/ns/net", "this host's own network namespace (the one crossnet runs in)"),
                       ("/proc/1/ns/net", "the initial network namespace (PID 1's)")):
        ident = netns_ident(path)
        if ident is not None:
            out.setdefault(ident, what)
    return out


def refuse_host_netns(ident: tuple[int, int] | None, field: str) -> None:
    """Raise :class:`HostNamespace` (one line naming ``field``) when ``ident`` is one of
    :func:`own_namespaces`."""
    if ident is None:
        return
    what = own_namespaces().get(ident)
    if what is not None:
        raise HostNamespace(f"{field} is {what}: crossnet attaches containers, never the host itself "
                            "(it would replace this host's default route)")


def check_target(path: str, field: str) -> tuple[int, int] | None:
    """The identity of the namespace at ``path`` (a netns name or path); refused with
    :class:`HostNamespace` when it is the host's own. None when it does not exist."""
    ident = netns_ident(path if "/" in path else f"/run/netns/{path}")
    refuse_host_netns(ident, field)
    return ident


def host_ifname(container_id: str, net_name: str = "") -> str:
    """The host end of an attachment's veth: ``cnv`` + a hash of the id, and of the
    network's name for a named network (docs/networks.md): one container attached to two
    networks gets two veths, never the other network's."""
    key = f"{net_name}\0{container_id}" if net_name else container_id
    return "cnv" + hashlib.sha1(key.encode()).hexdigest()[:10]


def recorded_host_if(key: str, alloc: Any) -> str:
    """The host end of the attachment recorded under ``key``: the name in its IPAM entry,
    else (an entry from before names were recorded) the default network's name for it."""
    return alloc.meta.get("host_if") or host_ifname(key)


def temp_ifname(container_id: str) -> str:
    return "cnt" + hashlib.sha1(container_id.encode()).hexdigest()[:10]


def pool_for(state: StateDir, ctx: HostContext) -> AddressPool:
    reserved = {ctx.gateway}
    if ctx.backend == "bridge":
        reserved.add(ctx.address)
        reserved |= {p.address for p in ctx.peers}
        network = ipaddress.ip_network(f"{ctx.gateway}/{ctx.prefixlen}", strict=False)
        return AddressPool(state.ipam_path, network, reserved=reserved, usable=ctx.subnet)
    return AddressPool(state.ipam_path, ctx.subnet, reserved=reserved)


@dataclass
class Attachment:
    id: str
    netns: str
    address: str
    prefixlen: int
    gateway: str
    ifname: str
    host_if: str
    mtu: int
    mac: str | None = None
    changed: bool = True
    host_mac: str | None = None  # the host-side veth's MAC (CNI result)
    asked_as: str | None = None  # the id attach was called with, when the namespace was already attached as `id`
    allocation: Any = None  # the IPAM allocation (AddressPool.undo takes back a new one when a caller fails later)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "netns": self.netns,
            "address": self.address,
            "cidr": f"{self.address}/{self.prefixlen}",
            "gateway": self.gateway,
            "ifname": self.ifname,
            "host_if": self.host_if,
            "mtu": self.mtu,
            "mac": self.mac,
            "changed": self.changed,
            **({"asked_as": self.asked_as} if self.asked_as is not None else {}),
        }


def container_mac(address: ipaddress.IPv4Address | str, host_side: bool = False) -> str:
    """Stable, locally administered unicast MAC derived from the container's address
    (like Kubernetes' 0a:58:<ip> convention): a reused address comes back with the
    same MAC, so peers' ARP caches never point at a vanished container, and attach
    knows both MACs without asking the kernel. Host side: 0a:59:<ip>."""
    b = ipaddress.IPv4Address(str(address)).packed
    return ("0a:59:" if host_side else "0a:58:") + ":".join(f"{x:02x}" for x in b)


def attach(
    state: StateDir,
    ctx: HostContext,
    backend: Backend,
    container_id: str,
    netns: str,
    requested: str | None = None,
    ifname: str = "eth0",
    mac: str | None = None,
    meta: dict[str, Any] | None = None,
    reuse: bool = True,
    foreign: Callable[[Any], str | None] | None = None,
) -> Attachment:
    """Attach (idempotent). ``mac``: MAC for a new container interface (default
    :func:`container_mac`); ``meta``: extra IPAM metadata recorded with the address.

    A new container takes the fast path (crossnet.netlink.raw): one netlink request creates the
    veth pair with both MACs, the MTU, the host end up and on the container bridge and
    the container end inside the namespace; one burst then sets lo and the container
    end up and adds the address and the default route (5 round trips and one IPAM write in all). An existing one is checked and repaired
    (the slow path: everything is read back from the kernel).

    Refused with :class:`InUse`, changing nothing: ``container_id`` is attached to another
    network namespace that is still alive (its veth's peer lives there). When ``ifname``
    in ``netns`` is crossnet's attachment of another id (the same namespace attached
    before under another name, e.g. once by path and once by netns name): with ``reuse``
    (``crossnet attach``) that attachment is checked and returned (``asked_as`` =
    ``container_id``), without ``reuse`` (the CNI plugin, whose spec requires an error for
    an existing interface) it is :class:`InUse`. ``foreign(entry)``: why an existing IPAM
    entry of ``container_id`` is not the caller's to re-attach (another CNI network's),
    or None; when it says why: :class:`InUse`, nothing changed (checked after the
    allocation, so a concurrent first attach of the same id by another caller is seen)."""
    netns = nl.netns_path(netns)
    # the namespace is opened once: the identity checked is the one used (a /proc/PID path
    # whose process exits cannot turn into another namespace halfway through)
    try:
        ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CrossnetError(f"network namespace {netns}: {exc.strerror}") from None
    try:
        st = os.fstat(ns_fd)
        ident = (st.st_dev, st.st_ino)
        refuse_host_netns(ident, f"netns {netns}")
        return _attach(state, ctx, backend, container_id, netns, ns_fd, ident, requested, ifname, mac, meta, reuse,
                       foreign)
    finally:
        os.close(ns_fd)


def _attach(state: StateDir, ctx: HostContext, backend: Backend, container_id: str, netns: str, ns_fd: int,
            ident: tuple[int, int], requested: str | None, ifname: str, mac: str | None,
            meta: dict[str, Any] | None, reuse: bool,
            foreign: Callable[[Any], str | None] | None = None) -> Attachment:
    ops = f"/proc/self/fd/{ns_fd}"  # `netns` as opened above, for every kernel operation inside it
    pool = pool_for(state, ctx)
    existing = pool.get(container_id)
    try:
        req = ipaddress.IPv4Address(requested) if requested else None
    except ValueError:
        raise IpamError(f"--ip: {requested!r} is not an IPv4 address") from None
    # an existing attachment keeps the veth it was made with (recorded)
    recorded_if = existing.meta.get("host_if") if existing is not None else None
    host_if = recorded_if if isinstance(recorded_if, str) and recorded_if.startswith("cnv") else \
        host_ifname(container_id, getattr(ctx, "net_name", ""))
    routed = datapath.routed(ctx)
    prefixlen, gateway = (32, datapath.GATEWAY) if routed else (ctx.prefixlen, str(ctx.gateway))
    base_meta = {"netns": netns, "netns_id": list(ident), "ifname": ifname, "host_if": host_if, **(meta or {})}
    # a new address decides the MACs: recorded with it in one IPAM write
    alloc = pool.allocate(container_id, req, meta=base_meta,
                          meta_for=lambda address: {"mac": mac or container_mac(address)})
    crash_point()  # test hook (CROSSNET_TEST_CRASH_AT): the IPAM entry, no link yet
    why = foreign(alloc) if foreign is not None and not alloc.created else None
    if why:  # before any kernel change: the entry (and its meta) stays the other owner's
        raise InUse(f"{container_id!r} ({ifname}) is already {why} with {alloc.address}; "
                    "detach it there first", owner=container_id)
    created_veth = False
    host_mac: str | None = None
    try:
        for _ in range(2):  # a second round only after removing half of a pair
            with nlraw.Rtnl() as host, nlraw.Rtnl(ops) as inside:
                inner = inside.ifindex(ifname)
                # one targeted lookup, not a dump of every link of the host
                # (O(containers) per attach: 150 attached veths made attach 5× slower)
                host_idx = host.ifindex(host_if)
                if host_idx is None and inner is None:  # new: the fast path, raw netlink
                    cmac = mac or container_mac(alloc.address)
                    host_mac = container_mac(alloc.address, host_side=True)
                    bridge = None if routed else host.ifindex(ctx.bridge)
                    if bridge is None and not routed:
                        raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run `crossnet apply` first")
                    master = None if routed else bridge  # routed: no master, a /32 route instead
                    host.call([nlraw.veth_create(host_if, ctx.mtu, host_mac, master, ifname, cmac, ns_fd)])
                    created_veth = True
                    crash_point()
                    idx = inside.ifindex(ifname)
                    if idx is None:
                        raise CrossnetError(f"{ifname} did not appear in {netns}")
                    inside.call([
                        nlraw.link_up(LOOPBACK_IFINDEX, "lo"),
                        nlraw.link_up(idx, ifname),
                        nlraw.addr_add(idx, f"{alloc.address}/{prefixlen}", ifname),
                        *([nlraw.neigh_permanent(idx, gateway, host_mac)] if routed else []),
                        nlraw.default_route(gateway, idx, onlink=routed),
                    ])
                    crash_point()
                    if routed:
                        hidx = host.ifindex(host_if)
                        if hidx is None:
                            raise CrossnetError(f"the host end {host_if} of {container_id}'s veth vanished during attach")
                        host.call([nlraw.host_route(f"{alloc.address}/32", hidx)])
                        crash_point()
                        datapath.container_attached(ctx, host_if, new=(host, hidx, alloc.address))
                        crash_point()
                    mac_now = cmac
                    changed = True
            if host_idx is not None and inner is None:
                # our host veth exists, but its peer is not `ifname` in this namespace
                _drop_half_pair(container_id, existing, ops, host_if, host_idx)
                continue  # gone: create the pair anew
            break
        if not created_veth and host_idx is None:  # `ifname` exists here, not made for this id
            owner = _owner_of(pool, ops, ifname, inner)
            if owner is None:
                raise CrossnetError(f"container {container_id} already has an interface {ifname!r} not made by crossnet "
                                    "for this network (another network's, or not crossnet's): use another interface name")
            key, other = owner
            if not reuse:
                raise InUse(f"{ifname} in {netns} is already crossnet's attachment of {key!r} "
                            f"({other.address}); detach that one first", owner=key)
            if req is not None and req != other.address:
                raise InUse(f"{netns} is already attached as {key!r} with {other.address}, "
                            f"cannot also take {req}: detach {key!r} first", owner=key)
            if existing is None:
                pool.undo(alloc)
                existing = alloc  # released: nothing left to undo below
            recorded = other.meta.get("netns")
            same = recorded if isinstance(recorded, str) and _same_netns(recorded, netns) else netns
            att = attach(state, ctx, backend, key, same, ifname=ifname, reuse=False)
            att.asked_as = container_id
            return att
        if not created_veth:  # existing: check and repair (pyroute2, reads everything back)
            with nl.open_ipr() as ipr, nl.open_ipr(ops) as cipr:
                changed = existing is None
                if not routed and nl.ifindex(ipr, ctx.bridge) is None:
                    raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run `crossnet apply` first")
                env = Env(ipr)
                hinfo = nl.link_info(ipr, index=host_idx)
                if hinfo is None:
                    raise CrossnetError(f"the host end {host_if} of {container_id}'s veth vanished during attach")
                if hinfo.mtu != ctx.mtu or not hinfo.up:
                    ipr.link("set", index=host_idx, mtu=ctx.mtu, state="up")
                    changed = True
                if routed:
                    changed |= datapath.repair_port(ctx, ipr, host_idx, f"{alloc.address}/32")
                else:
                    backend.attach_port(ctx, env, host_if)
                gw_mac = hinfo.mac if routed else None
                changed |= _configure_inside(cipr, ifname, f"{alloc.address}/{prefixlen}", gateway, ctx.mtu, gw_mac)
                mac_now = nl.link_info(cipr, ifname).mac
                host_mac = hinfo.mac
    except Exception as exc:
        if created_veth:
            with nl.open_ipr() as ipr:
                idx = nl.ifindex(ipr, host_if)
                if idx is not None:
                    ipr.link("del", index=idx)
        if existing is None:
            pool.undo(alloc)  # the entry and the next-address pointer as they were
        if isinstance(exc, nlraw.RtnlError):
            raise CrossnetError(f"attaching {container_id}: {exc.strerror}") from None
        raise
    if alloc.meta.get("mac") != mac_now or any(alloc.meta.get(k) != v for k, v in base_meta.items()):
        pool.update_meta(container_id, {**base_meta, "mac": mac_now})
        crash_point()
    return Attachment(
        container_id, netns, str(alloc.address), prefixlen, gateway, ifname, host_if, ctx.mtu, mac_now,
        changed, host_mac, allocation=alloc,
    )


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_netns(a: str, b: str) -> bool:
    """Two paths name the same network namespace (a netns name, /proc/PID/ns/net, a bind mount…)."""
    ida = _netns_id(a)
    return ida is not None and ida == _netns_id(b)


def _peer(msg: Any) -> tuple[int | None, int | None]:
    """(IFLA_LINK, IFLA_LINK_NETNSID) of a link: a veth's peer index, and the id of the
    namespace it is in (None: the same namespace)."""
    return msg.get_attr("IFLA_LINK"), msg.get_attr("IFLA_LINK_NETNSID")


def _holds_peer(netns: str, peer_idx: int, host_idx: int) -> bool:
    """`netns` exists and its link `peer_idx` is the veth peer of host link `host_idx`."""
    try:
        with nl.open_ipr(netns) as cipr:
            msg = cipr.link("get", index=peer_idx)[0]
    except (CrossnetError, NetlinkError, OSError):
        return False
    return _peer(msg)[0] == host_idx


def _drop_half_pair(container_id: str, existing: Any, netns: str, host_if: str, host_idx: int) -> None:
    """The host end of `container_id`'s veth exists but its peer is not the interface asked
    for in `netns`. If the peer is in the live namespace the attachment was recorded with
    (IPAM), another container uses this id: :class:`InUse`, nothing touched. Otherwise (the
    peer was renamed inside `netns`, moved to the host, or its namespace is going away:
    deleting a namespace takes its veths down asynchronously) the pair is deleted, to be
    created anew."""
    with nl.open_ipr() as ipr:
        try:
            hmsg = ipr.link("get", index=host_idx)[0]
        except NetlinkError:
            return  # gone meanwhile
        peer_idx, peer_nsid = _peer(hmsg)
        recorded = existing.meta.get("netns") if existing is not None else None
        if (peer_nsid is not None and peer_idx and isinstance(recorded, str)
                and not _holds_peer(netns, peer_idx, host_idx) and _holds_peer(recorded, peer_idx, host_idx)):
            raise InUse(f"container id {container_id!r} is already attached to network namespace {recorded} "
                        f"({host_if}); detach it there first (crossnet detach, CNI DEL)", owner=container_id)
        try:
            ipr.link("del", index=host_idx)  # half of a pair: start over
        except NetlinkError as exc:
            if exc.code != 19:  # ENODEV: gone already
                raise


def attached_elsewhere(alloc: Any, netns: str) -> str | None:
    """The namespace path an attachment (IPAM entry) lives in, when that is a live
    namespace other than `netns` and its veth's peer is really there; else None. (CNI DEL
    for a container id whose second ADD into `netns` was refused must not remove the
    first container's attachment.)"""
    recorded = alloc.meta.get("netns") if alloc is not None else None
    path = netns if "/" in netns else f"/run/netns/{netns}"
    if not isinstance(recorded, str) or _netns_id(path) is None or _netns_id(recorded) is None \
            or _same_netns(recorded, path):
        return None
    host_if = recorded_host_if(alloc.key, alloc)
    with nl.open_ipr() as ipr:
        try:
            hmsg = ipr.link("get", index=nl.require_index(ipr, host_if))[0]
        except (CrossnetError, NetlinkError):
            return None
    peer_idx, peer_nsid = _peer(hmsg)
    if peer_nsid is None or not peer_idx or not _holds_peer(recorded, peer_idx, hmsg["index"]):
        return None
    return recorded


def _owner_of(pool: AddressPool, netns: str, ifname: str, inner: int | None) -> tuple[str, Any] | None:
    """The IPAM key whose crossnet veth is `ifname` (index `inner`) in `netns`: the peer of
    the container end is a host veth recorded as some attachment's host_if."""
    if inner is None:
        return None
    with nl.open_ipr(netns) as cipr:
        try:
            peer_idx, peer_nsid = _peer(cipr.link("get", index=inner)[0])
        except NetlinkError:
            return None
    if not peer_idx or peer_nsid is None:
        return None
    with nl.open_ipr() as ipr:
        try:
            hmsg = ipr.link("get", index=peer_idx)[0]
        except NetlinkError:
            return None
    if _peer(hmsg)[0] != inner:
        return None
    name = hmsg.get_attr("IFLA_IFNAME")
    for key, alloc in pool.entries().items():
        if recorded_host_if(key, alloc) == name and alloc.meta.get("ifname", "eth0") == ifname:
            return key, alloc
    return None


def _configure_inside(cipr, ifname: str, cidr: str, gateway: str, mtu: int, gw_mac: str | None = None) -> bool:
    """The container side as attach makes it. ``gw_mac``: routed (docs/datapath.md): the
    gateway is a permanent neighbour with this MAC and the default route is onlink."""
    changed = False
    lo = nl.ifindex(cipr, "lo")
    if lo is not None and not nl.link_info(cipr, index=lo).up:
        cipr.link("set", index=lo, state="up")
    idx = nl.require_index(cipr, ifname)
    info = nl.link_info(cipr, index=idx)
    if info.mtu != mtu or not info.up:
        cipr.link("set", index=idx, mtu=mtu, state="up")
        changed = True
    have = nl.addresses(cipr, idx)
    for other in have:
        if other != cidr:
            iface = ipaddress.ip_interface(other)
            cipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            changed = True
    if cidr not in have:
        iface = ipaddress.ip_interface(cidr)
        cipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        changed = True
    if gw_mac is not None:
        cipr.neigh("replace", ifindex=idx, dst=gateway, lladdr=gw_mac, state=nl.NUD_PERMANENT)
    default = [r for r in nl.routes(cipr) if r.dst == "0.0.0.0/0"]
    if not any(r.gateway == gateway and r.oif == idx for r in default):
        extra = {"flags": nl.RTNH_F_ONLINK} if gw_mac is not None else {}
        cipr.route("replace", dst="0.0.0.0", dst_len=0, gateway=gateway, oif=idx, table=nl.RT_TABLE_MAIN, **extra)
        changed = True
    return changed


def recorded_ident(alloc: Any) -> tuple[int, int] | None:
    """The identity of the namespace an IPAM entry was attached to: recorded at attach
    (``netns_id``), or for older entries that of its recorded path now."""
    rec = alloc.meta.get("netns_id")
    if isinstance(rec, list) and len(rec) == 2 and all(isinstance(x, int) for x in rec):
        return rec[0], rec[1]
    path = alloc.meta.get("netns")
    return netns_ident(path) if isinstance(path, str) and path else None


def _path_gone(alloc: Any) -> str | None:
    path = alloc.meta.get("netns")
    if not isinstance(path, str) or not path:
        return None
    now = netns_ident(path)
    if now is None:
        return f"network namespace {path} is gone"
    rec = alloc.meta.get("netns_id")
    if isinstance(rec, list) and len(rec) == 2 and tuple(rec) != now:
        return f"{path} is now another network namespace"
    return None


def _host_links() -> set[str]:
    with nl.open_ipr() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def stale_reason(alloc: Any, host_links: set[str] | None = None) -> str | None:
    """Why an attachment's namespace is gone, or None while it is there (or unknown).
    Gone: its recorded path no longer exists or names another namespace than the one
    attached, and the host side of its veth is gone too (the kernel deletes a veth pair
    with the namespace of either end; a namespace still alive under another path, or a
    /proc/PID path written in another PID namespace, keeps it). ``host_links``: the names
    of this namespace's links (read when needed and not given)."""
    why = _path_gone(alloc)
    if why is None:
        return None
    host_if = recorded_host_if(alloc.key, alloc)
    if host_if in (host_links if host_links is not None else _host_links()):
        return None
    return why


def find_attachments(state: StateDir, ctx: HostContext, netns: str) -> list[str]:
    """The IPAM keys attached to the namespace at ``netns`` (a name or path), matched by
    the namespace's identity, not by how it was spelled (`pid:N`, /proc/N/ns/net, a
    netns name, a bind mount of it)."""
    ident = netns_ident(netns if "/" in netns else f"/run/netns/{netns}")
    if ident is None or not os.path.exists(state.ipam_path):
        return []
    same = {key: alloc for key, alloc in pool_for(state, ctx).entries().items() if recorded_ident(alloc) == ident}
    live = sorted(key for key, alloc in same.items() if _path_gone(alloc) is None)
    return live or sorted(same)  # a record whose path went away while the namespace lives on


def resolve_key(state: StateDir, ctx: HostContext, container_id: str, netns: str | None) -> str:
    """The IPAM key to detach for CONTAINER: ``container_id`` when attached under it,
    else the one attachment of the same namespace under another name; ConfigError when
    several ids share that namespace (naming them). Without ``netns`` (the runtime no longer
    knows the container): a ``docker:NAME``/``podman:NAME`` record found by its recorded name."""
    if not os.path.exists(state.ipam_path) or pool_for(state, ctx).get(container_id) is not None:
        return container_id
    if netns is None:
        return _key_by_runtime_name(state, ctx, container_id)
    keys = find_attachments(state, ctx, netns)
    if len(keys) > 1:
        raise ConfigError(f"CONTAINER: {container_id!r}: its network namespace is attached under several ids "
                          f"({', '.join(keys)}); detach them by id")
    return keys[0] if keys else container_id


def _key_by_runtime_name(state: StateDir, ctx: HostContext, spec: str) -> str:
    """`detach docker:NAME` / `podman:NAME` once the runtime no longer knows NAME (docker rm):
    the attachment `attach` recorded under the container's id with that name, else ``spec``.
    Only attach's records (keyed by a container id), never a Docker driver endpoint."""
    runtime, sep, name = spec.partition(":")
    if not sep or runtime not in ("docker", "podman") or not name:
        return spec
    keys = sorted(k for k, a in pool_for(state, ctx).entries().items()
                  if a.meta.get("name") == name and re.fullmatch(r"[0-9a-f]{12,64}", k))
    if len(keys) > 1:
        raise ConfigError(f"CONTAINER: {spec!r}: several attachments are named {name!r} "
                          f"({', '.join(keys)}); detach them by id")
    return keys[0] if keys else spec


def _remove_host_veth(ctx: HostContext, backend: Backend, host_if: str) -> bool:
    with nl.open_ipr() as ipr:
        env = Env(ipr)
        backend.detach_port(ctx, env, host_if)
        if datapath.routed(ctx):
            datapath.container_detached(ctx, host_if)
        idx = nl.ifindex(ipr, host_if)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != 19:
                raise
            return False
        return True


def gc(state: StateDir, ctx: HostContext, backend: Backend, dry_run: bool = False) -> list[dict[str, Any]]:
    """Collect the attachments whose namespace is gone (:func:`stale_reason`): remove the
    host-side veth if it is still there, release the address (the IPAM entry is the
    record). Each entry is re-checked under the IPAM lock, so an attach that re-made it
    meanwhile is never touched. ``dry_run``: only list them."""
    if not os.path.exists(state.ipam_path):
        return []
    pool = pool_for(state, ctx)
    out = []
    entries = pool.entries()
    links = _host_links() if any(_path_gone(a) for a in entries.values()) else set()
    for key, alloc in sorted(entries.items()):
        why = stale_reason(alloc, links)
        if why is None:
            continue
        host_if = recorded_host_if(key, alloc)
        item = {"id": key, "address": str(alloc.address), "netns": alloc.meta.get("netns"), "host_if": host_if,
                "reason": why, "veth_removed": False, "collected": False}
        if not dry_run:
            def remove(current: Any, item: dict = item, host_if: str = host_if) -> bool:
                if stale_reason(current) is None:
                    return False  # came back meanwhile
                item["veth_removed"] = _remove_host_veth(ctx, backend, host_if)
                dns_resolv.remove(current.meta)  # before the entry that records it goes
                return True

            item["collected"] = pool.release_if(key, alloc, before=remove) is not None
            if not item["collected"]:
                continue
        out.append(item)
    return out


def detach(state: StateDir, ctx: HostContext, backend: Backend, container_id: str) -> dict | None:
    """Remove the container's veth and release its address. Idempotent: returns None
    if the container was not attached. Without an IPAM entry for ``container_id`` nothing
    is touched: the entry is written before attach makes the veth and released after
    detach removed it, so a link of the hashed name without one is not crossnet's
    attachment of this id (the Docker plugin names its endpoints' veths the same way)."""
    pool = pool_for(state, ctx)
    alloc = pool.get(container_id)
    if alloc is None:
        return None
    host_if = recorded_host_if(container_id, alloc)
    removed = False
    with nl.open_ipr() as ipr:
        env = Env(ipr)
        backend.detach_port(ctx, env, host_if)
        if datapath.routed(ctx):
            datapath.container_detached(ctx, host_if)
        crash_point()
        idx = nl.ifindex(ipr, host_if)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
                removed = True
            except NetlinkError as exc:
                if exc.code != 19:
                    raise
            crash_point()
    # /etc/netns/NAME/resolv.conf, if attach wrote it: before the entry that records it goes
    dns_resolv.remove(alloc.meta)
    crash_point()
    released = pool.release(container_id)
    if released is None and not removed:
        return None
    return {"id": container_id, "address": str(released.address) if released else None, "host_if": host_if}


def detach_all(state: StateDir, ctx: HostContext, backend: Backend, env: Env) -> list[dict]:
    if not os.path.exists(state.ipam_path):
        return []
    out = []
    for key in list(pool_for(state, ctx).entries()):
        res = detach(state, ctx, backend, key)
        if res:
            out.append(res)
    return out


def name_and_resolver(state: StateDir, ctx: HostContext, att: Attachment, name: str | None) -> None:
    """After `crossnet attach`: record the container's DNS name (``--name``, or the
    runtime's) and give a named netns crossnet's resolver (/etc/netns/NAME/resolv.conf,
    when this host serves DNS and there is none): docs/dns.md. The file is recorded in the
    attachment before it is written, with the directory /etc/netns/NAME when crossnet is
    about to create it (and the record corrected when either turns out to be the admin's):
    killed in between, detach still removes them."""
    update: dict[str, Any] = {"name": name} if name else {}
    pool = pool_for(state, ctx)
    claim = dns_resolv.claim(state, att.netns)
    if claim:
        pool.update_meta(att.id, {**update, **claim})
        update = {}
        crash_point()  # test hook (CROSSNET_TEST_CRASH_AT)
    wrote = dns_resolv.install(state, att.netns)
    crash_point()
    if wrote != claim:  # the admin's file or directory after all (or made meanwhile): record what crossnet made
        update.update({k: (wrote or {}).get(k) for k in {**(claim or {}), **(wrote or {})}})
    if update:
        pool.update_meta(att.id, update)


def list_containers(state: StateDir) -> list[dict[str, Any]]:
    if not os.path.exists(state.ipam_path):
        return []
    ctx = HostContext.applied(state)
    out = []
    entries = pool_for(state, ctx).entries()
    links = _host_links() if entries else set()  # one dump: a stale or incomplete entry has no host veth
    for key, alloc in sorted(entries.items()):
        row = {
            "id": key,
            "netns": alloc.meta.get("netns"),
            "address": str(alloc.address),
            "ifname": alloc.meta.get("ifname", "eth0"),
            "host_if": alloc.meta.get("host_if"),
            "mac": alloc.meta.get("mac"),
            "name": alloc.meta.get("name"),  # runtime's container name (crossnet-cni: K8S_POD_NAME)
            "state": "attached",
        }
        if stale_reason(alloc, links):
            row["state"] = "stale"  # its namespace is gone (crossnet gc)
        elif alloc.meta.get("netns") and recorded_host_if(key, alloc) not in links:
            # made by attach (it records the namespace first; the Docker plugin's entries have
            # none, Docker joins them later) and its namespace alive, but no veth
            row.update(incomplete(key, alloc, getattr(ctx, "net_name", "")))
        out.append(row)
    return out


def incomplete(key: str, alloc: Any, net_name: str = "") -> dict[str, str]:
    """The status fields of an IPAM entry whose namespace is alive but whose veth is not
    on the host: an attach killed after its IPAM write (crossnet.state.crash_point), or one
    still running. ``missing``: what it lacks; ``complete``: the command that finishes it
    (attach again under the same id: the same address; for a CNI attachment the runtime's
    ADD) or removes it (detach by id)."""
    import shlex

    host_if = recorded_host_if(key, alloc)
    net = f" --network {shlex.quote(net_name)}" if net_name else ""
    remove = f"crossnet detach{net} {shlex.quote(key)}"
    cni = alloc.meta.get("cni")
    if isinstance(cni, dict):
        again = f"the runtime's CNI ADD of network {cni.get('network')!r} again"
    else:
        ifname = alloc.meta.get("ifname", "eth0")
        again = f"crossnet attach{net}" + (f" --ifname {shlex.quote(ifname)}" if ifname != "eth0" else "") + \
            f" {shlex.quote(key)}"
    return {"state": "incomplete", "missing": f"the veth {host_if} (an attach interrupted after the address was "
                                              "recorded, or still running)",
            "complete": f"{again} (or {remove} to remove it)"}
