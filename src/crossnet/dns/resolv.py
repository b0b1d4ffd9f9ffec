"""Containers get crossnet's resolver: what this host's DNS serves (``<state-dir>/dns.json``,
written by whichever process serves it: the agent or `crossnet dns serve`), the CNI
result's ``dns`` and ``/etc/netns/NAME/resolv.conf`` for `crossnet attach` of a named
network namespace (what ``ip netns exec NAME`` bind-mounts over /etc/resolv.conf).

crossnet writes /etc/netns/NAME/resolv.conf only when there is none, records that it did
in the attachment (``resolv_conf``), and removes it at detach only when it is still the
file crossnet wrote (its first line is :data:`crossnet.dns.MARKER`). The directory
/etc/netns/NAME is removed (when empty) only when crossnet created it, recorded the same
way (``resolv_conf_dir``): an admin's own directory (other files of the namespace's /etc
in it, or none yet) stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from crossnet.dns import MARKER, resolv_conf_text
from crossnet.state import (
    StateDir,
    crash_point,
    lock_fd,
    pid_temp,
    remove_left_over,
    write_text_atomic,
)

NETNS_ETC = "/etc/netns"
NETNS_RUN = ("/run/netns", "/var/run/netns")


def info_path(state: StateDir) -> Path:
    return Path(state.root) / "dns.json"


def write_info(state: StateDir, info: dict[str, Any]) -> None:
    write_text_atomic(info_path(state), json.dumps(info, indent=2, sort_keys=True) + "\n")


def remove_info(state: StateDir) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(info_path(state))


def lock_path(state: StateDir) -> Path:
    """Held (flock) by the process that serves this host's DNS for as long as it does."""
    return Path(state.root) / "dns.lock"


