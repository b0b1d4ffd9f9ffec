"""The `datapath:` of a network (docs/datapath.md): ``kernel`` (a container bridge, today's
design) or ``ebpf`` (routed container veths: no bridge, a /32 host route per container, the
containers' default route via the link-local gateway 169.254.1.1 held by a static
neighbour inside the container, tc eBPF programs on top when the host can run them).

Every call into the eBPF programs (crossnet.ebpf) goes through this module:
:func:`host_resources`, :func:`vtep_resources`, :func:`container_attached`,
:func:`container_detached`, :func:`active`. On a host that cannot run them
(crossnet.ebpf.problem) the routed layout stays and the kernel forwards alone: ``status``
says ``datapath: kernel (why)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crossnet.errors import ConfigError

if TYPE_CHECKING:
    from ipaddress import IPv4Address

    from crossnet.backends.base import HostContext
    from crossnet.plan.resources import Resource
    from crossnet.state import StateDir

log = logging.getLogger("crossnet.datapath")

GATEWAY = "169.254.1.1"  # the routed containers' default gateway (link-local, the same on every host)
_why_not: dict[str, str | None] = {}  # ebpf.problem(), asked once per process (one log line)


def routed(ctx: HostContext) -> bool:
    """Containers get routed veths (no bridge): the network's datapath is ebpf. The
    layout does not depend on whether the programs can run (docs/datapath.md)."""
    return getattr(ctx, "datapath", "kernel") == "ebpf"


def ebpf_problem() -> str | None:
    """Why this host cannot run the eBPF programs (None: it can); logged once."""
    if "ebpf" not in _why_not:
        from crossnet import ebpf

        why = ebpf.problem()
        if why is not None:
            log.warning("datapath ebpf: falling back to kernel forwarding: %s", why)
        _why_not["ebpf"] = why
    return _why_not["ebpf"]


def active(ctx: HostContext) -> str:
    """The datapath that runs: "ebpf" only for an ebpf network on a host that can run
    the programs, else "kernel"."""
    return "ebpf" if routed(ctx) and ebpf_problem() is None else "kernel"


def describe(ctx: HostContext) -> dict:
    """What `crossnet status` shows: {"datapath": what runs, "configured": what the
    network asks, "layout": bridge | routed, "why": why ebpf does not run (or None),
    "counters" (ebpf only): the programs' counters, crossnet.ebpf.host.counters}."""
    from crossnet.ebpf import host

    loaded = routed(ctx) and host.loaded(ctx.state_dir)  # a cheap look at the pins, no feature probe
    if loaded:  # apply/agent loaded the programs: they run (no trial load per status)
        run, why = "ebpf", None
    else:
        run = active(ctx)
        why = ebpf_problem() if routed(ctx) and run != "ebpf" else None
    out: dict = {"datapath": run, "configured": getattr(ctx, "datapath", "kernel"),
                 "layout": "routed" if routed(ctx) else "bridge", "why": why}
    if run == "ebpf":  # the programs' counters: redirected (the fast path) vs passed to the stack, per reason
        out["counters"] = host.counters(ctx) if loaded else {}
    return out


def local_resources(ctx: HostContext, devices: list[Resource] | tuple[Resource, ...] = ()) -> list[Resource]:
    """A routed host's own resources in place of the container bridge: this host's
    address in its subnet as a /32 on `lo` (masquerade, DNS, expose keep working; no
    device needed: a dummy link needs a kernel module), the backend's ``devices`` (the
    vxlan device), then the programs (:func:`host_resources`: they attach to those)."""
    from crossnet.plan.resources import Address

    return [Address("lo", f"{ctx.gateway}/32"), *devices, *host_resources(ctx)]


def host_resources(ctx: HostContext) -> list[Resource]:
    """The eBPF programs of this host (crossnet.ebpf.host.host_resources: programs and
    maps pinned, configuration, the to-container program on the NIC (host-gw) or the
    vxlan device (vxlan)) when it runs the ebpf datapath; none otherwise (kernel forwarding)."""
    if active(ctx) != "ebpf":
        return []
    from crossnet.ebpf import host

    return host.host_resources(ctx)


def vtep_resources(ctx: HostContext, dev: str, nexthop: str, underlay: str) -> list[Resource]:
    """A vxlan peer's entry for the programs' own encapsulation (crossnet.ebpf.host.BpfVtep)
    when this host runs the ebpf datapath with backend vxlan; none otherwise (the vxlan
    device encapsulates)."""
    if active(ctx) != "ebpf":
        return []
    from crossnet.ebpf import host

    return host.vtep_resources(ctx, dev, nexthop, underlay)


def one_program_set(resources: list[Resource]) -> list[Resource]:
    """The named networks (docs/networks.md) share this host's one set of programs:
    ``resources`` (every network's) with one configuration holding all of them
    (crossnet.ebpf.host.one_program_set); unchanged with one network."""
    if sum(1 for r in resources if r.kind == "ebpf-config") < 2:
        return resources
    from crossnet.ebpf import host

    return host.one_program_set(resources)


def container_attached(ctx: HostContext, host_if: str, new: tuple[Any, int, IPv4Address] | None = None) -> None:
    """After the routed veth and its /32 route exist: the from-container program on its
    host side, when this host's programs are loaded (apply/agent loaded them: a cheap
    check of their pins, no feature probe on the attach path). ``new``: (the caller's
    raw netlink socket, the veth's index, the container's address) when the caller has
    just created that veth (crossnet.ebpf.host.attach_new_veth: nothing to look up)."""
    if not routed(ctx):
        return
    from crossnet.ebpf import host

    if host.loaded(ctx.state_dir):
        if new is not None:
            host.attach_new_veth(ctx, *new, host_if)
        else:
            host.attach_container(ctx, host_if)


def container_detached(ctx: HostContext, host_if: str) -> None:
    """Before the routed veth is deleted: its redirect-target entry and stale ones (its
    program goes with the veth; crossnet.ebpf.host.forget_veth). Idempotent: nothing
    loaded, or the veth already gone, is fine."""
    if not routed(ctx):
        return
    from crossnet.ebpf import host

    if host.loaded(ctx.state_dir):
        host.forget_veth(ctx, host_if)


def check_switch(state: StateDir, ctx: HostContext, env: object) -> None:
    """Refuse (one line, nothing changed) to switch a host between datapaths while it
    has containers attached (their veths are laid out for the other one)."""
    applied = state.load_applied() if state.applied_path.exists() else None
    before = ((applied or {}).get("context") or {}).get("datapath", "kernel") if applied else None
    now = getattr(ctx, "datapath", "kernel")
    if before is None or before == now or not _veths(env):
        return
    raise ConfigError(f"datapath: this host runs datapath {before} with containers attached; "
                      f"detach them (crossnet detach) before switching to {now}")


def repair_port(ctx: HostContext, ipr: object, host_idx: int, cidr: str) -> bool:
    """An existing routed veth (attach's slow path): no master, the /32 route to the
    container via it, the program; True when something had to change."""
    from crossnet.netlink import iproute as nl
    from crossnet.netlink.const import RT_SCOPE_LINK

    changed = False
    info = nl.link_info(ipr, index=host_idx)
    if info is not None and info.master:
        ipr.link("set", index=host_idx, master=0)
        changed = True
    if not any(r.dst == cidr and r.oif == host_idx and not r.gateway for r in nl.routes(ipr)):
        ipr.route("replace", dst=cidr, oif=host_idx, scope=RT_SCOPE_LINK, table=nl.RT_TABLE_MAIN)
        changed = True
    container_attached(ctx, info.name if info is not None else "")
    return changed


def _veths(env: object) -> set[int]:
    import re

    return {link.index for name, link in env.links().items() if re.fullmatch(r"cnv[0-9a-f]{10}", name)}


def container_devices(ctx: HostContext, env: object) -> set[int]:
    """The indexes of this host's routed container veths (crossnet.containers.host_ifname
    names): the /32 routes via them are crossnet's, not routes of the host's own."""
    return _veths(env) if routed(ctx) else set()
