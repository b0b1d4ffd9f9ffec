"""The agent following the named networks of the store's config (docs/networks.md,
"Under a store"): the config key is watched; a network added is leased and programmed
on this host, one removed is released and removed -- kept while containers are still
attached to it here -- without touching the others. Only the networks are followed:
any other change of the config is reported (health ``config``) and needs a restart.

Functions of the running `crossnet.agent.core.Agent` (its main thread, but
:func:`watch_loop`, a thread of its own that only queues ``("config",)``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crossnet.errors import ConfigError, CrossnetError
from crossnet.store import StoreError

if TYPE_CHECKING:
    from crossnet.netmodel import NetworkConfig

Agent = Any  # crossnet.agent.core.Agent (not imported: it imports this module)

log = logging.getLogger("crossnet.agent")


def effective(agent: Agent, cfg: NetworkConfig) -> NetworkConfig:
    """``cfg`` plus the named networks it no longer names that still have containers
    here (kept until they are detached); StoreError when a network contains this host's
    address or the kept ones clash with the config's (the caller keeps what it has)."""
    from crossnet import netstore

    assert agent.address is not None
    for net in cfg.networks:
        if agent.address in net.network:
            raise StoreError(f"networks: network {net.name} {net.network} contains this host's underlay "
                             f"address {agent.address}")
    kept = netstore.kept(cfg, agent.state)
    try:
        eff = netstore.effective(cfg, kept)
    except ConfigError as exc:
        raise StoreError(f"the store's networks clash with {', '.join(n.name for n in kept)}, kept here for "
                         f"their attached containers: {exc}") from None
    except CrossnetError as exc:  # the validating helper failed (crossnet.netconfig): retried at the next resync
        raise StoreError(f"the network config with the kept networks: {exc}") from None
    names = [n.name for n in kept]
    if names != agent.kept_networks:
        for name in names:
            log.warning("network %s is gone from the store but containers are attached to it here: kept until "
                        "they are detached", name)
        agent.kept_networks = names
    return eff


def follow(agent: Agent, new: NetworkConfig) -> bool:
    """Take the networks of ``new`` (the settings the agent started with stay). Returns
    whether this host's networks changed (the caller re-syncs); a failure is reported
    and retried at the next resync (``agent.config_pending``)."""
    from crossnet import netconfig

    assert agent.cfg and agent.store_cfg and agent.lease

    def plain(c: NetworkConfig) -> dict:
        # the settings' values, not their JSON: to_json writes WireGuard's and auto's settings
        # only when they were given, so the same settings (e.g. `etcd init --force` writing
        # WireGuard's defaults) would read as a change
        return c.model_dump(exclude={"networks"})

    beyond = plain(new) != plain(agent.store_cfg)
    data = {k: getattr(agent.store_cfg, k) for k in type(agent.store_cfg).model_fields}
    data["networks"] = new.networks
    try:
        # the settings this agent started with, the new networks (the config it follows
        # again at a resync is that already: no second validation)
        followed = agent.store_cfg if new is agent.store_cfg else netconfig.build(**data)
        eff = effective(agent, followed)
    except CrossnetError as exc:  # a bad config, a clash, or the validating helper failed
        agent._report("config", str(exc))
        agent.config_pending = new  # retried at the next resync
        return False
    if eff.to_json() == agent.cfg.to_json():
        agent.store_cfg, agent.config_pending = followed, None
        agent._report("config", _beyond() if beyond else None)
        return False
    before = agent.cfg
    agent.cfg = eff
    try:
        agent._acquire(agent.lease.subnet, agent.lease.lease_id)  # lease (or release) the networks' subnets
    except StoreError as exc:
        agent.cfg, agent.config_pending = before, new
        agent._report("config", f"leasing the networks' subnets: {exc}; retrying at the next resync")
        return False
    agent.store_cfg, agent.config_pending = followed, None
    agent._report("config", _beyond() if beyond else None)
    log.info("networks: %s -> %s", ", ".join(n.name for n in before.networks) or "-",
             ", ".join(n.name for n in eff.networks) or "-")
    return True


def _beyond() -> str:
    return ("the store's network config changed beyond its networks: only those are followed; restart the "
            "agents for the rest")


def changed(agent: Agent) -> None:
    """The config watch saw a change: read it, follow it, re-sync when networks changed."""
    try:
        new = agent.store.get_config()
    except StoreError as exc:
        agent._report("config", f"reading the network config: {exc}")
        return
    if follow(agent, new):
        agent._resync()


def watch_loop(agent: Agent) -> None:
    """Watch the store's network config; each change is queued ``("config",)``."""
    since = agent.revision + 1
    delay = agent.opts.backoff_initial
    while not agent.stop.is_set():
        try:
            for rev in agent.store.watch_config(since, agent.stop):
                since = max(since, rev + 1)
                agent.queue.put(("config",))
            delay = agent.opts.backoff_initial
        except StoreError:
            if agent.stop.wait(delay):
                return
            delay = min(delay * 2, agent.opts.backoff_max)
            agent.queue.put(("config",))  # re-read after a reconnect: a change may have been missed
            since = 0  # from now on (the revision may be compacted)
        except Exception:  # never let the watcher die silently
            log.exception("config watch: unexpected error")
            if agent.stop.wait(delay):
                return
