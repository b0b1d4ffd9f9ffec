"""`crossnet uninstall`: remove what scripts/install added (crossnet.uninstall)."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    from crossnet.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
    from crossnet.units import SYSTEM_UNIT_DIR

    @main.command("uninstall")
    @click.option("--packages", is_flag=True,
                  help="Also remove the Debian packages scripts/install installed (apt-get remove).")
    @click.option("--force", is_flag=True,
                  help="Uninstall even though the state dir records a configured host (it stays programmed).")
    @click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
    @click.option("--unit-dir", default=SYSTEM_UNIT_DIR, show_default=True, type=click.Path(file_okay=False),
                  help="Where `crossnet systemd install` put the units.")
    @click.option("--cni-bin-dir", default=DEFAULT_BIN_DIR, show_default=True,
                  help="Where `crossnet cni install` put crossnet-cni.")
    @click.option("--cni-conf-dir", default=DEFAULT_CONF_DIR, show_default=True,
                  help="Where `crossnet cni install` put the conflist.")
    @click.pass_context
    def uninstall_cmd(ctx: click.Context, packages: bool, force: bool, dry_run: bool, unit_dir: str,
                      cni_bin_dir: str, cni_conf_dir: str) -> None:
        """Remove crossnet from this host: its units, CNI plugin, commands and virtual environment.

        \b
        Reads the manifest scripts/install wrote (<prefix>/share/crossnet/install.json).
        The state dir is kept (back it up or delete it yourself: docs/operations.md);
        a host that is still configured is refused: `crossnet reset` first.
        """
        from crossnet import uninstall

        doc = uninstall.load_manifest()
        lines, steps = uninstall.plan(doc, ctx.obj["state_dir"], unit_dir, cni_bin_dir, cni_conf_dir,
                                      packages=packages, force=force)
        for line in lines:
            click.echo(line, err=True)
        for line in uninstall.run(steps, unit_dir, dry_run=dry_run):
            click.echo(line)
        if not dry_run:
            import os

            kept = f" (state dir {ctx.obj['state_dir']} kept)" if os.path.isdir(ctx.obj["state_dir"]) else ""
            click.echo(f"crossnet uninstalled{kept}")

