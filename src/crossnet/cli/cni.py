"""`crossnet cni install` and `crossnet docker-config`: hand this host's crossnet
network to container runtimes (CNI: podman, containerd, Kubernetes; Docker: daemon.json)."""

from __future__ import annotations

import json

import click

from crossnet.errors import ConfigError

OUTPUTS = ("text", "json")


def _output(value: str) -> str:
    if value not in OUTPUTS:
        raise ConfigError(f"-o/--output: unknown format {value!r} (choose from {', '.join(OUTPUTS)})")
    return value


def register(main: click.Group) -> None:
    from crossnet.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_DAEMON_JSON, DEFAULT_NETWORK_NAME

    @main.group("cni")
    def cni() -> None:
        """CNI plugin (crossnet-cni) for podman, containerd, Kubernetes."""

    @cni.command("install")
    @click.option("--conf-dir", default=DEFAULT_CONF_DIR, show_default=True,
                  help="Where the runtime reads network configuration lists (podman: network_config_dir).")
    @click.option("--bin-dir", default=DEFAULT_BIN_DIR, show_default=True,
                  help="Where the runtime looks for CNI plugins (podman: cni_plugin_dirs).")
    @click.option("--name", default=None,
                  help=f"Network name (podman run --network NAME) [default: --network's, else {DEFAULT_NETWORK_NAME}].")
    @click.option("--network", "network", default=None, metavar="NAME",
                  help="A named network of the cluster file (`networks:`, docs/networks.md): one conflist per network.")
    @click.option("--portmap/--no-portmap", default=True, show_default=True,
                  help="Chain the reference portmap plugin (podman run -p).")
    @click.option("--log-file", default=None, help="Make the plugin append one JSON line per call to this file.")
    @click.option("--native/--no-native", default=True, show_default=True,
                  help="Compile the native client (needs cc); --no-native installs the Python client only.")
    @click.option("--helper", type=click.Choice(["external", "spawn"]), default="external", show_default=True,
                  help="Who starts the warm helper: external (`crossnet systemd install --cni`, or the agent) "
                       "or spawn (the plugin starts it itself: hosts without systemd).")
    @click.option("-o", "--output", default="text", show_default=True, type=click.Choice(["text", "json"]),
                  help="text for people, json for scripts (docs/json.md).")
    @click.pass_context
    def install_cmd(ctx: click.Context, conf_dir: str, bin_dir: str, name: str | None, network: str | None,
                    portmap: bool, log_file: str | None, native: bool, helper: str, output: str) -> None:
        """Write this host's conflist and put crossnet-cni where the runtime finds it.

        \b
        Needs `crossnet apply` first (the plugin hands out addresses of this host's
        subnet, from the same IPAM as `crossnet attach`). Then:
          podman run --network crossnet ...

        crossnet-cni is a small native client compiled from C (forwards calls to the
        warm helper or the agent) when a C compiler (cc) works, else the Python client;
        crossnet-cni-py, the Python client, is installed next to it either way.
        """
        from crossnet.cni.install import install

        output = _output(output)
        state_dir = ctx.obj["state_dir"]
        if network is not None:  # the network's own state dir: its subnet, bridge, IPAM
            from crossnet import networks
            from crossnet.state import StateDir

            state_dir = str(networks.check_known(StateDir(state_dir), network).root)
        name = name or network or DEFAULT_NETWORK_NAME
        res = install(state_dir, conf_dir=conf_dir, bin_dir=bin_dir, name=name,
                      portmap=portmap, log_file=log_file, native=native, helper=helper)
        if output == "json":
            from crossnet.cli.contract import emit

            emit(res)
            return
        click.echo(f"network {res['network']}: host {res['host']}, subnet {res['subnet']}")
        click.echo(f"  wrote {res['conflist']}")
        if res["client"] == "native":
            click.echo(f"  wrote {res['plugin']} (native client, falls back to {res['python_client']})")
        else:
            click.echo(f"  wrote {res['plugin']} (Python client: {res['client_note']})")
        click.echo(f"  wrote {res['python_client']}")
        for w in res["warnings"]:
            click.echo(f"warning: {w}", err=True)
        if helper == "external":
            click.echo("  warm helper: `crossnet systemd install --cni` (or a running agent) serves the calls")
        click.echo(f"use it: podman run --network {res['network']} ...")

    @cni.command("serve")
    @click.option("--idle", default=300.0, show_default=True, type=float,
                  help="Exit after this many seconds without a call (0: never).")
    @click.pass_context
    def serve_cmd(ctx: click.Context, idle: float) -> None:
        """Run the CNI plugin's warm helper on <state-dir>/cni.sock in the foreground.

        Started by crossnet-cni-helper.socket (`crossnet systemd install --cni`), which
        hands over the listening socket (LISTEN_FDS); by hand it listens itself.
        """
        import os

        from crossnet.cni.server import serve
        from crossnet.state import StateDir

        state = StateDir(ctx.obj["state_dir"])
        if not state.applied_path.exists():
            raise ConfigError(f"--state-dir: this host is not configured (no {state.applied_path}); "
                              "run `crossnet apply -f CLUSTER` first")
        fd = None
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
            fd = 3  # SD_LISTEN_FDS_START
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        serve(str(state.root), idle=idle, listen_fd=fd)

    @main.command("docker-config")
    @click.option("--write", "write", is_flag=False, flag_value=DEFAULT_DAEMON_JSON, default=None,
                  metavar="[PATH]",
                  help=f"Merge into daemon.json instead of printing (default path {DEFAULT_DAEMON_JSON}); "
                       "prints the change as a diff and keeps the old file as PATH.crossnet.bak.")
    @click.option("--force", is_flag=True,
                  help="--write: replace values daemon.json already sets to something else (e.g. an mtu).")
    @click.pass_context
    def docker_config_cmd(ctx: click.Context, write: str | None, force: bool) -> None:
        """Print (or write) Docker's daemon.json for this host's crossnet bridge.

        Replaces the tutorial's hand-edited /etc/default/docker line
        (`DOCKER_OPTS="-b=br0 --fixed-cidr=... --mtu=..."`). Restart Docker afterwards.
        Docker's IPAM then hands out this host's subnet: do not also attach containers
        with `crossnet attach`/crossnet-cni on the same host. With --write, a value the
        file already sets differently (say your own `mtu`) is not overwritten: the
        command names them and exits 2 unless --force.
        """
        from crossnet.cni.install import BACKUP_SUFFIX, docker_daemon_config, merge_daemon_json
        from crossnet.errors import CrossnetError
        from crossnet.state import StateDir

        if force and write is None:
            raise ConfigError("--force: only with --write")
        state = StateDir(ctx.obj["state_dir"])
        applied = state.load_applied()
        if not applied:
            raise CrossnetError(
                f"this host is not configured yet (no {state.applied_path}); run `crossnet apply -f CLUSTER` first"
            )
        context = applied["context"]
        if context.get("backend") not in ("bridge", "host-gw", "vxlan"):
            raise ConfigError(
                f"docker-config: backend {context.get('backend')!r} has no Linux bridge Docker can use "
                "(use bridge, host-gw or vxlan)"
            )
        cfg = docker_daemon_config(applied)
        if write is None:
            click.echo(json.dumps(cfg, indent=2))
            return
        change = merge_daemon_json(write, cfg, force=force)
        if not change.changed:
            click.echo(f"{write} is up to date (bridge {cfg['bridge']}, fixed-cidr {cfg['fixed-cidr']}, "
                       f"mtu {cfg['mtu']}); nothing written", err=True)
            return
        click.echo(change.diff(), nl=False)
        if change.conflicts:
            click.echo(f"replaced (--force): {change.conflict_text()}", err=True)
        backup = f"; the old file is {write}{BACKUP_SUFFIX}" if change.old_text is not None else ""
        click.echo(f"wrote {write} (bridge {cfg['bridge']}, fixed-cidr {cfg['fixed-cidr']}, mtu {cfg['mtu']}){backup}; "
                   "restart Docker to use it", err=True)

    @main.command("docker-plugin")
    @click.option("--socket", "socket_path", default=None, metavar="PATH",
                  help="Unix socket to serve on (default /run/docker/plugins/crossnet.sock: Docker's "
                       "legacy plugin discovery).")
    @click.option("--docker-host", default=None, metavar="unix:///PATH", envvar="DOCKER_HOST",
                  help="dockerd's API, to learn container names for `crossnet status` (env DOCKER_HOST; "
                       "default /var/run/docker.sock).")
    @click.option("--create-network/--no-create-network", default=True, show_default=True,
                  help="Create the Docker network (--network-name) with this host's subnet and gateway once "
                       "dockerd answers (retried in the background); an existing one is left alone.")
    @click.option("--network-name", default="crossnet", show_default=True, metavar="NAME",
                  help="Name of the Docker network --create-network makes.")
    @click.option("-v", "--verbose", is_flag=True, help="Log every request and its answer to stderr (errors always).")
    @click.pass_context
    def docker_plugin_cmd(ctx: click.Context, socket_path: str | None, docker_host: str | None,
                          create_network: bool, network_name: str, verbose: bool) -> None:
        """Serve Docker's remote network driver + IPAM driver `crossnet` (foreground).

        \b
        docker run --network crossnet ...
        The plugin creates the Docker network `crossnet` itself (--subnet/--gateway of
        this host); by hand: docker network create -d crossnet --ipam-driver crossnet NAME.
        Containers get addresses from this host's crossnet subnet (the IPAM `crossnet
        attach` and crossnet-cni use) and are listed by `crossnet status`. See docs/docker.md.
        """
        from crossnet.runtime.dockerplugin import DEFAULT_SOCKET, make_plugin, serve

        path = socket_path or DEFAULT_SOCKET
        if not path.startswith("/") or len(path.encode()) > 107 or "\0" in path:
            raise ConfigError(f"--socket: {path!r} must be an absolute path of at most 107 bytes")
        api = docker_host or "unix:///var/run/docker.sock"
        if not api.startswith("unix:///"):
            raise ConfigError(f"--docker-host: {api!r}: only unix:///PATH is supported")
        creator = None
        if create_network:
            from crossnet.runtime.dockernet import check_name

            check_name(network_name)
        plugin = make_plugin(ctx.obj["state_dir"], api[len("unix://"):])
        if create_network:
            from crossnet.runtime.dockernet import NetworkCreator
            from crossnet.runtime.engines import EngineClient

            creator = NetworkCreator(EngineClient(api[len("unix://"):], "docker"), network_name, plugin.subnet_gateway,
                                     lambda msg: click.echo(f"crossnet docker-plugin: {msg}", err=True))

        def ready() -> None:
            click.echo(f"crossnet docker-plugin: serving {path}", err=True)
            if creator is not None:  # dockerd calls back into this plugin: only once it serves
                creator.start()

        try:
            serve(plugin, path, ready=ready, verbose=verbose)
        finally:
            if creator is not None:
                creator.stop()

