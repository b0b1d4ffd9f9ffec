"""`crossnet systemd install|uninstall`: the units of crossnet.units."""

from __future__ import annotations

import shutil

import click

from crossnet import units

_WHICH = [
    click.option("--agent", "agent", is_flag=True, help="crossnet-agent.service (`crossnet agent`, Type=notify)."),
    click.option("--apply", "apply_", is_flag=True, help="crossnet-apply.service (oneshot `crossnet apply -f` at boot)."),
    click.option("--launch", "launch", is_flag=True, help="crossnet-launch.service (the mesh: `crossnet launch --foreground`)."),
    click.option("--cni", "cni", is_flag=True,
                 help="crossnet-cni-helper.socket/.service (the CNI plugin's warm helper, socket-activated)."),
    click.option("--unit-dir", default=units.SYSTEM_UNIT_DIR, show_default=True, type=click.Path(file_okay=False),
                 help="Where unit files go (systemctl is run only for the default)."),
    click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing."),
]


def _which_options(fn):
    for opt in reversed(_WHICH):
        fn = opt(fn)
    return fn


def _chosen(agent: bool, apply_: bool, launch: bool, cni: bool, default: list[str]) -> list[str]:
    """The units chosen by the flags (else default); --cni is the socket and its service."""
    chosen = [w for w, on in (("agent", agent), ("apply", apply_), ("launch", launch), ("cni", cni)) if on] or default
    return [u for w in chosen for u in (("cni", "cni-service") if w == "cni" else (w,))]


@click.group("systemd")
def systemd_group() -> None:
    """Install or remove crossnet's systemd units (docs/production.md)."""


@systemd_group.command("install")
@_which_options
@click.option("--exec", "exe", help="The crossnet executable the units run (default: the one on PATH).")
@click.option("--cluster-file", default=units.UnitOptions.cluster_file, show_default=True,
              help="Static cluster file crossnet-apply.service applies.")
@click.option("--env-file", default=units.UnitOptions.env_file, show_default=True,
              help="Options of crossnet-agent.service (CROSSNET_ETCD=..., CROSSNET_AGENT_ARGS=...).")
@click.pass_context
def systemd_install(ctx, agent, apply_, launch, cni, unit_dir, dry_run, exe, cluster_file, env_file) -> None:
    """Write the chosen units (default: --agent) and reload systemd."""
    which = _chosen(agent, apply_, launch, cni, ["agent"])
    if exe is None:
        exe = shutil.which("crossnet") or units.UnitOptions.exe
    opts = units.UnitOptions(exe=exe, state_dir=ctx.obj["state_dir"], cluster_file=cluster_file, env_file=env_file)
    text = units.render(which, opts)
    reload = unit_dir.rstrip("/") == units.SYSTEM_UNIT_DIR
    for line in units.install(text, unit_dir, reload=reload, dry_run=dry_run):
        click.echo(line)
    if not dry_run and reload:
        click.echo(units.next_steps(list(text)), err=True)


@systemd_group.command("uninstall")
@_which_options
def systemd_uninstall(agent, apply_, launch, cni, unit_dir, dry_run) -> None:
    """Stop, disable and remove crossnet's units (default: all of them)."""
    which = _chosen(agent, apply_, launch, cni, ["agent", "apply", "launch", "cni"])
    reload = unit_dir.rstrip("/") == units.SYSTEM_UNIT_DIR
    for line in units.uninstall([units.UNITS[w] for w in which], unit_dir, systemd=reload, dry_run=dry_run):
        click.echo(line)


def register(main: click.Group) -> None:
    main.add_command(systemd_group)
