"""Per-host lab services: extension hook for things a simulated host runs besides the
kernel topology (an OVS daemon pair, podman, an etcd member ...).

A service is registered once (at import of its module)::

    from crossnet.lab.services import HostService, register_service

    def start(plan, host): ...        # after topology, before `crossnet apply`
    def stop(plan, host): ...         # before namespaces are removed; idempotent

    register_service(HostService("ovs", start, stop, enabled=lambda plan: plan.backend == "ovs"))

and its module listed in SERVICE_MODULES (imported by `lab up` and `lab down`).
The manager records every started service (name + module) in the manifest *before*
starting it, so `lab down` after a crash still calls `stop` (then kills whatever is
left in the lab's namespaces anyway). Use ``crossnet.lab.netns.spawn(host.netns,
argv, log_path)`` to run a daemon in a host namespace; logs belong under
``<plan.lab_dir>/hosts/<host.name>/``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from crossnet.lab.topology import HostPlan, LabPlan

# modules that register services at import (imported by name: they import this module)
SERVICE_MODULES: list[str] = ["crossnet.lab.podman", "crossnet.lab.docker", "crossnet.lab.ovs", "crossnet.lab.etcd", "crossnet.lab.mesh",
                              "crossnet.lab.dns"]


def _always(_plan: LabPlan) -> bool:
    return True


@dataclass(frozen=True)
class HostService:
    name: str
    start: Callable[[LabPlan, HostPlan], None]
    stop: Callable[[LabPlan, HostPlan], None]
    enabled: Callable[[LabPlan], bool] = _always
    order: int = 100  # lower starts first, stops last
    # extra environment for every command run in a host namespace (crossnet apply/attach/
    # status, `lab exec`), e.g. OVS_RUNDIR of that host's private Open vSwitch
    env: Callable[[LabPlan, HostPlan], dict[str, str]] | None = None

    @property
    def module(self) -> str:
        return self.start.__module__


_REGISTRY: dict[str, HostService] = {}


def register_service(svc: HostService) -> HostService:
    _REGISTRY[svc.name] = svc
    return svc


def unregister_service(name: str) -> None:
    _REGISTRY.pop(name, None)


def load_service_modules() -> None:
    for mod in SERVICE_MODULES:
        importlib.import_module(mod)


def get_service(name: str) -> HostService | None:
    return _REGISTRY.get(name)


def services_for(plan: LabPlan) -> list[HostService]:
    load_service_modules()
    return sorted((s for s in _REGISTRY.values() if s.enabled(plan)), key=lambda s: (s.order, s.name))


def host_env(plan: LabPlan, host: HostPlan) -> dict[str, str]:
    """The environment the enabled services want for commands in `host`'s namespace."""
    out: dict[str, str] = {}
    for svc in services_for(plan):
        if svc.env is not None:
            out.update(svc.env(plan, host))
    return out
