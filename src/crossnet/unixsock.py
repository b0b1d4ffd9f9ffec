"""Serve on a unix socket path without taking anything that is not ours (stdlib only:
the CNI helper imports it).

* :func:`bind` — the path is lstat()ed (a symlink is never followed): absent → bound;
  not a socket → ConfigError "<path> exists and is not a socket" (left as it is);
  a socket a process accepts on → :class:`InUse` (left as it is: the caller words it);
  a stale socket (connect refused, twice) → unlinked, if it is still that inode, and replaced.
  Bound under a umask, so the socket is never wider than ``mode``; listening before the
  function returns. bind() failing with EADDRINUSE (another process bound the path
  between the check and ours) is InUse too.
* :func:`release` — unlink the path only if it is still the socket :func:`bind` made
  (its (st_dev, st_ino)): never a successor's socket, never what replaced it. Call it
  before closing the socket: while the socket is open its inode stays allocated, so no
  new file can have its number (closed first, a successor's socket may reuse it).
* :func:`bind_for` — :func:`bind` for a server whose path comes from an option: every
  refusal one line naming that option; :func:`adopt` gives the bound socket to a
  ``socketserver`` server made with ``bind_and_activate=False``.
* :func:`short_path` — AF_UNIX addresses are limited to 107 bytes; longer paths go
  through ``/proc/self/fd/N/``.

A socket is stale only if it refuses twice, STALE_RECHECK apart, as the same inode: one
another process bound a moment ago refuses until its listen() (the next syscall).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

from crossnet.errors import ConfigError

Ident = tuple[int, int]  # (st_dev, st_ino) of the socket file bind() created
PROBE_TIMEOUT = 1.0
STALE_RECHECK = 0.05  # seconds between two refused probes before a socket counts as stale


class InUse(ConfigError):
    """A process accepts connections on the socket at this path: not taken over."""


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """AF_UNIX paths are limited to 107 bytes; go through /proc/self/fd/N/ for longer ones."""
    if len(path.encode()) < 100:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def _ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def _accepting(path: str) -> bool | None:
    """True: a process accepts on the socket at path (or it cannot be told: busy, no
    permission, no answer in time; never taken for stale); False: refused (stale);
    None: gone meanwhile."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        with short_path(path) as p:
            probe.connect(p)
        return True
    except FileNotFoundError:
        return None
    except ConnectionRefusedError:
        return False
    except OSError:  # EAGAIN (its backlog is full), EACCES, timeout: someone's, in use
        return True
    finally:
        probe.close()


def still_ours(path: str, ident: Ident | None) -> bool:
    """Is the socket at path (not followed) still the one with this ident?"""
    if ident is None:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and _ident(st) == ident


def release(path: str, ident: Ident | None) -> bool:
    """Unlink path only if it is still the socket bind() returned ident for (a successor's
    socket, or whatever replaced ours, is left). True if it was removed."""
    if not still_ours(path, ident):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def bind(path: str, mode: int = 0o600, backlog: int = 64) -> tuple[socket.socket, Ident]:
    """A listening AF_UNIX stream socket at path and its ident for :func:`release`.
    ConfigError (one line naming the path) if something that is not a socket is there,
    :class:`InUse` if a live process serves the socket there; a stale socket is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        alive = _accepting(path)
        if alive is False:  # refused: stale, or bound a moment ago and not listening yet: ask again
            time.sleep(STALE_RECHECK)
            alive = _accepting(path) if still_ours(path, _ident(st)) else None
        if alive:
            raise InUse(f"{path} is served by a running process")
        if alive is False:
            release(path, _ident(st))  # stale: unlinked only if it is still the socket probed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o777 & ~mode)
        try:
            with short_path(path) as p:
                sock.bind(p)
        finally:
            os.umask(old)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # bound by another process since the check
            raise InUse(f"{path} is served by a running process") from None
        raise ConfigError(f"{path}: cannot bind: {exc.strerror or exc}") from None
    ident: Ident | None = None
    try:
        ident = _ident(os.lstat(path))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        release(path, ident)
        raise ConfigError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    assert ident is not None
    return sock, ident


def bind_for(option: str, path: str, in_use: str, mode: int = 0o600, backlog: int = 64) -> tuple[socket.socket, Ident]:
    """:func:`bind`, each refusal a ConfigError naming ``option`` (the one that set the
    path); ``in_use``: what follows "PATH is served by a running process" (who it may be,
    what to do)."""
    try:
        return bind(path, mode, backlog)
    except InUse:
        raise ConfigError(f"{option}: {path} is served by a running process {in_use}") from None
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def adopt(server: Any, sock: socket.socket) -> None:
    """Give ``server`` (a ``socketserver`` server made with ``bind_and_activate=False``:
    its own socket never bound) the listening socket :func:`bind` made."""
    server.socket.close()
    server.socket = sock
