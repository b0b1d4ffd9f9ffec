"""`crossnet launch`, `stop`, `forget`, `token create|list|revoke`: the Weave-style mesh
on crossnet-run etcd members (docs/mesh.md)."""

from __future__ import annotations

import socket

import click

from crossnet.cli.agent import network_options


def _state(ctx: click.Context) -> str:
    return ctx.obj["state_dir"]


@click.command("launch")
@click.argument("addr", required=False)
@click.option("--token", "token", help="Join token printed by the first host (<id>.<secret>.<ca pin>).")
@click.option("--ca-pin", help="CA pin (sha256:…) when --token is a bare <id>.<secret>.")
@click.option("--host", "--name", "name", help="This host's name (default: the machine's host name; "
                                                "--name is the old spelling).")
@click.option("--iface", help="Underlay interface (default: the one of the default route).")
@click.option("--address", help="Underlay address (default: the interface's first IPv4 address).")
@click.option("--network", default="10.32.0.0/12", show_default=True, help="Container network (first host).")
@click.option("--subnet-len", type=int, default=24, show_default=True, help="Per-host subnet length (first host).")
@click.option("--backend", type=click.Choice(["vxlan", "host-gw", "ovs-gre", "ovs-vxlan", "auto"]), default="vxlan",
              show_default=True, help="Data plane (first host).")
@click.option("--voters", type=click.IntRange(1, 7), default=3, show_default=True,
              help="etcd voting members (first host): later hosts are clients of the voters.")
@click.option("--ttl", type=click.IntRange(2, 3600), default=30, show_default=True,
              help="Host lease TTL in seconds (first host).")
@click.option("--dns-domain", default="crossnet.local", show_default=True,
              help="Containers' DNS names are NAME.<this domain> (first host; docs/dns.md).")
@click.option("--encrypt", is_flag=True,
              help="With --backend auto: every peer over WireGuard (first host; docs/transport.md).")
@network_options
@click.option("--datapath", default="kernel", show_default=True,
              help="kernel (container bridge) or ebpf (routed container veths; first host; docs/datapath.md).")
@click.option("--foreground", is_flag=True, help="Run the supervisor in the foreground (systemd, containers).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="The supervisor's and its agent's log: text (default) or json, one object per line "
                   "(docs/operations.md \"Log fields\").")
@click.pass_context
def launch(ctx, addr, token, ca_pin, name, iface, address, network, subnet_len, backend, voters, ttl,
           dns_domain, encrypt, network_names, network_cidrs, networks_file, datapath, foreground, log_format) -> None:
    """Create a mesh (first host) or join one: `crossnet launch --token T ADDR`.

    Starts an etcd member (voters) or uses the voters (clients), the join endpoint and
    the agent, supervised by one `crossnet launch --foreground` process; returns once
    this host is programmed and prints the command the next hosts run. An interrupted
    launch or join is completed by the same command again.
    """
    from crossnet.errors import ConfigError
    from crossnet.mesh import launch as ml

    state_dir = _state(ctx)
    if log_format:  # the supervisor reads it, also when started detached (crossnet.logjson.env_format)
        import os

        from crossnet.logjson import ENV

        os.environ[ENV] = log_format
    paths = ml.Paths(__import__("pathlib").Path(state_dir))
    from crossnet.cli.agent import named_networks

    nets = named_networks(network_names, network_cidrs, networks_file).get("networks", [])
    if nets and (token or addr or paths.launch_json.exists()):
        raise ConfigError("--network-name: only when creating a mesh (the first host); joining or restarting hosts "
                          "take the networks from the store (change them with `crossnet etcd init --force`)")
    if datapath != "kernel" and (token or addr or paths.launch_json.exists()):
        raise ConfigError("--datapath: only when creating a mesh (the first host); joining or restarting hosts "
                          "follow the mesh's setting")
    if encrypt and (token or addr or paths.launch_json.exists()):
        raise ConfigError("--encrypt: only when creating a mesh (the first host); joining or restarting hosts "
                          "follow the mesh's setting")
    ml.check_encrypt(backend, encrypt)
    pid = paths.running_pid()
    if foreground and paths.launch_json.exists() and pid is None and not (token or addr):
        raise SystemExit(ml.run_foreground(state_dir))  # the detached supervisor, or systemd's
    if pid is not None:
        st = paths.load()
        click.echo(f"crossnet is already running on this host ({st['name']}, {st['address']}, {st['role']}, "
                   f"pid {pid}); nothing changed")
        return
    if paths.launch_json.exists():
        joining = paths.load().get("role") == ml.JOINING
        if (token or addr) and not joining:  # a join killed half-way is completed
            raise ConfigError("--token: this host already belongs to a mesh; `crossnet launch` alone restarts it "
                              "(`crossnet stop --release` leaves it)")
        ml.launch_again(state_dir, spawn=not foreground)
        if foreground:
            raise SystemExit(ml.run_foreground(state_dir))
        st = paths.load()
        click.echo(f"{st['name']} ({st['address']}) {'joined' if joining else 'is back in'} the mesh as a "
                   f"{st['role']}; `crossnet token create` makes a join token")
        return
    if bool(token) != bool(addr):
        raise ConfigError("--token: joining needs both --token TOKEN and the ADDR of a running host")
    from crossnet.mesh.join import parse_server
    from crossnet.mesh.state import launch_lock
    from crossnet.mesh.token import join_command, parse_join_token

    host_name = name or socket.gethostname()
    if token:
        jt = parse_join_token(token, ca_pin)
        server = parse_server(addr)
        ifname, ip = ml.detect_underlay(iface, address)
        with launch_lock(state_dir):
            complete_half_made(paths.mesh.root, joining=True)
            role = ml.launch_join(state_dir, f"{server[0]}:{server[1]}", jt, host_name, ifname, ip,
                                  spawn=not foreground)
        if foreground:
            click.echo(f"{host_name} ({ip}) joins the mesh as a {role}", err=True)
            raise SystemExit(ml.run_foreground(state_dir))
        click.echo(f"{host_name} ({ip}) joined the mesh as a {role}; other hosts join with:")
        click.echo(f"  {join_command(jt, ip)}")
        return
    ifname, ip = ml.detect_underlay(iface, address)
    with launch_lock(state_dir):
        complete_half_made(paths.mesh.root, joining=False)
        jt = ml.launch_first(state_dir, host_name, ifname, ip, network, subnet_len, backend, voters, ttl,
                             spawn=not foreground, dns_domain=dns_domain, encrypt=encrypt, networks=nets,
                             datapath=datapath)
    if jt is None:
        raise SystemExit(ml.run_foreground(state_dir))
    click.echo(f"mesh created on {host_name} ({ip}); on every other host run:")
    click.echo(f"  {join_command(jt, ip)}")


