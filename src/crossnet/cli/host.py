"""Per-host commands: apply, reset, attach, detach, status, check."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

import click

from crossnet.errors import CrossnetError
from crossnet.state import StateDir

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text for people, json for scripts.",
)


def _state(ctx: click.Context) -> StateDir:
    return StateDir(ctx.obj["state_dir"])


class _ReadOnlyState(StateDir):
    """The state dir for `apply --dry-run`: read, never created. Its lock is taken
    shared (so a dry run does not read a half-done apply) only if the lock file
    already exists; no state dir or lock file is created."""

    @contextlib.contextmanager
    def lock(self):
        try:
            fh = open(self.root / "lock")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            yield
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            yield

    def save_applied(self, data: dict) -> None:  # pragma: no cover - apply never saves in a dry run
        raise CrossnetError("internal error: a dry run tried to write applied.json")


def _agent(ctx: click.Context, method: str, path: str, body: dict | None = None):
    """When a `crossnet agent` serves this state dir, go through its local API
    (one process owns the host's state); None when no agent runs."""
    import os

    sock = os.path.join(ctx.obj["state_dir"], "agent.sock")
    if not os.path.exists(sock):
        return None
    from crossnet.agent.api import AgentNotRunning, agent_running, call

    if not agent_running(ctx.obj["state_dir"]):
        return None  # a stale socket: fall back to the state dir
    try:
        return call(ctx.obj["state_dir"], method, path, body)
    except AgentNotRunning:
        return None  # gone since (stopped or restarting; the request was not sent): as when none runs


def _container_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """CONTAINER: not empty, one line, of a sane length (it names a netns, pid or container)."""
    if not value:
        raise click.BadParameter("must not be empty (a netns name or path, pid:N, podman:NAME, docker:NAME)")
    if len(value) > 4096 or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise click.BadParameter("must be one line of at most 4096 characters")
    return value


def _ip_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--ip: a unicast IPv4 host address (whether it is inside this host's subnet is
    checked against the applied state)."""
    if value is None:
        return None
    import ipaddress

    try:
        addr = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise click.BadParameter(f"{addr} is not a unicast host address")
    return str(addr)


def _ifname_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from crossnet import ifname

    why = ifname.problem(value)
    if why is None and value == "lo":
        why = "lo is the container's loopback device"
    if why is not None:
        raise click.BadParameter(why)
    return value


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # NaN passes FloatRange's comparisons
        raise click.BadParameter("must be a number of seconds, not nan")
    return value


def _check_requested_ip(ip: str | None, state: StateDir) -> None:
    """--ip outside this host's container subnet (or its gateway) is bad input (exit 2),
    checked against what apply recorded (also when an agent serves the attach)."""
    if ip is None:
        return
    import ipaddress

    from crossnet.errors import ConfigError

    c = (state.load_applied() or {}).get("context") or {}
    if not c.get("subnet") or not c.get("gateway"):
        return  # not configured: attach says so
    subnet, gateway = ipaddress.IPv4Network(c["subnet"]), ipaddress.IPv4Address(c["gateway"])
    addr = ipaddress.IPv4Address(ip)
    edges = () if c.get("backend") == "bridge" else (subnet.network_address, subnet.broadcast_address)
    if addr not in subnet or addr in edges:  # bridge: a range inside the LAN, its edges are usable
        raise ConfigError(f"--ip: {addr} is not a usable address of this host's container subnet {subnet}")
    if addr == gateway:
        raise ConfigError(f"--ip: {addr} is this host's container gateway")


def _network_state(ctx: click.Context, network: str | None) -> StateDir:
    """The state dir of --network NAME (docs/networks.md); without it, the top-level one.
    A named network is served here, never by an agent (the store has no networks yet)."""
    if network is None:
        return _state(ctx)
    from crossnet import networks

    return networks.check_known(_state(ctx), network)


def _json(data) -> None:
    from crossnet.cli.contract import emit

    emit(data)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="Cluster file (YAML).")
@click.option("--host", "host_name", help="Which host of the cluster this is (default: the one whose address is configured here).")
@click.option("--dry-run", is_flag=True, help="Print the plan as the equivalent ip/bridge/nft commands; change nothing.")
@click.option("--probe-mtu", is_flag=True,
              help="Measure the path MTU to every peer (DF pings) and lower the container MTU to fit (docs/mtu.md).")
@OUTPUT
@click.pass_context
def apply(ctx: click.Context, path: str, host_name: str | None, dry_run: bool, probe_mtu: bool, output: str) -> None:
    """Configure this host's part of the cluster.

    Idempotent: running it again changes nothing (and says so); anything that
    drifted (a deleted route, FDB entry, address) is repaired. Backends that need
    one L2 segment (bridge, host-gw) refuse an L3 underlay before changing anything.
    """
    from crossnet.config import load_cluster
    from crossnet.host import apply as do_apply

    cluster = load_cluster(path)
    result = do_apply(cluster, _ReadOnlyState(ctx.obj["state_dir"]) if dry_run else _state(ctx), host_name,
                      dry_run=dry_run, probe_mtu=probe_mtu)
    if output == "json":
        _json(result.to_json())
        return
    c = result.context
    head = f"{result.host}: backend {result.backend}, subnet {c.subnet}, gateway {c.gateway}, mtu {c.mtu}"
    if dry_run:
        click.echo(f"# {head}")
        if not result.changes:
            click.echo("# nothing to do: the host already matches the cluster file")
        for ch in result.changes:
            prefix = "# remove: " if ch.action == "remove" else ""
            click.echo(prefix + ch.resource.describe())
        return
    click.echo(head)
    if not result.changes:
        click.echo("up to date: nothing changed")
    else:
        for ch in result.changes:
            click.echo(f"  {ch}")
        click.echo(f"{len(result.changes)} change(s) in {result.elapsed_s * 1000:.0f} ms")


@click.command()
@OUTPUT
@click.pass_context
def reset(ctx: click.Context, output: str) -> None:
    """Remove everything crossnet created on this host: container attachments,
    bridges, tunnels, routes, neighbours, FDB entries, nft tables; give the NIC its
    address and routes back (bridge backend)."""
    from crossnet.host import reset as do_reset

    changes = do_reset(_state(ctx))
    if output == "json":
        _json({"changed": bool(changes), "changes": [{"action": c.action, "command": c.resource.describe()} for c in changes]})
        return
    if not changes:
        click.echo("nothing to reset: crossnet has not configured this host")
    for ch in changes:
        click.echo(f"  {ch}")


@click.command()
@click.argument("container", callback=_container_arg)
@click.option("--ip", "ip", callback=_ip_option, help="Ask for this address (must be inside this host's subnet and free).")
@click.option("--ifname", default="eth0", show_default=True, callback=_ifname_option,
              help="Interface name inside the container.")
@click.option("--name", "name", help="The container's DNS name (NAME.crossnet.local; default: podman:/docker: "
                                     "the container's name).")
@click.option("--network", "network", default=None, metavar="NAME",
              help="A named network of the cluster file (`networks:`, docs/networks.md); default: the top-level one.")
@OUTPUT
@click.pass_context
def attach(ctx: click.Context, container: str, ip: str | None, ifname: str, name: str | None,
           network: str | None, output: str) -> None:
    """Connect CONTAINER to the cluster network.

    CONTAINER is a netns name (`ip netns list`), a netns path, `pid:N`,
    `podman:NAME` or `docker:NAME`. Creates a veth pair, gives the container an
    address from this host's subnet, a default route via the host's gateway and
    the right MTU. Idempotent: the same container keeps its address.
    """
    from crossnet import containers
    from crossnet.dns import runtime_name
    from crossnet.host import load_context
    from crossnet.runtime.spec import resolve

    name = runtime_name(container, name)  # ConfigError naming --name
    state = _network_state(ctx, network)
    cid, path = resolve(container)
    _check_requested_ip(ip, state)
    # never the host's own namespace (checked here, in the agent and in containers.attach);
    # its identity goes to the agent, which refuses a path it resolves differently
    ident = containers.check_target(path, f"CONTAINER {container!r}")
    data = None if network else _agent(ctx, "POST", "/v1/attach", {
        "id": cid, "netns": path, "ip": ip, "ifname": ifname, "name": name, **({"netns_id": list(ident)} if ident else {})})
    if data is None:
        hctx, backend = load_context(state)
        att = containers.attach(state, hctx, backend, cid, path, requested=ip, ifname=ifname)
        containers.name_and_resolver(state, hctx, att, name)
        data = att.to_json()
    if output == "json":
        _json(data)
    else:
        note = "" if data["changed"] else " (already attached, nothing changed)"
        if data.get("asked_as") is not None:  # the namespace was attached before under another id
            note = f" (already attached as {data['id']})"
        from crossnet.cli.checkview import container_label

        runtime, sep, rname = container.partition(":")
        who = container_label(cid, name or (rname if sep and runtime in ("podman", "docker") else None))
        click.echo(f"{who}: {data['ifname']} {data['cidr']} via {data['gateway']} mtu {data['mtu']} (host side {data['host_if']}){note}")


@click.command()
@click.argument("container", callback=_container_arg)
@click.option("--network", "network", default=None, metavar="NAME",
              help="A named network of the cluster file (`networks:`, docs/networks.md); default: the top-level one.")
@OUTPUT
@click.pass_context
def detach(ctx: click.Context, container: str, network: str | None, output: str) -> None:
    """Disconnect CONTAINER: remove its veth and release its address. Idempotent."""
    from crossnet import containers
    from crossnet.host import load_context
    from crossnet.runtime.spec import resolve, spec_id

    try:
        cid, path = resolve(container)
    except CrossnetError:
        if _never_a_netns(container):
            raise  # a directory, a device, a file with content: it was never attached
        cid, path = spec_id(container), None  # the namespace may already be gone: release by the id attach gave it
    # attached under another name of the same namespace (pid:N vs /proc/N/ns/net, a path vs
    # its netns name): found by the namespace's identity
    ident = containers.netns_ident(path) if path else None
    body = {"id": cid, **({"netns": path, "netns_id": list(ident)} if ident else {})}
    state = _network_state(ctx, network)
    via = None if network else _agent(ctx, "POST", "/v1/detach", body)
    if via is not None:
        res = {k: via[k] for k in ("id", "address", "host_if") if k in via} if via.get("detached") else None
        key = via.get("id", cid)
    else:
        hctx, backend = load_context(state)
        key = containers.resolve_key(state, hctx, cid, path if ident else None)
        res = containers.detach(state, hctx, backend, key)
    if output == "json":
        _json({"id": key, "detached": res is not None, **(res or {}), **({"asked_as": cid} if key != cid else {})})
    elif res is None:
        click.echo(f"{cid}: not attached, nothing to do")
    else:
        alias = f" (attached as {key})" if key != cid else ""
        click.echo(f"{cid}: detached{alias}, released {res['address']}")


def _never_a_netns(spec: str) -> bool:
    """An existing path that cannot be a (possibly dead) namespace file: detach refuses it
    instead of answering "not attached". A bind-mount point left by a dead namespace is an
    empty regular file, and a gone namespace's path no longer exists: both still release by id."""
    import stat

    if "/" not in spec:
        return False
    try:
        st = os.stat(spec)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size > 0


@click.command()
@OUTPUT
@click.pass_context
def status(ctx: click.Context, output: str) -> None:
    """Show this host's backend, subnet, peers (programmed or not) and containers."""
    from crossnet.host import status as get_status

    via = _agent(ctx, "GET", "/v1/status")
    if via is not None and "error" not in via["host"]:
        st = dict(via["host"], agent=via["agent"])
    else:
        try:
            st = get_status(_state(ctx))
        except CrossnetError as exc:
            mesh = _mesh_status(ctx)
            if mesh is None:
                down = _agent_health(ctx, None)  # e.g. agent.json but no agent: say that, not "run apply"
                if down is not None:
                    raise CrossnetError(f"{down['problem']} ({exc})") from None
                raise
            from crossnet.mesh.launch import format_status, not_programmed

            down = not_programmed(mesh, str(exc))
            if output == "json":
                _json(down)
            else:
                click.echo(f"{down['host']}: not programmed (no applied state): {down['reason']}\n{format_status(mesh)}")
            return
    mesh = _mesh_status(ctx)
    if mesh is not None:
        st["mesh"] = mesh
    from crossnet.dns.resolv import status_of

    st["dns"] = status_of(_state(ctx))
    health = _agent_health(ctx, st.get("agent"))  # running, synced, store, lease; or "not running"
    if health is not None:
        st["agent_health"] = health
    from crossnet.expose.ops import status as expose_status

    st["expose"] = expose_status(_state(ctx))  # `crossnet expose` (docs/expose.md)
    if output == "json":
        _json(st)
        return
    import time

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{st['host']}[/] ({st['address']} on {st['iface']}) cluster {st['cluster']} backend [bold]{st['backend']}[/]\n"
        f"subnet {st['subnet']} gateway {st['gateway']} bridge {st['bridge']} mtu {st['mtu']} "
        f"(underlay {st['underlay_mtu']}) masquerade {'on' if st['masquerade'] else 'off'}"
    )
    if st.get("datapath"):  # docs/datapath.md
        d = st["datapath"]
        console.print(f"datapath: {d['datapath']} ({d['layout']} container veths"
                      + (f"; {d['why']}" if d.get("why") else "") + ")", markup=False)
        if d.get("counters"):  # docs/ebpf.md: the fast path really taken?
            c = d["counters"]
            console.print(f"ebpf: {c.get('redirect', 0)} packets redirected, {c.get('pass', 0)} passed to the stack",
                          markup=False)
    if st.get("ovs"):
        o = st["ovs"]
        console.print(
            f"open vswitch: {o.get('tunnel', '?')} tunnels, datapath {o.get('datapath')} ({o.get('datapath_kind')}; "
            f"kernel module {'present' if o.get('kernel_module') else 'absent'})"
            + (f" [red]{o['error']}[/]" if o.get("error") else "")
        )
    if st.get("wireguard"):
        w = st["wireguard"]
        impl = {"userspace": "wireguard-go", "kernel": "kernel module"}.get(w.get("implementation") or "", "not running")
        console.print(f"wireguard: {w['device']} ({impl}) port {w.get('listen_port')} public key {w.get('public_key')}"
                      + ("" if w.get("running") else " [red]not running: run apply (or the agent restarts it)[/]"))
        wt = Table(title="wireguard peers", title_justify="left")
        for col in ("name", "endpoint", "allowed ips", "last handshake", "rx bytes", "tx bytes"):
            wt.add_column(col)
        for p in w.get("peers") or []:
            hs = p.get("last_handshake") or 0
            wt.add_row(p.get("name") or "?", p.get("endpoint") or "", ",".join(p.get("allowed_ips") or []),
                       time.strftime("%H:%M:%S", time.localtime(hs)) if hs else "never",
                       str(p.get("rx_bytes", 0)), str(p.get("tx_bytes", 0)))
        console.print(wt)
    if health is not None:
        from crossnet.agent.health import text as health_text

        console.print(health_text(health))
    console.print(st["dns"]["text"])
    if st["expose"]:
        from crossnet.expose import status_text

        console.print(status_text(st["expose"]), markup=False)
    if st.get("interrupted"):
        console.print("[yellow]interrupted: an apply was killed half-way (journal.json); run apply to complete it "
                      "or reset to undo it[/]")
    if st["drift"]:
        from crossnet.host import REFUSES

        refused = [d.split(REFUSES, 1)[1] for d in st["drift"] if REFUSES in d]
        console.print(f"[yellow]drift: {len(st['drift'])} resource(s) differ from what apply programmed; "
                      + (f"apply refuses to repair {len(refused)} of them:[/]" if refused else "run apply to repair[/]"))
        for why in refused:
            console.print(f"  {why}", markup=False, soft_wrap=True)
    peers = Table(title="peers", title_justify="left")
    for col in ("name", "address", "subnet", "programmed", "path mtu"):
        peers.add_column(col)
    for p in st["peers"]:
        pm = p.get("path_mtu")
        peers.add_row(p["name"], p["address"], p["subnet"], "[green]yes[/]" if p["programmed"] else "[red]no[/]",
                      "" if "path_mtu" not in p else f"[yellow]{pm} narrow[/]" if p.get("narrow") else str(pm or "unreachable"))
    console.print(peers)
    for n in st.get("narrow_peers") or []:
        console.print(f"[yellow]narrow path: peer {n['name']} measured path MTU {n['path_mtu']} "
                      f"< underlay {st['underlay_mtu']} (container mtu {st['mtu']})[/]")
    if st.get("connections"):
        from crossnet.transport.connections import HEADERS, text_rows

        conns = Table(title="connections", title_justify="left")
        for col in HEADERS:
            conns.add_column(col)
        for row in text_rows(st["connections"]):
            conns.add_row(*row)
        console.print(conns)
    cont = Table(title="containers", title_justify="left")
    for col in ("container", "address", "ifname", "host side", "state"):
        cont.add_column(col)
    from crossnet.cli.checkview import container_label

    for c in st["containers"]:
        state = c.get("state", "attached")
        cont.add_row(container_label(c["id"], c.get("name")), c["address"], c["ifname"], c["host_if"] or "",
                     "[yellow]stale[/] (namespace gone: crossnet gc)" if state == "stale" else
                     "[yellow]incomplete[/] (no veth: see below)" if state == "incomplete" else state)
    console.print(cont)
    for c in st["containers"]:
        if c.get("state") == "incomplete":
            console.print(f"{c['id']}: incomplete, missing {c.get('missing')}: {c.get('complete')}", soft_wrap=True)
    for net_name, net in (st.get("networks") or {}).items():
        where = f"on {net['bridge']}" if net.get("bridge") else "routed veths"
        carried = ", ".join(f"{d['kind']} {d['name']}" + (f" port {d['port']}" if d.get("port") else "")
                            for d in net.get("devices") or [])
        console.print(f"network {net_name}: {net['subnet']} of {net['network']} {where} (vni {net['vni']}"
                      f"{'; ' + carried if carried else ''}), {len(net['containers'])} container(s)", soft_wrap=True)
        if "peers" in net:  # an agent's status from before peers were listed has none
            from crossnet.networks import peers_text

            console.print(f"  {peers_text(net['peers'])}", soft_wrap=True, markup=False)
    if mesh is not None:
        from crossnet.mesh.launch import format_status

        click.echo(format_status(mesh))


