"""`crossnet dns serve`: this host's container DNS when no agent runs (docs/dns.md)."""

from __future__ import annotations

import click


@click.group("dns")
def dns_group() -> None:
    """Container names (NAME.crossnet.local) — the agent serves them itself; see docs/dns.md."""


@dns_group.command("serve")
@click.option("--domain", help="DNS domain (default: the cluster file's dns_domain with -f, else the one the "
                                "agent last applied, else crossnet.local).")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False), help="Cluster file (for its dns_domain).")
@click.option("--wait", is_flag=True, help="Wait until this host is configured (apply) instead of failing.")
@click.option("--port", type=click.IntRange(1, 65535), default=53, show_default=True, help="UDP and TCP port.")
@click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True, type=click.Path(dir_okay=False),
              help="Where the resolvers other names are forwarded to are listed.")
@click.pass_context
def serve(ctx: click.Context, domain: str | None, path: str | None, wait: bool, port: int, resolv_conf: str) -> None:
    """Answer DNS for this host's own containers on its container gateway address (bridge
    backend: its LAN address) until SIGTERM; other names go to the host's resolvers.
    With no store there is no channel between hosts: other hosts' containers are not known
    (`crossnet status` says so)."""
    import logging
    import signal
    import threading

    from crossnet.dns import domain_problem, normalize
    from crossnet.dns.service import serve as run
    from crossnet.errors import ConfigError
    from crossnet.state import StateDir

    if domain is not None:
        why = domain_problem(domain)
        if why:
            raise ConfigError(f"--domain: {domain[:60]!r}: {why}")
        domain = normalize(domain)
    elif path is not None:
        from crossnet.config import load_cluster

        domain = load_cluster(path).dns_domain
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(StateDir(ctx.obj["state_dir"]), domain, port, resolv_conf, stop, wait=wait)


def register(main: click.Group) -> None:
    main.add_command(dns_group)
