"""Snapshots of a namespace's kernel network state, for before/after comparisons.
(Read-only `ip -j` / `nft -j` queries; tests compare, never change, with these.)"""

from __future__ import annotations

import json
import subprocess


def _ip_json(netns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def snapshot(netns: str) -> dict:
    links = sorted(
        (
            l["ifname"],
            l.get("link_type"),
            (l.get("linkinfo") or {}).get("info_kind"),
            l.get("master"),
            l.get("mtu"),
            l.get("address"),
            "UP" in l.get("flags", []),
        )
        for l in _ip_json(netns, "-d", "link", "show")
    )
    addrs = sorted(
        (a["ifname"], i["local"], i["prefixlen"])
        for a in _ip_json(netns, "-4", "addr", "show")
        for i in a.get("addr_info", [])
    )
    routes = sorted(
        json.dumps({k: v for k, v in r.items() if k not in ("flags",)}, sort_keys=True)
        for r in _ip_json(netns, "-4", "route", "show", "table", "all")
    )
    nft = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True
    ).stdout
    return {"links": links, "addresses": addrs, "routes": routes, "nft": nft.strip()}


def diff(before: dict, after: dict) -> list[str]:
    out = []
    for key in before:
        if before[key] != after[key]:
            b, a = before[key], after[key]
            if isinstance(b, list):
                out.append(f"{key}: removed {sorted(set(map(str, b)) - set(map(str, a)))}, added {sorted(set(map(str, a)) - set(map(str, b)))}")
            else:
                out.append(f"{key}: {b!r} != {a!r}")
    return out
