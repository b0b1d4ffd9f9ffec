"""WireGuard of the named networks (docs/networks.md, docs/wireguard.md), pure.

With backend wireguard or auto every named network gets its own WireGuard device,
``cnwg<VNI>`` (the network's VNI: unique in the cluster and, under a store, written out
once by `etcd init`, so it never moves), listening on its own UDP port: the network's
``wireguard_port``, else the top-level ``wireguard.port`` + (its VNI - the top-level
VNI), which for the default VNIs is the top-level port + its position + 1. Every host
derives every peer's port of every network from the shared config: nothing more is
published. The host's one private key serves all its devices (WireGuard routes by
device and port; a peer's allowed-ips on a device are its subnet of that network only).

* :func:`device` / :func:`port` -- the names and ports;
* :func:`settings` -- a named network's ``wireguard`` (and ``auto``) settings from the
  top-level ones (crossnet.networks.named_settings, the cluster file's and the store's);
* :func:`problems` -- the collisions, each a ``(field path, why)`` for the one-line
  error naming the field (crossnet.netmodel.named_network_problems).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

BACKENDS = ("wireguard", "auto")  # the backends that make WireGuard devices
MAX_PORT = 65_535


def device(vni: int) -> str:
    """A named network's WireGuard device (its VNI: at most 8 digits, cnwg + 8 < 16)."""
    return f"cnwg{vni}"


def port(top_port: int, top_vni: int, vni: int, own: int | None) -> int:
    """A named network's listen port: its own, else the top-level port + its VNI offset
    (may be out of range: :func:`problems` says so)."""
    return own if own is not None else top_port + vni - top_vni


def settings(wireguard: dict[str, Any], auto: dict[str, Any], top_vni: int, vni: int,
             own_port: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(wireguard, auto) of a named network of VNI ``vni`` from the top-level ones (empty
    when the backend uses none). auto's ``named``: the network follows the top-level
    network's per-peer choice (no probe addresses of its own)."""
    if wireguard:
        wireguard = {**wireguard, "device": device(vni),
                     "port": port(int(wireguard["port"]), top_vni, vni, own_port)}
    if auto:
        auto = {**auto, "named": True}
    return wireguard, auto


def problems(backend: str, top_port: int, top_device: str, vxlan_port: int, top_vni: int,
             nets: Iterable[tuple[int, int, int | None]], taken: dict[str, str]) -> Iterator[tuple[tuple, str]]:
    """Why the named networks' WireGuard ports and devices cannot be: ``nets`` holds each
    one's (position, VNI, own ``wireguard_port``); ``taken``: device names already used
    (bridges, NICs) -> the field that uses them."""
    nets = list(nets)
    if backend not in BACKENDS:
        for i, _vni, own in nets:
            if own is not None:
                yield ("networks", i, "wireguard_port"), f"backend {backend} makes no WireGuard device; remove it"
        return
    ports = {top_port: "wireguard.port"}
    if backend == "auto":
        ports.setdefault(vxlan_port, "vxlan.port")
    devices = {top_device: "wireguard.device", **{k: v for k, v in taken.items() if k != top_device}}
    for i, vni, own in nets:
        where = ("networks", i, "wireguard_port")
        p = port(top_port, top_vni, vni, own)
        if not 1 <= p <= MAX_PORT:
            yield where, (f"the default port {p} (wireguard.port {top_port} + VNI {vni} - {top_vni}) is out of "
                          f"range 1..{MAX_PORT}; set wireguard_port")
        elif p in ports:
            yield where, f"port {p} is already {ports[p]}'s" + ("" if own is not None else "; set wireguard_port")
        ports.setdefault(p, f"networks[{i}].wireguard_port")
        dev = device(vni)
        if dev in devices:
            yield ("networks", i, "vni"), f"its WireGuard device {dev} (cnwg<VNI>) is already {devices[dev]}"
        devices.setdefault(dev, f"networks[{i}]'s WireGuard device")
