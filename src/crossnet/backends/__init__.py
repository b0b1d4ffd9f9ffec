"""Data planes: the one registry of backend names.

Every backend is one row of BACKENDS: its name in the cluster file, the module that
defines it (``make(name) -> Backend``, see crossnet.backends.base) and how hosts get
their container addresses: ``lan_ranges`` backends (bridge) put containers on the LAN
in per-host ranges from the static cluster file; the others give each host a subnet
of an overlay network, which a store (etcd) can lease. config, store, the lab and the
benchmarks derive their lists from here. Listing names imports no backend module (CLI
start-up time): `get_backend` imports the one asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from crossnet.errors import ConfigError

if TYPE_CHECKING:
    from crossnet.backends.base import Backend


class BackendSpec(NamedTuple):  # a NamedTuple, not a dataclass: 0.3 ms instead of 1.4 ms at import
    name: str  # in the cluster file / store config / `--backend`
    module: str  # defines make(name) -> Backend
    lan_ranges: bool = False  # containers on the LAN in per-host ranges (no subnet lease, no store)


BACKENDS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec("bridge", "crossnet.backends.bridge", lan_ranges=True),
        BackendSpec("host-gw", "crossnet.backends.hostgw"),
        BackendSpec("vxlan", "crossnet.backends.vxlan"),
        BackendSpec("ovs-gre", "crossnet.backends.ovs"),
        BackendSpec("ovs-vxlan", "crossnet.backends.ovs"),
        BackendSpec("wireguard", "crossnet.backends.wireguard"),
        BackendSpec("auto", "crossnet.backends.auto"),
    )
}


# `datapath:` (docs/datapath.md; crossnet.datapath): kernel everywhere, ebpf (routed
# container veths) for these backends
DATAPATHS = ("kernel", "ebpf")
ROUTED_BACKENDS = ("host-gw", "vxlan", "auto")


def datapath_problem(backend: str, datapath: str) -> str | None:
    """Why `datapath` cannot be used with `backend` (None: it can)."""
    if datapath not in DATAPATHS:
        shown = repr(datapath) if len(datapath) <= 40 else repr(datapath[:40]) + "…"
        return f"unknown datapath {shown} (choices: {', '.join(DATAPATHS)})"
    if datapath != "kernel" and backend not in ROUTED_BACKENDS:
        return (f"datapath {datapath} is supported with backends {', '.join(ROUTED_BACKENDS)} only, "
                f"not {backend}; use datapath kernel")
    return None


def backend_names() -> tuple[str, ...]:
    """Every backend, in registry order."""
    return tuple(BACKENDS)


def store_backend_names() -> tuple[str, ...]:
    """Backends whose hosts hold a subnet of an overlay network (what a store leases)."""
    return tuple(n for n, s in BACKENDS.items() if not s.lan_ranges)


def lan_backend_names() -> tuple[str, ...]:
    """Backends whose containers sit on the LAN in per-host ranges (static cluster file only)."""
    return tuple(n for n, s in BACKENDS.items() if s.lan_ranges)


def spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"backend: unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None


def get_backend(name: str) -> Backend:
    return importlib.import_module(spec(name).module).make(name)
