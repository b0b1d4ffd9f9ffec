"""Pure planning of a lab: which namespaces, links and addresses to create.

Nothing here touches the kernel or the file system, so every rule is unit-testable.

Address plan. Every running lab owns one *slot* (0..199, chosen by the manager from
a free-slot scan of the other labs' manifests) and with it the underlay block
``10.<56+slot>.0.0/16`` (10.56.0.0/16 .. 10.255.0.0/16). That range is disjoint from
the overlay default 10.32.0.0/16; slots overlapping the lab's overlay network are
never used.

* ``l2`` underlay: one LAN ``10.B.0.0/20``. Switch namespace ``LAB-sw`` holds the
  bridge ``sw0`` with the LAN router address ``10.B.0.1`` (forwarding on); host
  ``hK`` is ``10.B.0.<9+K>`` (.10, .11, ...) on its ``eth0``, a veth whose other end
  ``sw-hK`` is a port of ``sw0``. Hosts stay below 10.B.0.64, so a bridge backend
  carves its per-host container ranges (/26 by default: 62 free) from the rest.
* ``l3`` underlay: host ``hK`` alone in ``10.B.K.0/24``: router namespace ``LAB-rt``
  has ``rt-hK`` = ``10.B.K.1``, the host's ``eth0`` = ``10.B.K.2``, default route via
  the router (forwarding on). Hosts share no L2 segment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from crossnet import backends
from crossnet.errors import ConfigError

DEFAULT_NAME = "cnlab"
DEFAULT_NETWORK = "10.32.0.0/16"
DEFAULT_SUBNET_LEN = 24
DEFAULT_BACKEND = "vxlan"
DEFAULT_UNDERLAY = "l2"
DEFAULT_HOSTS = 3
DEFAULT_CONTAINERS = 2
UNDERLAYS = ("l2", "l3")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MAX_HOSTS = 50
MAX_CONTAINERS = 64
MIN_MTU, MAX_MTU = 576, 9216
SLOTS = 200
BLOCK_FIRST_OCTET = 56  # slot i -> 10.(56+i).0.0/16
L2_HOST_OFFSET = 10  # l2 host hK gets .(9+K)
L2_LAN_PREFIX = 20
BRIDGE_RANGE_LEN = 26  # bridge backend: per-host container range carved from the /20 LAN
L3_SUBNET_PREFIX = 24
SWITCH_BRIDGE = "sw0"
HOST_IFNAME = "eth0"
MANIFEST_VERSION = 1


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # not .match: "$" accepts a trailing newline
        raise ConfigError(
            f"--name: invalid lab name {name!r} (1-8 characters: a lowercase letter, "
            "then lowercase letters or digits; no '-')"
        )
    return name


@dataclass(frozen=True)
class LabOptions:
    """What the user asked for (`crossnet lab up` options)."""

    name: str = DEFAULT_NAME
    hosts: int = DEFAULT_HOSTS
    underlay: str = DEFAULT_UNDERLAY
    backend: str = DEFAULT_BACKEND
    containers: int = DEFAULT_CONTAINERS
    mtu: int | None = None  # underlay MTU on every underlay link; None = kernel default (1500)
    network: str = DEFAULT_NETWORK
    subnet_len: int = DEFAULT_SUBNET_LEN
    # free-form settings for extensions (services); stored in the manifest
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "LabOptions":
        validate_name(self.name)
        if not isinstance(self.hosts, int) or not 1 <= self.hosts <= MAX_HOSTS:
            raise ConfigError(f"--hosts: must be between 1 and {MAX_HOSTS}, got {self.hosts!r}")
        if self.underlay not in UNDERLAYS:
            raise ConfigError(
                f"--underlay: unknown underlay {self.underlay!r} (choose from {', '.join(UNDERLAYS)})"
            )
        if self.backend not in backends.BACKENDS:
            raise ConfigError(
                f"--backend: unknown backend {self.backend!r} (choose from {', '.join(backends.BACKENDS)})"
            )
        if backends.spec(self.backend).lan_ranges and self.underlay != "l2":
            raise ConfigError(
                f"--backend {self.backend} needs --underlay l2 (containers join the hosts' LAN)"
            )
        if not isinstance(self.containers, int) or not 0 <= self.containers <= MAX_CONTAINERS:
            raise ConfigError(
                f"--containers: must be between 0 and {MAX_CONTAINERS}, got {self.containers!r}"
            )
        if self.mtu is not None and (not isinstance(self.mtu, int) or not MIN_MTU <= self.mtu <= MAX_MTU):
            raise ConfigError(f"--mtu: must be between {MIN_MTU} and {MAX_MTU}, got {self.mtu!r}")
        net = overlay_network(self.network)
        if not isinstance(self.subnet_len, int) or not net.prefixlen < self.subnet_len <= 30:
            raise ConfigError(
                f"--subnet-len: must be longer than the network prefix /{net.prefixlen} "
                f"and at most 30, got {self.subnet_len!r}"
            )
        return self


def overlay_network(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"--network: invalid CIDR {cidr!r} ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(f"--network: lab supports IPv4 networks only, got {cidr!r}")
    return net


def underlay_block(slot: int) -> ipaddress.IPv4Network:
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} out of range 0..{SLOTS - 1}")
    return ipaddress.IPv4Network(f"10.{BLOCK_FIRST_OCTET + slot}.0.0/16")


def free_slot(used: set[int] | frozenset[int], network: str = DEFAULT_NETWORK) -> int:
    """Lowest slot not used by another lab whose block does not overlap `network`."""
    net = overlay_network(network)
    for slot in range(SLOTS):
        if slot in used:
            continue
        if underlay_block(slot).overlaps(net):
            continue
        return slot
    raise ConfigError(
        f"no free lab address slot: {len(used)} labs running and --network {network} "
        "overlaps the rest (run `crossnet lab list` / `crossnet lab down --all`)"
    )


@dataclass(frozen=True)
class FabricPlan:
    """The switch (l2) or router (l3) namespace."""

    netns: str
    kind: str  # "switch" | "router"
    bridge: str | None  # sw0 for l2
    address: str | None  # "10.B.0.1/20" on sw0 for l2 (router addresses are per host link in l3)


@dataclass(frozen=True)
class HostPlan:
    name: str  # h1 (the cluster's host name)
    netns: str  # LAB-h1
    ifname: str  # eth0
    address: str  # underlay address, no prefix
    prefixlen: int
    gateway: str  # default route via (switch / router address)
    subnet: str  # underlay subnet of eth0
    fabric_ifname: str  # the veth end inside the switch/router namespace
    fabric_address: str | None  # "10.B.K.1/24" on the router side (l3 only)
    state_dir: str
    containers: tuple[str, ...]  # container netns names LAB-h1-c1 ...


@dataclass(frozen=True)
class LabPlan:
    name: str
    underlay: str
    backend: str
    slot: int
    block: str
    network: str
    subnet_len: int
    mtu: int | None
    containers_per_host: int
    lab_dir: str
    fabric: FabricPlan
    hosts: tuple[HostPlan, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived -------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """Every namespace of this lab starts with this (unique per lab: names have no '-')."""
        return f"{self.name}-"

    @property
    def manifest_path(self) -> str:
        return f"{self.lab_dir}/lab.json"

    @property
    def cluster_file(self) -> str:
        return f"{self.lab_dir}/cluster.yaml"

    def namespaces(self) -> list[str]:
        """All namespaces in creation order (fabric, hosts, containers)."""
        names = [self.fabric.netns]
        names += [h.netns for h in self.hosts]
        for h in self.hosts:
            names += list(h.containers)
        return names

    def host(self, ref: str) -> HostPlan:
        """Look a host up by cluster name (h1) or namespace name (LAB-h1)."""
        for h in self.hosts:
            if ref in (h.name, h.netns):
                return h
        raise ConfigError(
            f"lab {self.name!r} has no host {ref!r} (hosts: {', '.join(h.name for h in self.hosts)})"
        )

    def resolve_netns(self, ref: str) -> str:
        """Any lab namespace by short or full name: h1, h1-c2, sw/rt, LAB-h1 ..."""
        full = ref if ref.startswith(self.prefix) else f"{self.prefix}{ref}"
        if full in self.namespaces():
            return full
        if ref in ("fabric", "switch", "router"):
            return self.fabric.netns
        raise ConfigError(
            f"lab {self.name!r} has no host or namespace {ref!r} "
            f"(hosts: {', '.join(h.name for h in self.hosts)})"
        )

    def cluster_dict(self) -> dict[str, Any]:
        """The cluster file every host applies (see crossnet.config)."""
        d: dict[str, Any] = {"name": self.name, "backend": self.backend}
        if backends.spec(self.backend).lan_ranges:
            lan = ipaddress.IPv4Network(self.hosts[0].subnet)
            d["lan"] = {"cidr": str(lan), "gateway": self.hosts[0].gateway, "range_len": BRIDGE_RANGE_LEN}
        else:
            d["network"] = self.network
            d["subnet_len"] = self.subnet_len
        d["mtu"] = None
        d["masquerade"] = False
        if (self.extra or {}).get("datapath", "kernel") != "kernel":
            d["datapath"] = self.extra["datapath"]  # docs/datapath.md; lab/etcd.py writes it into the store config
        if self.backend == "auto" and (self.extra or {}).get("encrypt"):
            d["auto"] = {"encrypt": True}  # as lab/etcd.py writes it into the store config
        d["hosts"] = [{"name": h.name, "address": h.address, "iface": h.ifname} for h in self.hosts]
        return d

    # ---- (de)serialisation for the manifest -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hosts"] = [dict(asdict(h), containers=list(h.containers)) for h in self.hosts]
        d["version"] = MANIFEST_VERSION
        d["namespaces"] = self.namespaces()
        d["cluster_file"] = self.cluster_file
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabPlan":
        hosts = tuple(
            HostPlan(**{**{k: h[k] for k in HostPlan.__dataclass_fields__}, "containers": tuple(h["containers"])})
            for h in d["hosts"]
        )
        fabric = FabricPlan(**{k: d["fabric"][k] for k in FabricPlan.__dataclass_fields__})
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k not in ("hosts", "fabric", "extra")}
        return cls(**kw, fabric=fabric, hosts=hosts, extra=dict(d.get("extra") or {}))


def plan_lab(opts: LabOptions, slot: int, lab_dir: str) -> LabPlan:
    """The full plan for `opts` in address slot `slot`, state under `lab_dir`."""
    opts.validate()
    block = underlay_block(slot)
    if block.overlaps(overlay_network(opts.network)):
        raise ConfigError(f"--network {opts.network} overlaps the lab underlay block {block}")
    b = block.network_address.packed[1]  # second octet
    name = opts.name
    hosts: list[HostPlan] = []
    if opts.underlay == "l2":
        lan = ipaddress.IPv4Network(f"10.{b}.0.0/{L2_LAN_PREFIX}")
        gw = str(lan.network_address + 1)
        fabric = FabricPlan(netns=f"{name}-sw", kind="switch", bridge=SWITCH_BRIDGE,
                            address=f"{gw}/{L2_LAN_PREFIX}")
        for k in range(1, opts.hosts + 1):
            hosts.append(
                _host(opts, lab_dir, k, address=str(lan.network_address + L2_HOST_OFFSET - 1 + k),
                      gateway=gw, subnet=str(lan), fabric_ifname=f"sw-h{k}", fabric_address=None)
            )
    else:
        fabric = FabricPlan(netns=f"{name}-rt", kind="router", bridge=None, address=None)
        for k in range(1, opts.hosts + 1):
            sub = ipaddress.IPv4Network(f"10.{b}.{k}.0/{L3_SUBNET_PREFIX}")
            rt = str(sub.network_address + 1)
            hosts.append(
                _host(opts, lab_dir, k, address=str(sub.network_address + 2), gateway=rt,
                      subnet=str(sub), fabric_ifname=f"rt-h{k}", fabric_address=f"{rt}/{L3_SUBNET_PREFIX}")
            )
    return LabPlan(
        name=name,
        underlay=opts.underlay,
        backend=opts.backend,
        slot=slot,
        block=str(block),
        network=opts.network,
        subnet_len=opts.subnet_len,
        mtu=opts.mtu,
        containers_per_host=opts.containers,
        lab_dir=lab_dir,
        fabric=fabric,
        hosts=tuple(hosts),
        extra=dict(opts.extra),
    )


def _host(opts: LabOptions, lab_dir: str, k: int, *, address: str, gateway: str, subnet: str,
          fabric_ifname: str, fabric_address: str | None) -> HostPlan:
    hname = f"h{k}"
    netns = f"{opts.name}-{hname}"
    return HostPlan(
        name=hname,
        netns=netns,
        ifname=HOST_IFNAME,
        address=address,
        prefixlen=ipaddress.IPv4Network(subnet).prefixlen,
        gateway=gateway,
        subnet=subnet,
        fabric_ifname=fabric_ifname,
        fabric_address=fabric_address,
        state_dir=f"{lab_dir}/hosts/{hname}/state",
        containers=tuple(f"{netns}-c{j}" for j in range(1, opts.containers + 1)),
    )