def _agent_health(ctx: click.Context, agent: dict | None) -> dict | None:
    from crossnet.agent.health import summary

    state = _state(ctx)
    return summary(state.root, state.load_applied(), agent)


def _mesh_status(ctx: click.Context) -> dict | None:
    """The mesh part of `status` on a host `crossnet launch` runs (docs/mesh.md)."""
    from pathlib import Path

    root = ctx.obj["state_dir"]
    if not (Path(root) / "mesh" / "launch.json").exists():
        return None
    from crossnet.mesh.launch import status as mesh_status

    return mesh_status(root)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be collected; change nothing.")
@OUTPUT
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, output: str) -> None:
    """Collect containers whose network namespace is gone (status shows them `stale`):
    remove the host side of their veth if it is still there and release their address.
    A running `crossnet agent` does this at every resync (the top-level network's);
    the named networks' (docs/networks.md) are collected here."""
    from crossnet import containers, networks
    from crossnet.host import load_context

    via = _agent(ctx, "POST", "/v1/gc", {"dry_run": dry_run})
    if via is not None:
        items = via["collected"]
    else:
        hctx, backend = load_context(_state(ctx))
        items = containers.gc(_state(ctx), hctx, backend, dry_run=dry_run)
    if networks.recorded(_state(ctx)):  # the named networks: never served by an agent (docs/networks.md)
        items = [*items, *networks.gc(_state(ctx), load_context(_state(ctx))[1], dry_run=dry_run)]
    if output == "json":
        _json({"dry_run": dry_run, "collected": items})
        return
    if not items:
        click.echo("nothing to collect: every attached container's namespace is there")
    for it in items:
        verb = "would release" if dry_run else "released"
        veth = f", removed {it['host_if']}" if it.get("veth_removed") else ""
        net = f" (network {it['network']})" if it.get("network") else ""
        click.echo(f"{it['id']}{net}: {it['reason']}: {verb} {it['address']}{veth}")


