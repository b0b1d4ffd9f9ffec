"""This host's containers as the agent and `crossnet dns serve` read them every second,
re-read only when what they are read from changed (docs/mesh.md "Resources").

The agent's DNS asks every second (crossnet.dns.service LOCAL_POLL) whether a container's
namespace died without a detach; a full read parses ipam.json and applied.json and stats
every namespace path. The answer depends on those two files, the identity of each
recorded namespace path and — only for an entry whose path is gone or names another
namespace — this namespace's links; so a tick stats the two files and the namespace
paths, and reads everything again only when one of them changed (or when an attached
entry's path is gone: its state then depends on the links, which are not watched)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

Signature = tuple
MAX_AGE = 30.0  # a full read at least this often whatever the signature says


def _file_sig(path: Any) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def signature(state: Any, entries: list[dict[str, Any]] | None) -> Signature | None:
    """What the previous read `entries` (list_containers' output) depended on, now; None:
    it cannot be told without reading again."""
    from crossnet.containers import netns_ident

    if entries is None:
        return None
    idents = []
    for e in entries:
        path = e.get("netns")
        ident = netns_ident(path) if isinstance(path, str) and path else None
        if isinstance(path, str) and path and ident is None and e.get("state") != "stale":
            return None  # attached though its path is gone: depends on the host's links
        if e.get("state") == "incomplete":
            return None  # no veth yet: depends on the host's links (the attach may be running)
        idents.append(ident)
    return _file_sig(state.ipam_path), _file_sig(state.applied_path), tuple(idents)


class LocalContainers:
    """`read()` = list_containers(state) (every entry, stale ones included), cached while
    its signature holds."""

    def __init__(self, state: Any, read: Callable[[], list[dict[str, Any]]] | None = None):
        from crossnet import containers

        self.state = state
        self._read = read or (lambda: containers.list_containers(state))
        self._entries: list[dict[str, Any]] | None = None
        self._sig: Signature | None = None
        self._at = 0.0
        self.reads = 0

    def read(self) -> list[dict[str, Any]]:
        sig = signature(self.state, self._entries)
        if sig is not None and sig == self._sig and time.monotonic() - self._at < MAX_AGE:
            return self._entries  # type: ignore[return-value]
        before = (_file_sig(self.state.ipam_path), _file_sig(self.state.applied_path))
        self._at = time.monotonic()
        entries = self._read()
        self.reads += 1
        # a file replaced during the read: do not trust the signature, read again next time
        stable = before == (_file_sig(self.state.ipam_path), _file_sig(self.state.applied_path))
        self._entries = entries
        self._sig = signature(self.state, entries) if stable else None
        return entries


class Readers:
    """One :class:`LocalContainers` per state dir (the top-level network's, each named
    network's), made on first use: ``read(state)`` is list_containers(state), cached."""

    def __init__(self) -> None:
        self._caches: dict[str, LocalContainers] = {}

    def read(self, state: Any) -> list[dict[str, Any]]:
        cache = self._caches.get(str(state.root))
        if cache is None:
            cache = self._caches[str(state.root)] = LocalContainers(state)
        return cache.read()
