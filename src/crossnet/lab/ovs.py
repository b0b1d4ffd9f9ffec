"""Lab service "ovs": a private Open vSwitch per simulated host for the ovs-* backends.

Started by `crossnet lab up` after the topology and before `crossnet apply`; every
command the lab runs in a host namespace gets that host's OVS_* environment (so
`crossnet apply/attach/status` and `crossnet lab exec h1 -- ovs-vsctl show` talk to
it); `lab down` stops it and waits for the daemons to exit before the namespace goes.
Files (db, sockets, logs): ``<lab dir>/hosts/<host>/ovs/``.
"""

from __future__ import annotations

from crossnet.lab.services import HostService, register_service
from crossnet.lab.topology import HostPlan, LabPlan
from crossnet.lab.ovsdaemon import OvsInstance


def instance(plan: LabPlan, host: HostPlan) -> OvsInstance:
    return OvsInstance(f"{plan.lab_dir}/hosts/{host.name}/ovs", netns=host.netns)


def start(plan: LabPlan, host: HostPlan) -> None:
    instance(plan, host).start()


def stop(plan: LabPlan, host: HostPlan) -> None:
    instance(plan, host).stop()


def env(plan: LabPlan, host: HostPlan) -> dict[str, str]:
    return instance(plan, host).env()


def enabled(plan: LabPlan) -> bool:
    return plan.backend.startswith("ovs")


SERVICE = register_service(HostService("ovs", start, stop, enabled=enabled, order=50, env=env))
