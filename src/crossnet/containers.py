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
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from crossnet import netlink as nl
from crossnet import nlraw
from crossnet.backends.base import Backend, HostContext
from crossnet.errors import CrossnetError, IpamError
from crossnet.ipam import AddressPool
from crossnet.plan import Env
from crossnet.state import StateDir


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


def host_ifname(container_id: str) -> str:
    return "cnv" + hashlib.sha1(container_id.encode()).hexdigest()[:10]


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
) -> Attachment:
    """Attach (idempotent). ``mac``: MAC for a new container interface (default
    :func:`container_mac`); ``meta``: extra IPAM metadata recorded with the address.

    A new container takes the fast path (crossnet.nlraw): one netlink request creates the
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
    an existing interface) it is :class:`InUse`."""
    netns = nl.netns_path(netns)
    pool = pool_for(state, ctx)
    existing = pool.get(container_id)
    try:
        req = ipaddress.IPv4Address(requested) if requested else None
    except ValueError:
        raise IpamError(f"--ip: {requested!r} is not an IPv4 address") from None
    host_if = host_ifname(container_id)
    base_meta = {"netns": netns, "ifname": ifname, "host_if": host_if, **(meta or {})}
    # a new address decides the MACs: recorded with it in one IPAM write
    alloc = pool.allocate(container_id, req, meta=base_meta,
                          meta_for=lambda address: {"mac": mac or container_mac(address)})
    created_veth = False
    host_mac: str | None = None
    try:
        for _ in range(2):  # a second round only after removing half of a pair
            with nlraw.Rtnl() as host, nlraw.Rtnl(netns) as inside:
                inner = inside.ifindex(ifname)
                # one targeted lookup, not a dump of every link of the host
                # (O(containers) per attach: 150 attached veths made attach 5× slower)
                host_idx = host.ifindex(host_if)
                if host_idx is None and inner is None:  # new: the fast path, raw netlink
                    cmac = mac or container_mac(alloc.address)
                    host_mac = container_mac(alloc.address, host_side=True)
                    bridge = host.ifindex(ctx.bridge)
                    if bridge is None:
                        raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run `crossnet apply` first")
                    ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        host.call([nlraw.veth_create(host_if, ctx.mtu, host_mac, bridge, ifname, cmac, ns_fd)])
                    finally:
                        os.close(ns_fd)
                    created_veth = True
                    idx = inside.ifindex(ifname)
                    if idx is None:
                        raise CrossnetError(f"{ifname} did not appear in {netns}")
                    inside.call([
                        nlraw.link_up(LOOPBACK_IFINDEX, "lo"),
                        nlraw.link_up(idx, ifname),
                        nlraw.addr_add(idx, f"{alloc.address}/{ctx.prefixlen}", ifname),
                        nlraw.default_route(str(ctx.gateway), idx),
                    ])
                    mac_now = cmac
                    changed = True
            if host_idx is not None and inner is None:
                # our host veth exists, but its peer is not `ifname` in this namespace
                _drop_half_pair(container_id, existing, netns, host_if, host_idx)
                continue  # gone: create the pair anew
            break
        if not created_veth and host_idx is None:  # `ifname` exists here, not made for this id
            owner = _owner_of(pool, netns, ifname, inner)
            if owner is None:
                raise CrossnetError(f"container {container_id} already has an interface {ifname!r} not made by crossnet")
            key, other = owner
            if not reuse:
                raise InUse(f"{ifname} in {netns} is already crossnet's attachment of {key!r} "
                            f"({other.address}); detach that one first", owner=key)
            if req is not None and req != other.address:
                raise InUse(f"{netns} is already attached as {key!r} with {other.address}, "
                            f"cannot also take {req}: detach {key!r} first", owner=key)
            if existing is None:
                pool.release(container_id)
                existing = alloc  # released: nothing left to undo below
            recorded = other.meta.get("netns")
            same = recorded if isinstance(recorded, str) and _same_netns(recorded, netns) else netns
            att = attach(state, ctx, backend, key, same, ifname=ifname, reuse=False)
            att.asked_as = container_id
            return att
        if not created_veth:  # existing: check and repair (pyroute2, reads everything back)
            with nl.open_ipr() as ipr, nl.open_ipr(netns) as cipr:
                changed = existing is None
                if nl.ifindex(ipr, ctx.bridge) is None:
                    raise NotReady(f"the container bridge {ctx.bridge!r} does not exist: run `crossnet apply` first")
                env = Env(ipr)
                hinfo = nl.link_info(ipr, index=host_idx)
                if hinfo is None:
                    raise CrossnetError(f"the host end {host_if} of {container_id}'s veth vanished during attach")
                if hinfo.mtu != ctx.mtu or not hinfo.up:
                    ipr.link("set", index=host_idx, mtu=ctx.mtu, state="up")
                    changed = True
                backend.attach_port(ctx, env, host_if)
                changed |= _configure_inside(cipr, ifname, f"{alloc.address}/{ctx.prefixlen}", str(ctx.gateway), ctx.mtu)
                mac_now = nl.link_info(cipr, ifname).mac
                host_mac = hinfo.mac
    except Exception as exc:
        if created_veth:
            with nl.open_ipr() as ipr:
                idx = nl.ifindex(ipr, host_if)
                if idx is not None:
                    ipr.link("del", index=idx)
        if existing is None:
            pool.release(container_id)
        if isinstance(exc, nlraw.RtnlError):
            raise CrossnetError(f"attaching {container_id}: {exc.strerror}") from None
        raise
    if alloc.meta.get("mac") != mac_now or any(alloc.meta.get(k) != v for k, v in base_meta.items()):
        pool.update_meta(container_id, {**base_meta, "mac": mac_now})
    return Attachment(
        container_id, netns, str(alloc.address), ctx.prefixlen, str(ctx.gateway), ifname, host_if, ctx.mtu, mac_now,
        changed, host_mac,
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
    host_if = alloc.meta.get("host_if") or host_ifname(alloc.key)
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
        if (alloc.meta.get("host_if") or host_ifname(key)) == name and alloc.meta.get("ifname", "eth0") == ifname:
            return key, alloc
    return None


def _configure_inside(cipr, ifname: str, cidr: str, gateway: str, mtu: int) -> bool:
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
    default = [r for r in nl.routes(cipr) if r.dst == "0.0.0.0/0"]
    if not any(r.gateway == gateway and r.oif == idx for r in default):
        cipr.route("replace", dst="0.0.0.0", dst_len=0, gateway=gateway, oif=idx, table=nl.RT_TABLE_MAIN)
        changed = True
    return changed


def detach(state: StateDir, ctx: HostContext, backend: Backend, container_id: str) -> dict | None:
    """Remove the container's veth and release its address. Idempotent: returns None
    if the container was not attached."""
    pool = pool_for(state, ctx)
    alloc = pool.get(container_id)
    host_if = (alloc.meta.get("host_if") if alloc else None) or host_ifname(container_id)
    removed = False
    with nl.open_ipr() as ipr:
        env = Env(ipr)
        backend.detach_port(ctx, env, host_if)
        idx = nl.ifindex(ipr, host_if)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
                removed = True
            except NetlinkError as exc:
                if exc.code != 19:
                    raise
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


def list_containers(state: StateDir) -> list[dict[str, Any]]:
    if not os.path.exists(state.ipam_path):
        return []
    from crossnet.host import load_context

    ctx, _ = load_context(state)
    out = []
    for key, alloc in sorted(pool_for(state, ctx).entries().items()):
        out.append(
            {
                "id": key,
                "netns": alloc.meta.get("netns"),
                "address": str(alloc.address),
                "ifname": alloc.meta.get("ifname", "eth0"),
                "host_if": alloc.meta.get("host_if"),
                "mac": alloc.meta.get("mac"),
                "name": alloc.meta.get("name"),  # runtime's container name (crossnet-cni: K8S_POD_NAME)
            }
        )
    return out
