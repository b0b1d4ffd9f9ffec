"""crossnet.netlink.garp: the announcement frames and what is announced where (no kernel;
the real thing is tests/e2e/test_garp.py)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from crossnet.netlink.garp import ETH_ZLEN, announce, frames, targets


@given(mac=st.binary(min_size=6, max_size=6), ip=st.integers(1, 2**32 - 2))
def test_frames_are_arp_announcements(mac: bytes, ip: int) -> None:
    m = ":".join(f"{b:02x}" for b in mac)
    a = str(IPv4Address(ip))
    req, rep = frames(m, a)
    for f, op in ((req, 1), (rep, 2)):
        assert len(f) == ETH_ZLEN
        assert f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x08\x06"
        htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", f[14:22])
        assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, op)
        sha, spa, tha, tpa = f[22:28], f[28:32], f[32:38], f[38:42]
        assert sha == mac and spa == tpa == IPv4Address(ip).packed  # sender = target: gratuitous
        assert tha == (b"\x00" * 6 if op == 1 else mac)  # a gratuitous reply must name itself (arp_is_garp)


class Msg(dict):
    def __init__(self, attrs: dict, **fields):
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeIpr:
    def __init__(self, links, addrs):
        self.links, self.addrs = links, addrs

    def get_links(self):
        return [Msg({"IFLA_IFNAME": n, "IFLA_ADDRESS": mac}, index=i, flags=flags) for i, n, mac, flags in self.links]

    def get_addr(self, family):
        return [Msg({"IFA_LOCAL": a}, index=i, scope=scope) for i, a, scope in self.addrs]


CTX = SimpleNamespace(address=IPv4Address("10.0.0.2"), gateway=IPv4Address("10.32.1.1"), bridge="cn0")


def test_targets_underlay_device_and_gateway_only() -> None:
    ipr = FakeIpr(
        links=[(1, "lo", "00:00:00:00:00:00", 0x9), (2, "eth0", "02:00:00:00:00:02", 0x1003),
               (3, "cn0", "0a:00:00:00:00:03", 0x1003), (4, "cnvx1", "0a:00:00:00:00:04", 0x1003),
               (5, "down0", "02:00:00:00:00:05", 0x1002)],
        addrs=[(1, "127.0.0.1", 254), (2, "10.0.0.9", 0), (2, "10.0.0.2", 0), (3, "10.32.1.1", 0),
               (4, "10.32.1.0", 0), (5, "10.0.0.2", 0)],
    )
    assert targets(ipr, CTX) == [("eth0", "02:00:00:00:00:02", ["10.0.0.2", "10.0.0.9"]),
                                 ("cn0", "0a:00:00:00:00:03", ["10.32.1.1"])]


def test_bridge_backend_announces_from_the_bridge_holding_the_address() -> None:
    ctx = SimpleNamespace(address=IPv4Address("10.0.0.2"), gateway=IPv4Address("10.0.0.1"), bridge="br0")
    ipr = FakeIpr(links=[(2, "eth0", "02:00:00:00:00:02", 0x1003), (3, "br0", "02:00:00:00:00:02", 0x1003)],
                  addrs=[(3, "10.0.0.2", 0)])  # the LAN's gateway is a router, not ours: never announced
    assert targets(ipr, ctx) == [("br0", "02:00:00:00:00:02", ["10.0.0.2"])]


def test_announce_never_raises() -> None:
    class Broken:
        def get_links(self):
            raise OSError("netlink gone")

    assert announce(CTX, Broken()) == []
    ipr = FakeIpr(links=[(2, "nosuchdev0", "02:00:00:00:00:02", 0x1003)], addrs=[(2, "10.0.0.2", 0)])
    assert announce(CTX, ipr) == []  # bind fails (no such device here): logged, not raised
