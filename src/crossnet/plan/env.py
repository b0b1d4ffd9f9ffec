"""Where resources are applied: `Env`, one netlink socket plus a snapshot of kernel
state (one dump per kind), and the write batch of the per-peer hot path."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:  # imported by whoever opens a socket (crossnet.netlink.iproute.open_ipr)
    from pyroute2 import IPRoute

from crossnet.netlink import iproute as nl
from crossnet.errors import ApplyError
from crossnet.netlink.batch import Batch


class Env:
    """Where resources are applied: a netlink socket (this namespace), a snapshot of
    kernel state read with ONE dump per kind (links, addresses, routes, neighbours,
    FDB) so checking thousands of resources stays linear, and extra handles other
    data planes register (e.g. OVSDB). Anything that changes a kind calls
    ``changed(kind)`` so the next read dumps it again."""

    KINDS = ("links", "addresses", "routes", "neighbours", "fdb")

    def __init__(self, ipr: IPRoute, batch: bool = False, **extra: Any):
        """batch=True: route/neighbour/FDB writes are queued and sent in bursts by
        flush() (crossnet.netlink.batch). Only for an ipr of the CURRENT namespace."""
        self.ipr = ipr
        self.extra = extra
        self._cache: dict[str, Any] = {}
        self.batch: Batch | None = Batch() if batch else None

    def flush(self) -> None:
        """Send queued writes; raise ApplyError naming the first refused resource."""
        if not self.batch:
            return
        failures = self.batch.commit()
        self.changed("routes", "neighbours", "fdb")
        if failures:
            res, code = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise ApplyError(f"{res.describe()}: {os.strerror(code)}{more}")

    def changed(self, *kinds: str) -> None:
        for kind in kinds or self.KINDS:
            self._cache.pop(kind, None)
            if kind == "routes":
                self._cache.pop("routes_by_dst", None)
            if kind == "links":
                self._cache.pop("links_by_index", None)

    def _get(self, kind: str, load) -> Any:
        if kind not in self._cache:
            self._cache[kind] = load()
        return self._cache[kind]

    def links(self) -> dict[str, nl.LinkInfo]:
        return self._get("links", lambda: {l.name: l for l in nl.all_links(self.ipr)})

    def link(self, name: str | None = None, index: int | None = None) -> nl.LinkInfo | None:
        if name is not None:
            return self.links().get(name)
        by_index = self._get("links_by_index", lambda: {l.index: l for l in self.links().values()})
        return by_index.get(index)

    def index(self, name: str) -> int | None:
        link = self.links().get(name)
        return link.index if link else None

    def require_index(self, name: str) -> int:
        idx = self.index(name)
        if idx is None:
            raise ApplyError(f"interface {name!r} does not exist")
        return idx

    def addresses(self, index: int | None) -> list[str]:
        return self._get("addresses", lambda: nl.all_addresses(self.ipr)).get(index, [])

    def routes(self) -> list[nl.RouteInfo]:
        return self._get("routes", lambda: nl.routes(self.ipr))

    def routes_to(self, dst: str) -> list[nl.RouteInfo]:
        def load() -> dict[str, list[nl.RouteInfo]]:
            out: dict[str, list[nl.RouteInfo]] = {}
            for r in self.routes():
                out.setdefault(r.dst, []).append(r)
            return out

        return self._get("routes_by_dst", load).get(dst, [])

    def forget_routes(self, gone: list[nl.RouteInfo]) -> None:
        """Drop routes just deleted from the snapshot instead of invalidating it:
        deleting routes to one destination changes no other route, and a full
        re-dump per removed route made `reset` of 1,000 peers take minutes."""
        if not gone:
            return
        if "routes" in self._cache:
            self._cache["routes"] = [r for r in self._cache["routes"] if r not in gone]
        by_dst = self._cache.get("routes_by_dst")
        if by_dst is not None:
            for r in gone:
                left = [x for x in by_dst.get(r.dst, []) if x not in gone]
                if left:
                    by_dst[r.dst] = left
                else:
                    by_dst.pop(r.dst, None)

    def neighbour(self, index: int, ip: str) -> tuple[str | None, int] | None:
        return self._get("neighbours", lambda: nl.all_neighbours(self.ipr)).get((index, ip))

    def fdb(self) -> set[tuple[int, str, str | None]]:
        return self._get("fdb", lambda: nl.all_fdb(self.ipr))

