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
    @click.option("--name", default=DEFAULT_NETWORK_NAME, show_default=True,
                  help="Network name (podman run --network NAME).")
    @click.option("--portmap/--no-portmap", default=True, show_default=True,
                  help="Chain the reference portmap plugin (podman run -p).")
    @click.option("--log-file", default=None, help="Make the plugin append one JSON line per call to this file.")
    @click.option("--native/--no-native", default=True, show_default=True,
                  help="Compile the native client (needs cc); --no-native installs the Python client only.")
    @click.option("-o", "--output", default="text", show_default=True, type=click.Choice(["text", "json"]),
                  help="text for people, json for scripts (docs/json.md).")
    @click.pass_context
    def install_cmd(ctx: click.Context, conf_dir: str, bin_dir: str, name: str, portmap: bool,
                    log_file: str | None, native: bool, output: str) -> None:
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
        res = install(ctx.obj["state_dir"], conf_dir=conf_dir, bin_dir=bin_dir, name=name,
                      portmap=portmap, log_file=log_file, native=native)
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
        click.echo(f"use it: podman run --network {res['network']} ...")

    @main.command("docker-config")
    @click.option("--write", "write", is_flag=False, flag_value=DEFAULT_DAEMON_JSON, default=None,
                  metavar="[PATH]",
                  help=f"Merge into daemon.json instead of printing (default path {DEFAULT_DAEMON_JSON}).")
    @click.pass_context
    def docker_config_cmd(ctx: click.Context, write: str | None) -> None:
        """Print (or write) Docker's daemon.json for this host's crossnet bridge.

        Replaces the tutorial's hand-edited /etc/default/docker line
        (`DOCKER_OPTS="-b=br0 --fixed-cidr=... --mtu=..."`). Restart Docker afterwards.
        Docker's IPAM then hands out this host's subnet: do not also attach containers
        with `crossnet attach`/crossnet-cni on the same host.
        """
        from crossnet.cni.install import docker_daemon_config, merge_daemon_json
        from crossnet.errors import CrossnetError
        from crossnet.state import StateDir

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
        merge_daemon_json(write, cfg)
        click.echo(f"wrote {write} (bridge {cfg['bridge']}, fixed-cidr {cfg['fixed-cidr']}, mtu {cfg['mtu']}); "
                   "restart Docker to use it", err=True)
