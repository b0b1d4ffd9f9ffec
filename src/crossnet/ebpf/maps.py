"""The layout of the programs' maps (bpf/crossnet_tc.c), packed and unpacked in pure
Python: the configuration record, the VTEP entries and the per-CPU counters."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# struct cn_config { __u32 net, mask (network byte order); __u32 underlay, vxlan (ifindexes);
#                    __u32 vni; __u32 local (network byte order); __u16 port (network byte order), pad }
CONFIG_FIELDS = (("net", "4s"), ("mask", "4s"), ("underlay", "I"), ("vxlan", "I"), ("vni", "I"), ("local", "4s"),
                 ("port", "2s"), ("pad", "2x"))
CONFIG_FORMAT = "=" + "".join(code for _name, code in CONFIG_FIELDS)
CONFIG_SIZE = struct.calcsize(CONFIG_FORMAT)
CONFIG_KEY = struct.pack("=I", 0)
MAX_NETWORKS = 72  # cn_config's entries (CN_MAX_NETS): the top-level network + up to 64 named ones
# enum in crossnet_tc.c, same order
COUNTERS = ("redirect_neigh", "redirect_peer", "pass_not_ipv4", "pass_not_host", "pass_outside",
            "pass_ip_options", "pass_ttl", "pass_fib", "pass_target", "pass_malformed", "pass_source",
            "redirect_encap", "redirect_decap")
REDIRECTS = ("redirect_neigh", "redirect_peer", "redirect_encap", "redirect_decap")
# map names as pinned by bpftool (pinmaps DIR/<name>)
CONFIG_MAP, VETHS_MAP, VTEPS_MAP, STATS_MAP = "cn_config", "cn_veths", "cn_vteps", "cn_stats"
PROGRAMS = ("cn_from_container", "cn_to_container")


@dataclass(frozen=True)
class Config:
    """One network's slot. With a vxlan device: its VNI, local (underlay) address and UDP
    port, which the programs write into the VXLAN frames they make and expect in the ones
    they take apart (port 0: they leave encapsulation to the device)."""

    network: ipaddress.IPv4Network
    underlay: int
    vxlan: int = 0
    vni: int = 0
    local: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    port: int = 0

    def pack(self) -> bytes:
        for name, idx in (("underlay", self.underlay), ("vxlan", self.vxlan)):
            if not 0 <= idx < 2**32:
                raise ValueError(f"{name} ifindex out of range: {idx}")
        if not 0 <= self.vni < 2**24:
            raise ValueError(f"vni out of range: {self.vni}")
        if not 0 <= self.port < 2**16:
            raise ValueError(f"port out of range: {self.port}")
        return struct.pack(CONFIG_FORMAT, self.network.network_address.packed, self.network.netmask.packed,
                           self.underlay, self.vxlan, self.vni, self.local.packed, struct.pack(">H", self.port))

    @classmethod
    def unpack(cls, data: bytes) -> "Config":
        net, mask, underlay, vxlan, vni, local, port = struct.unpack(CONFIG_FORMAT, data[:CONFIG_SIZE])
        network = ipaddress.IPv4Network(f"{ipaddress.IPv4Address(net)}/{ipaddress.IPv4Address(mask)}")
        return cls(network, underlay, vxlan, vni, ipaddress.IPv4Address(local), struct.unpack(">H", port)[0])


def config_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """A packed cn_config record cut into its fields (CONFIG_FIELDS' names, padding included)."""
    out, at = [], 0
    for name, code in CONFIG_FIELDS:
        size = struct.calcsize("=" + code)
        out.append((name, raw[at:at + size]))
        at += size
    return out


def config_key(slot: int) -> bytes:
    """cn_config's key of the slot-th network (0: the top-level one)."""
    if not 0 <= slot < MAX_NETWORKS:
        raise ValueError(f"network slot out of range: {slot}")
    return struct.pack("=I", slot)


EMPTY_CONFIG = bytes(CONFIG_SIZE)  # mask 0: the end of the list


def ifindex_key(ifindex: int) -> bytes:
    return struct.pack("=I", ifindex)


def veth_value(address: ipaddress.IPv4Address | None) -> bytes:
    """cn_veths value: the container's address (network order); 0.0.0.0 when unknown
    (then nothing from that veth takes the fast path: no packet has source 0.0.0.0 there)."""
    return (address or ipaddress.IPv4Address(0)).packed


def vtep_key(vxlan: int, nexthop: ipaddress.IPv4Address) -> bytes:
    """cn_vteps key: the vxlan device's ifindex and the next hop the FIB gives for a
    peer's subnet (its .0 address, network order)."""
    if not 0 < vxlan < 2**32:
        raise ValueError(f"vxlan ifindex out of range: {vxlan}")
    return struct.pack("=I", vxlan) + nexthop.packed


def vtep_value(underlay: ipaddress.IPv4Address) -> bytes:
    """cn_vteps value: the peer's underlay address (network order)."""
    return underlay.packed


def counter_key(index: int) -> bytes:
    return struct.pack("=I", index)


def percpu_sum(raw: bytes, cpus: int) -> int:
    """Sum of a per-CPU __u64 value (one 8-byte slot per possible CPU)."""
    return sum(struct.unpack_from("=Q", raw, 8 * i)[0] for i in range(cpus))


def summarise(values: dict[str, int]) -> dict[str, int]:
    """Counters by name plus the totals `redirect` and `pass`."""
    out = {name: int(values.get(name, 0)) for name in COUNTERS}
    out["redirect"] = sum(out[name] for name in REDIRECTS)
    out["pass"] = sum(v for k, v in out.items() if k.startswith("pass_"))
    return out
