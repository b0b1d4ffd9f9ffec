"""Running a trace: `trace()` over given views (walk, and with `verify` probe and
measure), resolving SRC / DST on hosts, `Session` (the KernelViews of real hosts) and
`trace_hosts` (what `crossnet trace` and `crossnet lab trace` call)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable, Iterable

from crossnet.errors import ConfigError
from crossnet.trace import ebpf as trace_ebpf
from crossnet.trace.model import (
    DEFAULT_COUNT,
    MAX_COUNT,
    Endpoint,
    HostSide,
    TraceResult,
    View,
)
from crossnet.trace.verify import (
    CounterSource,
    NicTap,
    apply_deltas,
    attach_captures,
    send_probe,
    settle,
    wireguard_counters,
    wireguard_deltas,
)
from crossnet.trace.views import KernelView
from crossnet.trace.walker import Walker


# ---- orchestration ---------------------------------------------------------------------------
def trace(src: Endpoint, dst: Endpoint, hosts: dict[str, HostSide], container_views: dict[str, View],
          counter_sources: dict[str, CounterSource] | None = None, verify: bool = False,
          count: int = DEFAULT_COUNT, host_netns: dict[str, str | None] | None = None,
          ovs_tracer: Any = None) -> TraceResult:
    """Trace SRC -> DST over the given views; with `verify`, probe and measure.

    counter_sources: key -> function returning {name: (tx, rx)}; defaults to every
    view's link stats (plus whatever the OVS tracer adds). host_netns: host name ->
    namespace (for the NIC taps; None = current namespace)."""
    if verify and not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"--count: must be between 1 and {MAX_COUNT}, got {count}")
    sources: dict[str, CounterSource] = {}
    for h in hosts.values():
        sources[h.view.key] = h.view.stats
    for cv in container_views.values():
        sources[cv.key] = cv.stats
    if ovs_tracer is not None:
        sources.update(ovs_tracer.counter_sources())
    for h in hosts.values():
        if h.ctx.backend in ("wireguard", "auto"):
            sources[f"wg:{h.name}"] = lambda h=h: wireguard_counters(h)
    if verify:  # hosts running crossnet's tc eBPF programs: their counters as hops
        sources.update(trace_ebpf.counter_sources(hosts))
    sources.update(counter_sources or {})

    probe = None
    taps: dict[tuple[str, str], dict] = {}
    before = after = None
    if verify:
        host_netns = host_netns or {}
        tap_objs: list[tuple[tuple[str, str], NicTap]] = []
        ports = {4789, 8472} | {int(h.ctx.port or 4789) for h in hosts.values()}
        wg_ports = {int((h.ctx.wireguard or {}).get("port") or 51820) for h in hosts.values()
                    if h.ctx.backend in ("wireguard", "auto")}
        src_host = hosts.get(src.host or "")
        if src_host is not None:
            tap_objs.append(((src_host.view.key, src_host.ctx.iface),
                             NicTap(host_netns.get(src_host.name), src_host.ctx.iface, "tx", src.address, dst.address,
                                    ports, wg_ports)))
        for h in hosts.values():
            if h is not src_host:
                tap_objs.append(((h.view.key, h.ctx.iface),
                                 NicTap(host_netns.get(h.name), h.ctx.iface, "rx", src.address, dst.address, ports,
                                        wg_ports)))
        before = {k: fn() for k, fn in sources.items()}
        for _, t in tap_objs:
            t.start()
        try:
            probe = send_probe(src.netns, dst.address, count)
            time.sleep(0.1)  # let the last replies and taps settle
        finally:
            for key, t in tap_objs:
                counts = t.stop()
                taps[key] = {"error": t.error} if t.error else counts
        after = {k: fn() for k, fn in sources.items()}
        lagging = [k for k in sources if k.startswith("ovs:")]
        if lagging:
            after.update(settle({k: sources[k] for k in lagging}))
        for v in list(hosts.values()):
            v.view.refresh()

    walker = Walker(src, dst, hosts, container_views, ovs_tracer)
    hops = walker.run()
    backend = hosts[src.host].ctx.backend if src.host in hosts else "?"
    result = TraceResult(src=src, dst=dst, backend=backend, hops=hops, tunnel=walker.tunnel,
                         complete=walker.complete, handoff=walker.handoff, warnings=walker.warnings)
    if src.host in hosts:
        recorded = recorded_transport(hosts[src.host], dst.address)
        if recorded is not None:
            result.peer, result.recorded_transport = recorded
            if result.transport and result.transport != result.recorded_transport:
                result.warnings.append(f"peer {result.peer}: crossnet records transport {result.recorded_transport}, "
                                       f"but the kernel's routes send this packet over {result.transport}")
    if verify and before is not None and after is not None and probe is not None:
        sent = int(probe.get("sent") or 0)
        apply_deltas(hops, before, after, sent)
        attach_captures(hops, taps)
        wireguard_deltas(hops, before, after)
        trace_ebpf.add_hops(hops, before, after, sent)
        result.probe = {**probe, "count": count}
        counted = [h for h in hops if h.expect is not None and h.moved is not None]
        result.verified = ((walker.complete or walker.handoff is not None) and bool(counted)
                           and all(h.moved for h in counted) and probe.get("received", 0) > 0)
        if sent and not probe.get("received"):
            result.warnings.append(f"no reply to {sent} echo requests from {dst.address}")
    if not result.complete and result.handoff is None:
        result.warnings.append("the path could not be followed to the destination")
    return result


def recorded_transport(host: HostSide, dst: str) -> tuple[str, str] | None:
    """(peer, transport) that `host` records for the peer holding `dst` (backend auto: the
    agent prober's choice in transport.json, else the one in applied.json's context, as
    `crossnet status` shows it); None for other backends or an address of no peer."""
    if host.ctx.backend != "auto":
        return None
    addr = ipaddress.ip_address(dst)
    peer = next((p for p in host.ctx.peers if addr in p.subnet), None)
    if peer is None:
        return None
    from crossnet.state import StateDir
    from crossnet.transport.connections import rows

    state = StateDir(host.state_dir or host.ctx.state_dir or "/nonexistent")
    row = next((r for r in rows(state, host.ctx) if r["peer"] == peer.name), None)
    return (peer.name, row["transport"]) if row else None


# ---- resolving SRC / DST on a host -----------------------------------------------------------
def container_records(state: Any) -> list[Endpoint]:
    """Containers attached on the host of state dir `state` (crossnet.state.StateDir)."""
    from crossnet.containers import list_containers
    from crossnet.host import load_context

    ctx, _ = load_context(state)
    out = []
    for c in list_containers(state):
        out.append(Endpoint(id=c["id"], address=c["address"], host=ctx.host, netns=c.get("netns"),
                            host_if=c.get("host_if"), ifname=c.get("ifname") or "eth0", mac=c.get("mac")))
    return out


def find_container(containers: list[Endpoint], spec: str) -> Endpoint | None:
    """By id, netns name or netns path (as `crossnet status` shows them)."""
    for c in containers:
        names = {c.id, c.netns or ""}
        if c.netns and c.netns.startswith("/run/netns/"):
            names.add(c.netns[len("/run/netns/"):])
        if spec in names:
            return c
    return None


def owner_of(ip: str, hosts: Iterable[Any]) -> str | None:
    """The host (HostContext list) whose container subnet holds `ip`."""
    addr = ipaddress.ip_address(ip)
    for ctx in hosts:
        if addr in ctx.subnet:
            return ctx.host
        for p in ctx.peers:
            if addr in p.subnet:
                return p.name
    return None


def resolve_dst(spec: str, pools: list[list[Endpoint]], ctxs: list[Any]) -> Endpoint:
    for cs in pools:
        c = find_container(cs, spec)
        if c is not None:
            return c
    try:
        ip = str(ipaddress.IPv4Address(spec))
    except ValueError:
        raise ConfigError(
            f"DST: {spec!r} is neither a container known here nor an IPv4 address "
            "(a container on another host needs --peer-state-dir, or use its address)") from None
    for cs in pools:
        for c in cs:
            if c.address == ip:
                return c
    return Endpoint(id=ip, address=ip, host=owner_of(ip, ctxs))


# ---- sessions: views on real hosts --------------------------------------------------------------
class Session:
    """Owns the KernelViews of one trace (closed on exit)."""

    def __init__(self) -> None:
        self.views: list[KernelView] = []

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        for v in self.views:
            try:
                v.close()
            except Exception:  # noqa: BLE001 - closing best effort
                pass

    def view(self, key: str, netns: str | None) -> KernelView:
        v = KernelView(key, netns)
        self.views.append(v)
        return v

    def host(self, state: Any, netns: str | None = None, ovs_rundir: str | None = None) -> HostSide:
        from crossnet.host import load_context

        ctx, backend = load_context(state)
        recorded = (state.load_applied() or {}).get("ovs_rundir")
        return HostSide(name=ctx.host, ctx=ctx, backend=backend, view=self.view(f"host:{ctx.host}", netns),
                        containers=container_records(state), netns=netns, state_dir=str(state.root),
                        ovs_rundir=ovs_rundir or (recorded if isinstance(recorded, str) and recorded else None))

    def containers(self, *eps: Endpoint) -> dict[str, View]:
        out: dict[str, View] = {}
        for ep in eps:
            if ep.is_container and ep.id not in out:
                out[ep.id] = self.view(f"ctr:{ep.id}", ep.netns)
        return out


def trace_hosts(src_spec: str, dst_spec: str, states: list[tuple[Any, ...]], verify: bool = False,
                count: int = DEFAULT_COUNT, make_ovs: Callable[[dict, dict], Any] | None = None) -> TraceResult:
    """Trace with the hosts given as (StateDir, netns or None[, OVS run dir or None])
    tuples; SRC is looked up in the first one (the host trace runs on), DST in all of
    them. ``make_ovs(hosts, host_netns)`` gives the OVS step (crossnet.trace.ovs.make_tracer), or None."""
    with Session() as s:
        sides = [s.host(state, netns, *rest) for state, netns, *rest in states]
        src_side = sides[0]
        src = find_container(src_side.containers, src_spec)
        if src is None:
            names = ", ".join(c.id for c in src_side.containers) or "none attached"
            raise ConfigError(f"SRC: no container {src_spec!r} on host {src_side.name} (containers: {names})")
        dst = resolve_dst(dst_spec, [h.containers for h in sides], [h.ctx for h in sides])
        if dst.id == src.id:
            raise ConfigError("DST: same container as SRC")
        hosts = {h.name: h for h in sides}
        host_netns = {h.name: h.netns for h in sides}
        cviews = s.containers(src, dst)
        ovs = make_ovs(hosts, host_netns) if make_ovs is not None else None
        return trace(src, dst, hosts, cviews, verify=verify, count=count, host_netns=host_netns, ovs_tracer=ovs)
