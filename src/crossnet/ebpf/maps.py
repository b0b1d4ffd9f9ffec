"""The layout of the programs' maps (bpf/crossnet_tc.c), packed and unpacked in pure
Python: the configuration record and the per-CPU counters."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# struct cn_config { __u32 net, mask (network byte order); __u32 underlay, vxlan (ifindexes) }
CONFIG_FORMAT = "=4s4sII"
CONFIG_KEY = struct.pack("=I", 0)
MAX_NETWORKS = 72  # cn_config's entries (CN_MAX_NETS): the top-level network + up to 64 named ones
# enum in crossnet_tc.c, same order
COUNTERS = ("redirect_neigh", "redirect_peer", "pass_not_ipv4", "pass_not_host", "pass_outside",
            "pass_ip_options", "pass_ttl", "pass_fib", "pass_target", "pass_malformed", "pass_source")
# map names as pinned by bpftool (pinmaps DIR/<name>)
CONFIG_MAP, VETHS_MAP, STATS_MAP = "cn_config", "cn_veths", "cn_stats"
PROGRAMS = ("cn_from_container", "cn_to_container")


@dataclass(frozen=True)
class Config:
    network: ipaddress.IPv4Network
    underlay: int
    vxlan: int = 0

    def pack(self) -> bytes:
        for name, idx in (("underlay", self.underlay), ("vxlan", self.vxlan)):
            if not 0 <= idx < 2**32:
                raise ValueError(f"{name} ifindex out of range: {idx}")
        return struct.pack(CONFIG_FORMAT, self.network.network_address.packed, self.network.netmask.packed,
                           self.underlay, self.vxlan)

    @classmethod
    def unpack(cls, data: bytes) -> "Config":
        net, mask, underlay, vxlan = struct.unpack(CONFIG_FORMAT, data[:struct.calcsize(CONFIG_FORMAT)])
        network = ipaddress.IPv4Network(f"{ipaddress.IPv4Address(net)}/{ipaddress.IPv4Address(mask)}")
        return cls(network, underlay, vxlan)


def config_key(slot: int) -> bytes:
    """cn_config's key of the slot-th network (0: the top-level one)."""
    if not 0 <= slot < MAX_NETWORKS:
        raise ValueError(f"network slot out of range: {slot}")
    return struct.pack("=I", slot)


EMPTY_CONFIG = bytes(struct.calcsize(CONFIG_FORMAT))  # mask 0: the end of the list


def ifindex_key(ifindex: int) -> bytes:
    return struct.pack("=I", ifindex)


def veth_value(address: ipaddress.IPv4Address | None) -> bytes:
    """cn_veths value: the container's address (network order); 0.0.0.0 when unknown
    (then nothing from that veth takes the fast path: no packet has source 0.0.0.0 there)."""
    return (address or ipaddress.IPv4Address(0)).packed


def counter_key(index: int) -> bytes:
    return struct.pack("=I", index)


def percpu_sum(raw: bytes, cpus: int) -> int:
    """Sum of a per-CPU __u64 value (one 8-byte slot per possible CPU)."""
    return sum(struct.unpack_from("=Q", raw, 8 * i)[0] for i in range(cpus))


def summarise(values: dict[str, int]) -> dict[str, int]:
    """Counters by name plus the totals `redirect` and `pass`."""
    out = {name: int(values.get(name, 0)) for name in COUNTERS}
    out["redirect"] = out["redirect_neigh"] + out["redirect_peer"]
    out["pass"] = sum(v for k, v in out.items() if k.startswith("pass_"))
    return out