def complete_half_made(root, joining: bool) -> None:
    """A first launch or join killed before launch.json (no supervisor runs: the caller
    holds launch_lock) is run again: the state it left is removed when crossnet made all
    of it (crossnet.mesh.state.half_made) and it was the same kind of launch; else one line,
    nothing removed. A half-joined host never becomes the first host of a new mesh."""
    import logging

    from crossnet.errors import ConfigError
    from crossnet.mesh.state import FIRST, JOIN, half_made, remove_half_made

    found = half_made(root)
    if found.why is not None:
        raise ConfigError(f"--state-dir: {root} holds a half-made mesh state; remove it first "
                          f"(nothing removed: {found.why})")
    if found.kind == FIRST and joining:
        raise ConfigError(f"--token: {root} holds the half-made state of an interrupted first launch (a new mesh's "
                          f"CA); `crossnet launch` alone completes it, or remove {root} to join instead")
    if found.kind == JOIN and not joining:
        raise ConfigError(f"--token: {root} holds the half-made state of an interrupted join; run the join command "
                          f"again to complete it (`crossnet launch --token TOKEN ADDR`)")
    if found.kind is not None:
        logging.getLogger("crossnet.mesh").warning("removing the half-made mesh state of an interrupted launch (%s)",
                                                   root)
        remove_half_made(found)


@click.command("stop")
@click.option("--release", is_flag=True, help="Leave the mesh: give the subnet back, reset this host, forget it.")
@click.pass_context
def stop(ctx, release) -> None:
    """Stop crossnet on this host (the data plane stays unless --release)."""
    from crossnet.mesh import launch as ml

    if ml.stop(_state(ctx), release):
        click.echo("stopped" + (" and left the mesh" if release else " (data plane left in place)"))
    else:
        click.echo("crossnet launch is not running on this host")


@click.command("forget")
@click.argument("host")
@click.pass_context
def forget(ctx, host) -> None:
    """Remove a host that is gone for good (its member, subnet, routes on every peer).

    HOST is its name, or its underlay address: a joiner killed before it wrote its first
    record leaves an etcd member with no name (a learner: no vote, but a voter's slot),
    found by the address its join reserved for 5 minutes, later by `forget ADDRESS` (the
    voters' supervisors remove it themselves after 5 minutes)."""
    from crossnet.mesh import launch as ml

    done = ml.forget(_state(ctx), host)
    click.echo(f"forgot {host}: removed {', '.join(done)}")


@click.group("token")
def token_group() -> None:
    """Join tokens of this host's mesh."""


@token_group.command("create")
@click.option("--ttl", default="24h", show_default=True, help="Validity: 90s, 30m, 24h, 7d.")
@click.option("--description", default="", help="A note shown by `token list`.")
@click.pass_context
def token_create(ctx, ttl, description) -> None:
    from crossnet.mesh import launch as ml
    from crossnet.mesh.token import JoinToken, join_command, parse_ttl

    seconds = parse_ttl(ttl)
    state_dir = _state(ctx)
    st = ml.Paths(__import__("pathlib").Path(state_dir)).load()
    ca = ml.Paths(__import__("pathlib").Path(state_dir)).mesh.load_ca(need_key=False)
    tok = ml.token_store(state_dir).create(seconds, description)
    click.echo(join_command(JoinToken(tok, ca.pin), st["address"]))


@token_group.command("list")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for scripts (docs/json.md).")
@click.pass_context
def token_list(ctx, output) -> None:
    from crossnet.mesh import launch as ml

    rows = ml.token_store(_state(ctx)).list()
    if output == "json":
        from crossnet.cli.contract import emit

        emit({"tokens": rows})
        return
    for r in rows:
        click.echo(f"{r['id']}  {r['state']:8} expires {r['expires']}  {r['description']}")


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx, token_id) -> None:
    from crossnet.mesh import launch as ml

    changed = ml.token_store(_state(ctx)).revoke(token_id)
    click.echo(f"token {token_id} {'revoked' if changed else 'was already revoked'}")


def register(main: click.Group) -> None:
    for cmd in (launch, stop, forget, token_group):
        main.add_command(cmd)
