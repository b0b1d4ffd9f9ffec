"""`crossnet expose` / `crossnet hide`: this host's address in its container network
(crossnet.expose, docs/expose.md)."""

from __future__ import annotations

import os

import click

from crossnet.errors import CrossnetError
from crossnet.state import StateDir

OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="text for people, json for scripts.")
NETWORK = click.option("--network", "network", metavar="NAME",
                       help="The network (the cluster's name; default: this host's only network).")
DRY_RUN = click.option("--dry-run", is_flag=True, help="Print the change as nft commands; change nothing.")


def _run(ctx: click.Context, network: str | None, on: bool, dry_run: bool, output: str) -> None:
    from crossnet.expose.ops import set_exposed

    state = StateDir(ctx.obj["state_dir"])
    result = set_exposed(state, network, on, dry_run=dry_run)
    if not dry_run:
        result.agent = _poke_agent(state)
    if output == "json":
        from crossnet.cli.contract import emit

        emit(result.to_json())
        return
    verb = "exposed: this host is" if on else "hidden: this host no longer uses"
    head = f"network {result.network} {verb} {result.address}"
    if dry_run:
        click.echo(f"# {head} (dry run)")
        if not result.changes:
            click.echo("# nothing to do")
        for ch in result.changes:
            r = ch.resource
            click.echo(f"nft delete table {r.family} {r.name}" if ch.action == "remove" and r.kind == "nft-table"
                       else ("# remove: " if ch.action == "remove" else "") + r.describe())
        return
    click.echo(head)
    for ch in result.changes:
        click.echo(f"  {ch}")
    if not result.changes:
        click.echo("up to date: nothing changed")


def _poke_agent(state: StateDir) -> bool:
    """An agent serving this state dir re-syncs now (its record then lists what expose
    changed); False when none runs."""
    if not os.path.exists(os.path.join(state.root, "agent.sock")):
        return False
    from crossnet.agent.api import call

    try:
        call(state.root, "POST", "/v1/resync", {}, timeout=5)
    except CrossnetError:
        return False  # a stale socket: no agent
    return True


@click.command()
@NETWORK
@DRY_RUN
@OUTPUT
@click.pass_context
def expose(ctx: click.Context, network: str | None, dry_run: bool, output: str) -> None:
    """Give this host an address in the network (its container gateway) so it reaches
    every container on every host from that address, and they reach it (docs/expose.md).

    Kept by `apply` and the agent until `crossnet hide` (or `reset`); idempotent.
    """
    _run(ctx, network, True, dry_run, output)


@click.command()
@NETWORK
@DRY_RUN
@OUTPUT
@click.pass_context
def hide(ctx: click.Context, network: str | None, dry_run: bool, output: str) -> None:
    """Undo `crossnet expose`: the host's traffic into the network leaves from the
    address routing picks again (docs/expose.md). Idempotent."""
    _run(ctx, network, False, dry_run, output)


def register(main: click.Group) -> None:
    for cmd in (expose, hide):
        main.add_command(cmd)
