"""Resolve a CONTAINER argument to (container id, network namespace path).

Forms: a netns name (`/run/netns/NAME`), a path to a netns file, `pid:N`
(`/proc/N/ns/net`). Runtime-specific forms (`podman:NAME`, `docker:NAME`) are
served by crossnet.runtimes (imported only for them).
"""

from __future__ import annotations

import os
import re

from crossnet.errors import ConfigError


def spec_id(spec: str) -> str:
    """The container id `resolve` gives SPEC, without looking at the namespace (which
    may be gone: `detach pid:N` after the process exited releases `pid-N`). Runtime
    forms (podman:, docker:) need the runtime; for them the spec itself is returned."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "pid" and re.fullmatch(r"[0-9]+", rest):
        return f"pid-{rest}"
    return spec


def resolve(spec: str) -> tuple[str, str]:
    if not spec:
        raise ConfigError("CONTAINER: empty container name")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "pid":
        if not re.fullmatch(r"[0-9]+", rest):
            raise ConfigError(f"CONTAINER: {spec!r}: pid must be a number")
        path = f"/proc/{rest}/ns/net"
        if not os.path.exists(path):
            raise ConfigError(f"CONTAINER: {spec!r}: no process {rest}")
        return spec_id(spec), path
    if sep and prefix in ("podman", "docker"):
        from crossnet.runtimes import RESOLVERS

        return RESOLVERS[prefix](rest)
    if "/" in spec:
        if not os.path.exists(spec):
            raise ConfigError(f"CONTAINER: {spec!r}: no such network namespace file")
        return spec, os.path.abspath(spec)
    path = f"/run/netns/{spec}"
    if not os.path.exists(path):
        raise ConfigError(f"CONTAINER: {spec!r}: no network namespace named {spec} (see `ip netns list`)")
    return spec, path

