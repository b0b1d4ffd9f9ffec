"""`crossnet lab ...`: simulated hosts in network namespaces on this machine."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import click

from crossnet.backends import backend_names, datapath_problem
from crossnet.cli import trace as trace_cli
from crossnet.errors import ConfigError, CrossnetError
from crossnet.lab.topology import (
    DEFAULT_BACKEND,
    DEFAULT_CONTAINERS,
    DEFAULT_HOSTS,
    DEFAULT_NAME,
    DEFAULT_NETWORK,
    DEFAULT_SUBNET_LEN,
    DEFAULT_UNDERLAY,
    LabOptions,
    validate_name,
)

OUTPUTS = ("text", "json")


def _output(value: str) -> str:
    if value not in OUTPUTS:
        raise ConfigError(f"-o/--output: unknown format {value!r} (choose from {', '.join(OUTPUTS)})")
    return value


def _emit_json(data: Any) -> None:
    from crossnet.cli.contract import emit

    emit(data)


def _log(output: str) -> Callable[[str], None]:
    """Progress on stderr: stdout stays the result (one JSON object with -o json)."""
    return lambda msg: click.echo(f"· {msg}", err=True)


def _manager():
    from crossnet.lab import manager

    manager.require_root()
    return manager


def _name_option(f):
    return click.option("--name", "name", default=DEFAULT_NAME, show_default=True, envvar="CROSSNET_LAB",
                        help="Lab name (1-8 chars [a-z0-9], starts with a letter). Env: CROSSNET_LAB.")(f)


def _output_option(f):
    return click.option("-o", "--output", "output", default="text", show_default=True, type=click.Choice(OUTPUTS),
                        help="Output format.")(f)


def _build_options(f):
    opts = [
        click.option("--hosts", "hosts", type=int, default=DEFAULT_HOSTS, show_default=True,
                     help="Number of simulated hosts."),
        click.option("--underlay", default=DEFAULT_UNDERLAY, show_default=True, type=click.Choice(["l2", "l3"]),
                     help="l2: hosts on one switched LAN; l3: each host in its own /24 behind a router."),
        click.option("--backend", default=DEFAULT_BACKEND, show_default=True, type=click.Choice(backend_names()),
                     help="Data plane written into the cluster file."),
        click.option("--containers", type=int, default=DEFAULT_CONTAINERS, show_default=True,
                     help="Containers (network namespaces) attached per host."),
        click.option("--mtu", type=int, default=None, help="Underlay MTU of every underlay link."),
        click.option("--runtime", default="netns", show_default=True,
                     type=click.Choice(["netns", "podman", "docker", "docker-plugin"]),
                     help="Containers: plain network namespaces + `crossnet attach`, real podman "
                          "containers (busybox) attached by the crossnet-cni plugin, or a dockerd per host "
                          "configured by `crossnet docker-config --write` and plain `docker run`, or a dockerd per host "
                          "with crossnet's network driver (`crossnet docker-plugin`; docs/docker.md)."),
        click.option("--store", default="static", show_default=True, type=click.Choice(["static", "etcd", "mesh"]),
                     expose_value=False,
                     callback=_store_option,
                     help="static: `crossnet apply` with the lab's cluster file; etcd: an etcd server in the "
                          "lab and `crossnet agent` on every host (see docs/agent.md)."),
        click.option("--encrypt", is_flag=True, expose_value=False, callback=_encrypt_option,
                     help="--backend auto: every peer over WireGuard (docs/transport.md)."),
        click.option("--datapath", default="kernel", show_default=True, expose_value=False, callback=_datapath_option,
                     help="kernel (container bridge) or ebpf (routed container veths; docs/datapath.md)."),
        click.option("--dns", is_flag=True, expose_value=False, callback=_dns_option,
                     help="--store static: run `crossnet dns serve` on every host (with etcd/mesh the agents "
                          "serve DNS anyway; docs/dns.md)."),
        click.option("--network", default=DEFAULT_NETWORK, show_default=True,
                     help="Overlay network (ignored by --backend bridge)."),
        click.option("--subnet-len", type=int, default=DEFAULT_SUBNET_LEN, show_default=True,
                     help="Prefix length of each host's container subnet."),
        click.option("--keep", is_flag=True, help="On failure leave what was built for inspection."),
        click.option("--no-apply", "no_apply", is_flag=True, hidden=True,
                     help="Build the topology only (no crossnet apply/attach)."),
        _name_option,
        _output_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _store_option(ctx, _param, value):
    if value not in ("static", "etcd", "mesh"):
        raise ConfigError(f"--store: unknown store {value!r} (choose from static, etcd, mesh)")
    ctx.meta["crossnet.lab.store"] = value


def _encrypt_option(ctx, _param, value):
    ctx.meta["crossnet.lab.encrypt"] = bool(value)


def _datapath_option(ctx, _param, value):
    ctx.meta["crossnet.lab.datapath"] = value


def _dns_option(ctx, _param, value):
    ctx.meta["crossnet.lab.dns"] = bool(value)


def _options(name, hosts, underlay, backend, containers, mtu, network, subnet_len, runtime="netns") -> LabOptions:
    if runtime not in ("netns", "podman", "docker", "docker-plugin"):
        raise ConfigError(f"--runtime: unknown runtime {runtime!r} (choose from netns, podman, docker, docker-plugin)")
    extra = {"runtime": runtime} if runtime != "netns" else {}
    ctx = click.get_current_context(silent=True)
    store = ctx.meta.get("crossnet.lab.store") if ctx is not None else None
    if store in ("etcd", "mesh"):
        from crossnet.store import STORE_BACKENDS

        if backend not in STORE_BACKENDS:
            raise ConfigError(f"--store {store}: backend {backend!r} is not supported (choose from {', '.join(STORE_BACKENDS)})")
        extra["store"] = store
    elif ctx is not None and ctx.meta.get("crossnet.lab.dns"):
        extra["dns"] = True
    if ctx is not None and ctx.meta.get("crossnet.lab.encrypt"):
        if backend != "auto":
            raise ConfigError(f"--encrypt: only with --backend auto, not {backend!r}")
        extra["encrypt"] = True
    datapath = ctx.meta.get("crossnet.lab.datapath", "kernel") if ctx is not None else "kernel"
    if datapath != "kernel":
        why = datapath_problem(backend, datapath)
        if why:
            raise ConfigError(f"--datapath: {why}")
        extra["datapath"] = datapath
    if runtime == "docker" and (backend not in ("bridge", "host-gw", "vxlan") or store in ("etcd", "mesh")):
        raise ConfigError(f"--runtime docker: needs --store static and a backend Docker's bridge can use "
                          f"(bridge, host-gw, vxlan), not {backend!r}" + (f" with --store {store}" if store else ""))
    return LabOptions(name=name, hosts=hosts, underlay=underlay, backend=backend, containers=containers,
                      mtu=mtu, network=network, subnet_len=subnet_len, extra=extra).validate()


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    mtu = f", underlay mtu {s['mtu']}" if s.get("mtu") else ""
    con.print(f"lab [bold]{s['name']}[/bold]: {len(s['hosts'])} hosts, {s['underlay']} underlay "
              f"({s['block']}, {s['fabric']['kind']} {s['fabric']['netns']}{mtu}), backend {s['backend']}"
              + ("" if s["applied"] else " [yellow](not applied)[/yellow]"))
    t = Table(show_header=True, header_style="bold")
    for col in ("host", "netns", "underlay", "subnet", "containers"):
        t.add_column(col)
    for h in s["hosts"]:
        cs = ", ".join(f"{c['id']}={c['address']}" if c["address"] else c["id"] for c in h["containers"]) or "-"
        t.add_row(h["name"], h["netns"], h["address"], h["subnet"] or "-", cs)
    con.print(t)
    con.print(f"cluster file: {s['cluster_file']}")
    con.print(f"try: crossnet lab exec --name {s['name']} h1 -- crossnet status")


def _print_pairs(pairs, title: str, lab_name: str | None = None, host_of: dict[str, str] | None = None) -> None:
    from rich.console import Console

    from crossnet.check import Pair, summary_line
    from crossnet.cli.checkview import failure_lines, matrix

    fields = set(Pair.__dataclass_fields__)
    ps = [Pair(**{k: v for k, v in p.items() if k in fields}) if isinstance(p, dict) else p for p in pairs]
    con = Console()
    strip = f"{lab_name}-" if lab_name else ""

    def label(n: str) -> str:
        return n[len(strip):] if strip and n.startswith(strip) else n

    con.print(matrix(ps, title=title, label=label))
    for line in failure_lines(ps, (host_of or {}).get, label):
        con.print(f"  [red]✗[/red] {line}", highlight=False)
    con.print(summary_line(ps))


def register(main: click.Group) -> None:
    @main.group("lab")
    def lab() -> None:
        """Simulated hosts (network namespaces) on this machine: build a cluster,
        run crossnet in every host, test reachability.

        \b
          crossnet lab demo --hosts 3 --backend vxlan       up, check, down
          crossnet lab up --hosts 3 --underlay l3           build and leave running
          crossnet lab exec h1 -- crossnet status           run a command in host h1
          crossnet lab check                                container ping matrix
          crossnet lab down                                 remove everything
        """

    lab.add_command(lab_trace_cmd)

    @lab.command("up")
    @_build_options
    def up_cmd(name, hosts, underlay, backend, containers, mtu, runtime, network, subnet_len, keep, no_apply, output):
        """Create a lab and run `crossnet apply` / `attach` in its hosts."""
        output = _output(output)
        opts = _options(name, hosts, underlay, backend, containers, mtu, network, subnet_len, runtime)
        m = _manager()
        lab_ = m.up(opts, apply=not no_apply, keep=keep, log=_log(output))
        statuses = lab_.statuses() if lab_.applied else {}
        s = lab_.summary(statuses)
        if output == "json":
            _emit_json({"lab": s["name"], **s})  # `lab` as in every lab command (`name`: the old key)
        else:
            _print_summary(s)

    @lab.command("down")
    @_name_option
    @click.option("--all", "all_", is_flag=True,
                  help="Remove every lab whose creating process has ended (a test or `lab up` still running keeps its lab).")
    @click.option("--force", is_flag=True, help="With --all: also remove labs whose creator is still running.")
    @_output_option
    def down_cmd(name, all_, force, output):
        """Remove a lab: processes, namespaces, its directory (idempotent)."""
        output = _output(output)
        if not all_:
            validate_name(name)
        m = _manager()
        results = m.down_all(log=_log(output), force=force) if all_ else [m.down(name, log=_log(output))]
        if output == "json":
            named = [{"lab": r["name"], **r} for r in results]
            _emit_json({"labs": named} if all_ else named[0])
        elif not any(r["existed"] for r in results):
            click.echo("no lab to remove" if all_ else f"lab {name!r} does not exist (nothing to do)")

    @lab.command("list")
    @_output_option
    def list_cmd(output):
        """List labs on this machine."""
        output = _output(output)
        m = _manager()
        labs = m.list_labs()
        if output == "json":
            _emit_json({"labs": [{"lab": x["name"], **x} for x in labs]})
            return
        if not labs:
            click.echo("no labs")
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(header_style="bold")
        for col in ("name", "phase", "underlay", "backend", "hosts", "block", "namespaces"):
            t.add_column(col)
        for x in labs:
            t.add_row(x["name"], str(x["phase"]), str(x["underlay"]), str(x["backend"]), str(x["hosts"]),
                      str(x["block"]), x["namespaces"])
        Console().print(t)

    @lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @_name_option
    @click.argument("host")
    @click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
    def exec_cmd(name, host, cmd):
        """Run CMD in lab namespace HOST (h1 or LAB-h1; also sw/rt, h1-c1) with
        CROSSNET_STATE_DIR set to that host's state dir. Exit code passed through.
        CMD `crossnet` is this crossnet (the interpreter running this command, as the lab's
        own commands are), not whichever one PATH finds first."""
        cmd = list(cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise ConfigError("exec: missing command (crossnet lab exec HOST -- CMD...)")
        m = _manager()
        if cmd[0] == "crossnet":  # another installation's crossnet could not read this one's records
            cmd = m.crossnet_argv(*cmd[1:])
        lab_ = m.Lab.open(validate_name(name))
        argv = lab_.argv(host, cmd)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            raise CrossnetError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None

    @lab.command("check")
    @_name_option
    @click.option("--count", type=int, default=1, show_default=True, help="Pings per pair.")
    @click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait per ping.")
    @click.option("--underlay", "underlay", is_flag=True, help="Ping the hosts' underlay addresses instead.")
    @_output_option
    def check_cmd(name, count, timeout, underlay, output):
        """Ping matrix between all containers of the lab (from every host's status)."""
        from crossnet.check import pairs_to_json

        output = _output(output)
        _check_probe_args(count, timeout)
        m = _manager()
        lab_ = m.Lab.open(validate_name(name))
        statuses = None if underlay or not lab_.applied else lab_.statuses()
        pairs = lab_.check(count=count, timeout=timeout, underlay=underlay, statuses=statuses)
        ok = m.reachable(pairs)  # the verdict `lab demo` uses too
        if output == "json":
            host_of = _host_of(lab_, statuses)
            _emit_json({"lab": lab_.name, "backend": lab_.plan.backend, "underlay": lab_.plan.underlay,
                        "pairs": [{**p, "src_host": host_of.get(p["src"]), "dst_host": host_of.get(p["dst"])}
                                  for p in pairs_to_json(pairs)], "ok": ok})
        else:
            _print_pairs(pairs, f"lab {lab_.name}: {lab_.plan.backend} over {lab_.plan.underlay}", lab_.name,
                         _host_of(lab_, statuses))
        if not ok:
            sys.exit(1)

    @lab.command("demo")
    @_build_options
    @click.option("--count", type=int, default=1, show_default=True, help="Pings per pair.")
    @click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait per ping.")
    def demo_cmd(name, hosts, underlay, backend, containers, mtu, runtime, network, subnet_len, keep, no_apply,
                 output, count, timeout):
        """up, check (ping matrix), down — in one go. Exit 0 iff every pair is reachable
        (the verdict of `lab check`; with --runtime podman: and every cross-host HTTP
        fetch works). With -o json, stdout is one JSON object also when the lab cannot
        be built (ok: false, error)."""
        output = _output(output)
        opts = _options(name, hosts, underlay, backend, containers, mtu, network, subnet_len, runtime)
        _check_probe_args(count, timeout)
        m = _manager()
        try:
            result = m.demo(opts, count=count, timeout=timeout, apply=not no_apply, keep=keep, log=_log(output))
        except CrossnetError as exc:
            if output != "json":
                raise
            # scripts read stdout: one JSON object even when the lab could not be built
            from crossnet.cli.contract import error_object

            _emit_json({"lab": opts.name, "backend": opts.backend, "underlay": opts.underlay,
                        "applied": not no_apply, **error_object(str(exc), exc.exit_code), "pairs": []})
            click.echo(f"crossnet: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        if output == "json":  # the vocabulary of `lab check`: containers, pairs with src_host/dst_host
            host_of = {e["name"]: e["host"] for e in result.get("endpoints") or []}
            _emit_json({**result, "containers": result.get("endpoints"),
                        "pairs": [{**p, "src_host": host_of.get(p["src"]), "dst_host": host_of.get(p["dst"])}
                                  for p in result.get("pairs") or []]})
        else:
            _print_pairs(result["pairs"], f"{result['backend']} over {result['underlay']} "
                                          f"({len(result['hosts'])} hosts, {result['elapsed_s']:.1f}s)", result["lab"],
                         {e["name"]: e["host"] for e in result.get("endpoints") or []})
            strip = f"{result['lab']}-"
            for x in result.get("http") or []:
                mark = "✓" if x["ok"] else "✗"
                click.echo(f"  http {mark} {x['src'].removeprefix(strip)} → {x['dst'].removeprefix(strip)} "
                           f"{x['url']}" + (f" ({x['ms']:.0f} ms)" if x["ok"] else f": {x['error']}"))
        if not result["ok"]:
            sys.exit(1)


def _host_of(lab_, statuses: dict | None) -> dict[str, str]:
    """Endpoint label (as Lab.endpoints names it) -> the lab host it is on."""
    out = {h.name: h.name for h in lab_.hosts}
    for h in lab_.hosts:
        for c in ((statuses or {}).get(h.name) or {}).get("containers") or []:
            out[str(c.get("name") or c.get("id") or c.get("netns"))] = h.name
    return out


def _check_probe_args(count: int, timeout: float) -> None:
    if not 1 <= count <= 100:
        raise ConfigError(f"--count: must be between 1 and 100, got {count}")
    if not 0.1 <= timeout <= 30:
        raise ConfigError(f"--timeout: must be between 0.1 and 30 seconds, got {timeout:g}")


@click.command("trace")
@click.argument("src")
@click.argument("dst")
@trace_cli.VERIFY
@trace_cli.COUNT
@click.option("--name", "name", default="cnlab", show_default=True, envvar="CROSSNET_LAB",
              help="Lab name. Env: CROSSNET_LAB.")
@trace_cli.OUTPUT
def lab_trace_cmd(src: str, dst: str, verify: bool, count: int, name: str, output: str) -> None:
    """Trace from lab container SRC (h1-c1 or LAB-h1-c1) to DST (a container or an
    address) across the simulated hosts: source host, underlay, destination host —
    with counters on both sides when --verify."""
    from crossnet.trace import ovs as trace_ovs
    from crossnet.state import StateDir
    from crossnet.trace.run import trace_hosts

    trace_cli._check_count(count)
    manager = _manager()
    lab = manager.Lab.open(validate_name(name))
    src_ns = lab.plan.resolve_netns(src)
    src_host = next((h for h in lab.hosts if src_ns in h.containers), None)
    if src_host is None:
        raise ConfigError(f"SRC: {src!r} is not a container of lab {lab.name!r}")
    dst_spec = dst
    try:
        dst_spec = lab.plan.resolve_netns(dst)
    except ConfigError:
        pass  # an address
    order = [src_host] + [h for h in lab.hosts if h is not src_host]
    from crossnet.lab import services

    # each simulated host's own Open vSwitch, as the lab runs it (never looked for)
    states = [(StateDir(h.state_dir), h.netns, services.host_env(lab.plan, h).get("OVS_RUNDIR")) for h in order]
    result = trace_hosts(src_ns, dst_spec, states, verify=verify, count=count, make_ovs=trace_ovs.make_tracer)
    trace_cli._emit(result, output, verify)