def hold(state: StateDir) -> int:
    """Take the serving lock (the descriptor: close it to let go); BlockingIOError when
    another process serves this state dir already (the agent and `dns serve`, say)."""
    return lock_fd(lock_path(state), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _held(state: StateDir) -> bool:
    if not lock_path(state).exists():
        return False
    try:
        fd = lock_fd(lock_path(state), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def served(state: StateDir) -> dict[str, Any] | None:
    """This host's DNS as its server described it (``listen``, ``domain``, ``scope``…),
    None when no live process serves it."""
    try:
        with open(info_path(state)) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _held(state):  # a server that died left its file
        return None
    if not isinstance(info.get("listen"), list) or not isinstance(info.get("domain"), str):
        return None
    return info


def status_of(state: StateDir) -> dict[str, Any]:
    """The ``dns`` part of `crossnet status`: served or not, where, for which containers."""
    info = served(state)
    if info is None:
        return {"served": False, "text": "dns: not served on this host (the agent serves it; without one: "
                                          "crossnet dns serve)"}
    scope = ("every host's containers" if info.get("scope") == "cluster"
             else "this host's containers only (no store: other hosts' containers are unknown)")
    listen = ", ".join(str(a) for a in info["listen"])
    return {"served": True, **{k: info.get(k) for k in ("domain", "listen", "port", "scope", "upstreams", "names")},
            "text": f"dns: {info['domain']} on {listen} port {info.get('port', 53)}: {scope}, "
                    f"{info.get('names', 0)} name(s); other names to {', '.join(info.get('upstreams') or []) or 'nobody'}"}


def cni_dns(state: StateDir, configured: Any) -> dict[str, Any]:
    """The CNI result's ``dns``: crossnet's resolver first (when this host serves DNS),
    then what the network configuration gave."""
    out = dict(configured) if isinstance(configured, dict) else {}
    info = served(state)
    if info is None:
        return out
    ours = [str(a) for a in info["listen"]]
    out["nameservers"] = ours + [n for n in out.get("nameservers") or [] if n not in ours]
    out["search"] = [info["domain"]] + [s for s in out.get("search") or [] if s != info["domain"]]
    return out


def netns_name(path: str) -> str | None:
    """The name of a named network namespace path (/run/netns/NAME), else None."""
    head, _, name = os.path.normpath(path).rpartition("/")
    if head in NETNS_RUN and name and name not in (".", "..") and "/" not in name:
        return name
    return None


def target(state: StateDir, netns: str, etc: str = NETNS_ETC) -> str | None:
    """The resolv.conf :func:`install` would write for ``netns`` (a named namespace, this
    host serves DNS), or None."""
    name = netns_name(netns)
    if name is None or served(state) is None:
        return None
    return os.path.join(etc, name, "resolv.conf")


def claim(state: StateDir, netns: str, etc: str = NETNS_ETC) -> dict[str, str] | None:
    """What the attachment records BEFORE :func:`install` writes (so that an attach killed
    in between leaves a record detach completes): ``resolv_conf``, and ``resolv_conf_dir``
    when /etc/netns/NAME does not exist yet (install will create it). None: there is
    nothing crossnet would write."""
    path = target(state, netns, etc)
    if path is None or os.path.lexists(path):
        return None
    directory = os.path.dirname(path)
    return {"resolv_conf": path, **({} if os.path.lexists(directory) else {"resolv_conf_dir": directory})}


def _sweep(name: str, etc: str) -> None:
    """Remove the temporaries of `name`'s resolv.conf that a killed crossnet left (their
    writer, named in the file name, is gone: crossnet.state.left_over)."""
    remove_left_over(etc, re.escape(f"{name}.resolv.conf"))


def install(state: StateDir, netns: str, etc: str = NETNS_ETC) -> dict[str, str] | None:
    """Write /etc/netns/NAME/resolv.conf for the named namespace ``netns`` when this host
    serves DNS and the file does not exist. Returns what the attachment records when
    crossnet wrote it: ``resolv_conf`` (its path) and, when crossnet also created the
    directory /etc/netns/NAME, ``resolv_conf_dir`` (only then may detach remove it).
    The file appears whole or not at all: written and fsync'd under a temporary name in
    /etc/netns, then hard-linked into place (link(2) fails on an existing file, as O_EXCL
    would) -- created in place, a kill before the write left an empty file, taken for the
    admin's and kept forever."""
    path = target(state, netns, etc)
    info = served(state)
    if path is None or info is None or os.path.lexists(path):
        return None  # nothing to serve, or the admin's own file: never replaced
    name = netns_name(netns) or ""
    directory = os.path.dirname(path)
    os.makedirs(etc, mode=0o755, exist_ok=True)
    _sweep(name, etc)
    try:
        os.mkdir(directory, 0o755)
        created = True
    except FileExistsError:
        created = False  # the admin's (or an earlier attachment's): never crossnet's to remove
    # in /etc/netns itself, never in /etc/netns/NAME: `ip netns exec` bind-mounts every
    # file of that directory over /etc
    tmp = str(pid_temp(Path(etc) / f"{name}.resolv.conf"))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(resolv_conf_text(info["listen"], [info["domain"]]))
            fh.flush()
            os.fsync(fh.fileno())
        crash_point()  # test hook (CROSSNET_TEST_CRASH_AT)
        os.link(tmp, path)
    except (FileExistsError, NotADirectoryError):
        # the admin's own file (made meanwhile), or a file where the directory would be
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        return None
    except OSError:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {"resolv_conf": path, **({"resolv_conf_dir": directory} if created else {})}


def _under(path: Any, etc: str) -> bool:
    return isinstance(path, str) and path.startswith(etc.rstrip("/") + "/") and ".." not in path.split("/")


def remove(meta: dict[str, Any] | None, etc: str = NETNS_ETC) -> bool:
    """Remove the resolv.conf an attachment recorded writing, if it is still crossnet's;
    then its directory, when crossnet recorded creating it and it is empty (also when the
    file was never written: an attach killed after recording it). True when the file was
    removed."""
    meta = meta or {}
    path = meta.get("resolv_conf")
    if not _under(path, etc):
        return False
    directory = os.path.dirname(path)
    _sweep(os.path.basename(directory), etc)
    removed = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        fd = None
    if fd is not None:
        with os.fdopen(fd, "rb") as fh:  # bytes: any file (an admin's binary one too) is read without an error
            first = fh.readline(len(MARKER.encode()) + 2).rstrip(b"\n")
        if first == MARKER.encode():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed = True
    if meta.get("resolv_conf_dir") == directory:
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only when empty
    return removed


def remove_named(name: str, etc: str = NETNS_ETC, *, directory: bool = False) -> bool:
    """Remove crossnet's resolv.conf of the named netns ``name`` (its namespace is being
    deleted: `ip netns del` leaves /etc/netns/NAME in place). Without a record, the
    directory only with ``directory`` (the lab, for the namespaces it named and created)."""
    if not name or "/" in name or name in (".", ".."):
        return False
    path = os.path.join(etc, name, "resolv.conf")
    return remove({"resolv_conf": path, **({"resolv_conf_dir": os.path.dirname(path)} if directory else {})}, etc=etc)


__all__ = ["claim", "cni_dns", "info_path", "install", "netns_name", "remove", "remove_named", "served", "status_of", "target",
           "write_info"]
