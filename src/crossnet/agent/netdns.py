"""The agent's DNS of the named networks (docs/dns.md, "Named networks"; docs/networks.md).

The agent publishes every container of this host in the store, a named network's with
its ``network`` (:func:`local_containers`; crossnet.store.clean_containers validates the
field on both ends). Its top-level DNS (crossnet.dns.service.start_for_agent) answers
for the containers without one; :func:`sync` keeps one more server per named network
this host holds (``agent.nets``) on that network's gateway, answering only for that
network's containers of every host (crossnet.dns.service.of_network): a name of network B is
NXDOMAIN from network A. A network added at run time (crossnet.agent.netfollow) gets
its server at the next sync, one removed loses it. Each server writes ``dns.json`` in
its network's state dir, so the CNI result's ``dns`` and `attach --network`'s
resolv.conf (crossnet.dns.resolv) name that network's gateway.

Functions of the running `crossnet.agent.core.Agent` (its main thread).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from crossnet.state import StateDir

Agent = Any  # crossnet.agent.core.Agent (not imported: it imports this module)

log = logging.getLogger("crossnet.dns")


def local_containers(state: StateDir, read: Callable[[StateDir], list[dict]] | None = None) -> list[dict[str, str]]:
    """This host's live containers, the top-level network's and every named network's
    (``network``: its name), as published (crossnet.store.clean_containers). ``read``: a
    state dir's container list (default crossnet.containers.list_containers; the agent
    passes its per-state-dir cache, crossnet.localcache)."""
    from crossnet import containers, networks
    from crossnet.store import clean_containers

    read = read or containers.list_containers
    items = [c for c in read(state) if c.get("state") != "stale"]
    for name in networks.recorded(state):
        items += [{**c, "network": name} for c in read(networks.state_of(state, name)) if c.get("state") != "stale"]
    return clean_containers(items)


def _start(agent: Agent, name: str, ctx: Any) -> Any:
    from crossnet import networks
    from crossnet.dns.service import DnsService, listen_addresses, of_network

    store = agent.store
    svc = DnsService(networks.state_of(agent.state, name), agent.cfg.dns_domain, [ctx.network],
                     listen_addresses(ctx), lambda: of_network(agent.cluster_containers()["hosts"], name),
                     port=agent.dns.server.port, revision=lambda: store.containers_at()[1],
                     watch=store.watch_containers)
    try:
        svc.start()
    except BlockingIOError:
        log.error("dns: network %s: another process serves its DNS (crossnet dns serve?); the agent does not", name)
        return None
    except OSError as exc:
        log.error("dns: network %s: cannot listen on %s: %s; retrying at the next sync", name,
                  ", ".join(svc.listen), exc.strerror or exc)
        return None
    except Exception:  # DNS never takes the agent (the data plane) down with it
        log.exception("dns: network %s: not started; retrying at the next sync", name)
        return None
    return svc


def sync(agent: Agent) -> None:
    """One server per named network of ``agent.nets`` (started, or stopped when the
    network is gone or its gateway moved); only when the agent serves DNS with a store
    that carries containers (without one the peers' containers are unknown: `crossnet
    dns serve` serves this host's)."""
    servers: dict[str, Any] = agent.net_dns
    wanted = {}
    if agent.dns is not None and agent.dns.scope == "cluster":
        wanted = {name: ctx for name, ctx in agent.nets.items()}
    for name in sorted(servers):
        svc = servers[name]
        ctx = wanted.get(name)
        if ctx is None or [str(ctx.gateway)] != svc.listen or [ctx.network] != svc.networks:
            svc.stop()
            del servers[name]
            log.info("dns: network %s: stopped", name)
    for name, ctx in sorted(wanted.items()):
        if name not in servers:
            svc = _start(agent, name, ctx)
            if svc is not None:
                servers[name] = svc


def stop_all(agent: Agent) -> None:
    for name in sorted(agent.net_dns):
        agent.net_dns.pop(name).stop()


__all__ = ["local_containers", "stop_all", "sync"]
