"""`crossnet keygen`: this host's WireGuard key (backend wireguard)."""

from __future__ import annotations

import click


@click.command()
@click.option("--rotate", is_flag=True,
              help="Replace the key with a new one (a running agent republishes it; with a cluster file, "
                   "put the new key in hosts[].wireguard_key and apply on every host).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for scripts.")
@click.pass_context
def keygen(ctx: click.Context, rotate: bool, output: str) -> None:
    """Create this host's WireGuard private key if it has none (mode 0600 in the state
    dir; it never leaves the host) and print its PUBLIC key, for hosts[].wireguard_key."""
    from crossnet.wg import keys

    public, created = keys.ensure_key(ctx.obj["state_dir"], rotate=rotate)
    if output == "json":
        from crossnet.cli.contract import emit

        emit({"public_key": public, "created": created, "rotated": rotate})
    else:
        click.echo(public)


def register(main: click.Group) -> None:
    main.add_command(keygen)
