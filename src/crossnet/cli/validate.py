"""`crossnet validate -f FILE`: check a cluster file offline (crossnet.validate)."""

from __future__ import annotations

import sys

import click


@click.command("validate")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False),
              help="Cluster file (YAML) to check; nothing else is read or changed.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for scripts (docs/json.md).")
def validate_cmd(path: str, output: str) -> None:
    """Check a cluster file offline — no kernel, no Open vSwitch, no peers: every field
    and rule `apply` checks, the keys the backend needs from every host, and the
    container MTU each host would get (usable, and the same on every host).
    Exit 0 when the file is good, 2 when it is not."""
    from crossnet.validate import validate_file

    report = validate_file(path)
    if output == "json":
        from crossnet.cli.contract import emit

        emit(report)
    else:
        for p in report["problems"]:
            click.echo(f"{path}: {p['field']}: {p['message']}")
        for w in report["warnings"]:
            click.echo(f"{path}: warning: {w['field']}: {w['message']}")
        if report["ok"]:
            mtus = sorted(set(report["container_mtu"].values()))
            click.echo(f"{path}: ok: cluster {report['cluster']}, backend {report['backend']}, "
                       f"{len(report['hosts'])} host(s), container mtu {'/'.join(map(str, mtus)) or '?'}")
    if not report["ok"]:
        n = len(report["problems"])
        click.echo(f"crossnet: error: {path}: {n} problem{'s' if n != 1 else ''} (first: "
                   f"{report['problems'][0]['field']}: {report['problems'][0]['message']})", err=True)
        sys.exit(2)


def register(main: click.Group) -> None:
    main.add_command(validate_cmd)
