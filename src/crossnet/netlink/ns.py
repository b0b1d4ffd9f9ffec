"""The one setns(2) helper, where a namespace lives (`netns_path`) and the one way to
open a socket in another network namespace (`socket_in_netns`; no pyroute2 import: the
CLI and CNI fast paths use it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

from crossnet.netlink.const import CLONE_NEWNET

_libc = None


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the CALLING THREAD into the namespace open at `fd` (a network namespace
    by default); OSError with the kernel's errno on failure."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_location(spec: str) -> str:
    """Where a network namespace lives: a name means /run/netns/NAME, anything with a
    "/" is a path (e.g. /proc/PID/ns/net). Nothing is checked."""
    return spec if "/" in spec else f"/run/netns/{spec}"


def netns_path(spec: str) -> str:
    """A netns name (/run/netns/NAME) or path -> absolute path; CrossnetError if missing."""
    from crossnet.errors import CrossnetError

    path = netns_location(spec)
    if not os.path.exists(path):
        raise CrossnetError(f"network namespace {spec!r} not found ({path})")
    return path


def socket_in_netns(netns: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside `netns` (a name or a path; None or "": this namespace).
    A short-lived thread enters the namespace, creates the socket and exits, so the
    caller's thread never changes namespace; the socket stays bound to the namespace it
    was created in. OSError when the namespace cannot be entered (FileNotFoundError: no
    such namespace)."""
    import socket
    import threading

    if not netns:
        return socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
    path = netns_location(netns)
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
            box["sock"] = socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["err"] = exc

    t = threading.Thread(target=run, name="crossnet-netns-socket", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]
