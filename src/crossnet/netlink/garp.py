"""Gratuitous ARP: announce this host's addresses when crossnet (re)programs them.

A host that comes back with a new NIC MAC (replaced NIC, VM moved, MAC changed) is
unreachable for its peers until their ARP entries for it expire: ~30 s of REACHABLE,
then a unicast probe to the old MAC, then a broadcast. `crossnet apply` and the agent
(at start and every full sync) therefore announce, on the underlay device (the NIC, or
the bridge/br-phy that took its addresses), every IPv4 address it holds, and on the
container bridge the gateway address: one ARP request and one ARP reply each, both
with sender = target = the address (RFC 5227 "ARP announcement"), broadcast. Linux
peers update an existing entry from either (arp_process: a gratuitous ARP overrides
even within locktime); hosts without an entry ignore them (arp_accept=0), so nothing is
learned that was not asked for.

Sent on a raw AF_PACKET socket in the current network namespace (no `arping`), bound
to the device, receiving nothing (protocol 0). Best effort: a failure is logged and
never fails apply.
"""

from __future__ import annotations

import logging
import socket
import struct
from ipaddress import IPv4Address
from typing import Any

from crossnet.netlink.const import IFF_NOARP, IFF_UP

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
ETH_ZLEN = 60  # minimum Ethernet frame without FCS


def mac_bytes(mac: str) -> bytes:
    raw = bytes(int(x, 16) for x in mac.split(":"))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet address: {mac!r}")
    return raw


def frames(mac: str, address: str) -> list[bytes]:
    """The two announcement frames (ARP request, ARP reply) for ``address`` at ``mac``."""
    sha, spa = mac_bytes(mac), IPv4Address(address).packed
    eth = BROADCAST + sha + struct.pack("!H", ETH_P_ARP)
    out = []
    for op, tha in ((ARPOP_REQUEST, b"\x00" * 6), (ARPOP_REPLY, sha)):
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + spa
        out.append((eth + arp).ljust(ETH_ZLEN, b"\x00"))
    return out


def send(ifname: str, mac: str, addresses: list[str]) -> int:
    """Announce ``addresses`` on ``ifname`` (this namespace); number of frames sent."""
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((ifname, 0))
        for a in addresses:
            for f in frames(mac, a):
                s.send(f)
                sent += 1
    return sent


def targets(ipr: Any, ctx: Any) -> list[tuple[str, str, list[str]]]:
    """(device, its MAC, addresses) to announce for this host: every IPv4 address of the
    device holding the underlay address, and the gateway address on the container bridge
    (only addresses configured here, on devices that are up and do ARP)."""
    links = {}
    for msg in ipr.get_links():
        mac = msg.get_attr("IFLA_ADDRESS")
        if not (msg["flags"] & IFF_UP) or msg["flags"] & IFF_NOARP or not mac or mac == "00:00:00:00:00:00":
            continue
        links[msg["index"]] = (msg.get_attr("IFLA_IFNAME"), mac)
    addrs: dict[int, list[str]] = {}
    for msg in ipr.get_addr(family=socket.AF_INET):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local and msg["scope"] == 0 and msg["index"] in links:  # RT_SCOPE_UNIVERSE
            addrs.setdefault(msg["index"], []).append(local)
    out: list[tuple[str, str, list[str]]] = []
    underlay = next((i for i, ips in addrs.items() if str(ctx.address) in ips), None)
    if underlay is not None:
        name, mac = links[underlay]
        out.append((name, mac, sorted(addrs[underlay], key=lambda a: a != str(ctx.address))))
    gateway = str(ctx.gateway)
    for i, (name, mac) in links.items():
        if name == ctx.bridge and i != underlay and gateway in addrs.get(i, []):
            out.append((name, mac, [gateway]))
    return out


def announce(ctx: Any, ipr: Any) -> list[str]:
    """Announce this host's addresses (see the module doc); never raises. Returns what
    was announced, as 'ADDRESS on DEVICE'."""
    done: list[str] = []
    try:
        for name, mac, addresses in targets(ipr, ctx):
            try:
                send(name, mac, addresses)
                done += [f"{a} on {name}" for a in addresses]
            except OSError as exc:
                log.debug("gratuitous ARP on %s: %s", name, exc)
    except Exception as exc:  # noqa: BLE001 - an announcement must never fail apply
        log.debug("gratuitous ARP: %s", exc)
    return done