@click.command()
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 100), help="Pings per pair.")
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(0, 60, min_open=True),
              callback=_finite, help="Seconds to wait for each reply.")
@click.option("--network", "network", default=None, metavar="NAME",
              help="Check this network only (`networks:`, docs/networks.md); default: every network of this host.")
@click.option("--isolation", is_flag=True,
              help="Also probe every pair of different networks: each must fail (exit 1 if one answers).")
@OUTPUT
@click.pass_context
def check(ctx: click.Context, count: int, timeout: float, network: str | None, isolation: bool, output: str) -> None:
    """Reachability matrix: ping from every container on this host to every
    container of the cluster this host knows, exit 1 if any pair fails.

    \b
    With `crossnet agent` on etcd, every agent publishes its host's containers in
    the store: the destinations are all containers of the cluster. With the cluster
    file there is no channel between hosts: a peer whose containers are unknown (or
    that has none) is covered by pinging its container gateway, which crosses the
    same overlay path (labelled "NAME (gateway)", kind "gateway"). Run `check` on
    every host (in the lab: `crossnet lab check`) for the whole matrix.
    With named networks, each network is checked on its own (pairs of one network
    only); `--isolation` adds the pairs between networks, which must all fail.
    """
    from concurrent.futures import ThreadPoolExecutor

    from crossnet import netcheck, networks
    from crossnet.backends.base import HostContext
    from crossnet.check import Pair, probe, summary_line
    from crossnet.host import status as get_status

    state = _state(ctx)
    every = [netcheck.DEFAULT, *networks.recorded(state)]
    subs = {n: networks.check_known(state, n) for n in ([network] if network else [])}  # bad --network: exit 2
    names = [network] if network else every
    planned = every if isolation else names  # --isolation: the other networks are destinations
    st = get_status(state)
    me = st["host"]
    published, note = _cluster_containers(ctx) if netcheck.DEFAULT in planned else (None, None)
    plans = []
    for n in planned:
        subs[n] = subs.get(n) or networks.state_of(state, n)
        peers = [] if n == netcheck.DEFAULT else [
            {"name": p.name, "address": str(p.address), "subnet": str(p.subnet)}
            for p in HostContext.applied(subs[n]).peers]
        conts, peers = netcheck.network_status(st, n, peers)
        plans.append(netcheck.plan(n, me, st["backend"], conts, peers,
                                   published if n == netcheck.DEFAULT else None))
    stale = [c for p in plans if p.network in names for c in p.stale]
    stale_note = (f"stale (namespace gone, not probed; `crossnet gc` collects them): "
                  f"{', '.join(c['id'] for c in stale)}") if stale else None
    unfinished = [c for p in plans if p.network in names for c in p.incomplete]
    unfinished_note = (f"incomplete (no veth yet, not probed; `crossnet status` says how to complete or remove "
                       f"them): {', '.join(c['id'] for c in unfinished)}") if unfinished else None
    if not any(p.local for p in plans if p.network in names):
        raise CrossnetError("no containers attached on this host: nothing to check (crossnet attach CONTAINER)"
                            + (f"; {len(stale)} {stale_note}" if stale else "")
                            + (f"; {len(unfinished)} {unfinished_note}" if unfinished else ""))
    same, cross = netcheck.jobs(plans, isolation, network)

    def run(job):
        s, (d, _host, _kind), _sn, _dn = job
        ok, rtt, err = probe(s, d.address, count, timeout)
        return Pair(s.name, d.name, ok, rtt, err)

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(run, same))
        crossed = list(pool.map(run, cross))
    leaks = [p for p in crossed if p.ok]
    ok = all(p.ok for p in pairs) and not leaks
    if output == "json":
        def row(job, p):
            s, (d, dhost, kind), sn, dn = job
            return {"src": p.src, "dst": p.dst, "ok": p.ok, "rtt_ms": p.rtt_ms, "error": p.error, "src_host": me,
                    "dst_host": dhost, "dst_address": d.address, "kind": kind, "network": sn, "dst_network": dn}

        out = {"host": me, "ok": ok, "peer_containers": "published" if published is not None else "unknown",
               "note": note, "stale": stale, "incomplete": unfinished, "networks": names,
               "pairs": [row(j, p) for j, p in zip(same, pairs)]}
        if isolation:
            out["isolation"] = [{**row(j, p), "ok": not p.ok, "reached": p.ok} for j, p in zip(cross, crossed)]
        _json(out)
    else:
        from rich.console import Console

        from crossnet.cli.checkview import failure_lines, matrix

        host_of: dict[str, str] = {}
        for plan, part in _by_network([p for p in plans if p.network in names], same, pairs):
            if not plan.local:
                click.echo(f"network {plan.network}: no containers on this host")
                continue
            caption = "RTT in ms; ✗ = unreachable"
            if any(kind == "gateway" for _, _, kind in plan.dsts):
                caption += "; NAME (gateway): a peer whose containers are unknown here"
            title = f"reachability from {me}" + ("" if names == [netcheck.DEFAULT] else f", network {plan.network}")
            Console().print(matrix(part, [d.name for d, _, _ in plan.dsts], title=title, caption=caption))
            host_of |= {s.name: me for s, _, _ in plan.local} | {d.name: h for d, h, _ in plan.dsts}
        if note:
            click.echo(note)
        if stale_note:
            click.echo(stale_note)
        if unfinished_note:
            click.echo(unfinished_note)
        click.echo(summary_line(pairs))
        for line in failure_lines(pairs, host_of.get):
            click.echo(f"  ✗ {line}")
        if isolation:
            click.echo(f"isolation: {len(crossed) - len(leaks)} of {len(crossed)} cross-network pairs blocked"
                       + ("" if not leaks else f"; REACHED: {', '.join(f'{p.src} -> {p.dst}' for p in leaks)}"))
    sys.exit(0 if ok else 1)


def _by_network(plans, jobs, pairs):
    """Each plan with its own pairs (jobs are in plan order)."""
    for plan in plans:
        yield plan, [p for j, p in zip(jobs, pairs) if j[2] == plan.network]


def _cluster_containers(ctx: click.Context) -> tuple[dict[str, list[dict]] | None, str | None]:
    """Every host's containers as the agent's store publishes them, or (None, why)
    when they are unknown: no agent (the cluster file), or the store does not answer."""
    try:
        via = _agent(ctx, "GET", "/v1/containers")
    except CrossnetError as exc:
        return None, f"peers' containers unknown ({exc}): their gateways are pinged instead"
    if via is None or not via.get("known"):
        return None, ("peers' containers are unknown without an agent on etcd: their gateways are pinged "
                      "instead; run `crossnet check` on every host for the whole matrix")
    # the top-level network's (a named network's carry their `network`: docs/dns.md)
    return {h: [c for c in items or [] if isinstance(c, dict) and not c.get("network")]
            for h, items in (via.get("hosts") or {}).items()}, None


def register(main: click.Group) -> None:
    for cmd in (apply, reset, attach, detach, status, check, gc):
        main.add_command(cmd)
