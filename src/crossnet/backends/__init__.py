"""Data planes. Each module defines one Backend subclass; `get_backend(name)` finds it."""

from __future__ import annotations

import importlib

from crossnet.backends.base import Backend
from crossnet.errors import ConfigError

# backend name in the cluster file -> module defining it (class attribute BACKEND)
MODULES = {
    "bridge": "crossnet.backends.bridge",
    "host-gw": "crossnet.backends.hostgw",
    "vxlan": "crossnet.backends.vxlan",
    "ovs-gre": "crossnet.backends.ovs",
    "ovs-vxlan": "crossnet.backends.ovs",
}


def get_backend(name: str) -> Backend:
    try:
        modname = MODULES[name]
    except KeyError:
        raise ConfigError(f"backend: unknown backend {name!r} (choose from {', '.join(MODULES)})") from None
    module = importlib.import_module(modname)
    return module.make(name)
