"""Resolve a CONTAINER argument to (container id, network namespace path).

Forms: a netns name (`/run/netns/NAME`), a path to a netns file, `pid:N`
(`/proc/N/ns/net`). Runtime-specific forms (`podman:NAME`, `docker:NAME`) are
served by crossnet.runtime.engines (imported only for them).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat

from crossnet.errors import ConfigError
from crossnet.netlink.const import CLONE_NEWNET, NS_GET_NSTYPE


def spec_id(spec: str) -> str:
    """The container id `resolve` gives SPEC, without looking at the namespace (which
    may be gone: `detach pid:N` after the process exited releases `pid-N`). Runtime
    forms (podman:, docker:) need the runtime; for them the spec itself is returned."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "pid" and re.fullmatch(r"[0-9]+", rest):
        return f"pid-{rest}"
    return spec




def netns_problem(path: str) -> str | None:
    """Why ``path`` is not a network namespace file (a regular file, a directory, a
    device, a mount namespace...), or None. Opens it read-only, non-blocking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such network namespace file"
    except (OSError, ValueError) as exc:
        return f"cannot use it: {getattr(exc, 'strerror', None) or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a network namespace"
    if not stat.S_ISREG(st.st_mode):  # namespace files are S_IFREG on nsfs; never open a device or FIFO
        return "is not a network namespace file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return f"cannot open it: {exc.strerror}"
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return "is not a network namespace (a regular file?)"
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        return "is a namespace, but not a network namespace"
    return None


def _checked(spec: str, path: str) -> str:
    why = netns_problem(path)
    if why is not None:
        raise ConfigError(f"CONTAINER: {spec!r}: {path} {why}" if path != spec else f"CONTAINER: {spec!r}: {why}")
    return path


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
        return spec_id(spec), _checked(spec, path)
    if sep and prefix in ("podman", "docker"):
        from crossnet.runtime.engines import RESOLVERS

        return RESOLVERS[prefix](rest)
    if "/" in spec:
        if not os.path.exists(spec):
            raise ConfigError(f"CONTAINER: {spec!r}: no such network namespace file")
        return spec, _checked(spec, os.path.abspath(spec))
    path = f"/run/netns/{spec}"
    if not os.path.exists(path):
        raise ConfigError(f"CONTAINER: {spec!r}: no network namespace named {spec} (see `ip netns list`)")
    return spec, _checked(spec, path)

