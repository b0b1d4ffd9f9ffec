"""The cluster file: pydantic models, validation and YAML load/dump.

Every problem becomes a one-line :class:`ConfigError` naming the field, e.g.
``cluster.yaml: hosts[1].address: duplicate address 10.0.0.2 (also used by hosts[0] 'h1')``.
Field-level problems come from pydantic; cross-field rules live in ``_semantic_errors``
and are reported through the same ValidationError so both get the same formatting.
The reference for users is docs/cluster-file.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from crossnet import backends, ifname, leases
from crossnet.errors import ConfigError, IpamError
from crossnet.netmodel import (  # the one network model, shared with the stores
    BACKENDS,
    MAX_SUBNET_LEN,
    Address,
    IfName,
    Loc,
    Network,
    NetworkSettings,
    Problem,
    VxlanSpec,
    WireguardSpec,
    model_error,
    problems_error,
    subnet_len_problem,
)
from crossnet.netmodel import short as _short

_HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

# --------------------------------------------------------------------------- models


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    address: Address
    iface: IfName = "eth0"
    subnet: Network | None = None
    wireguard_key: str | None = None  # backend wireguard: the host's public key (`crossnet keygen` prints it)

    @field_validator("wireguard_key")
    @classmethod
    def _check_wireguard_key(cls, value: str | None) -> str | None:
        from crossnet.wg.keys import check_key

        problem = check_key(value) if value is not None else None
        if problem:
            raise ValueError(f"WireGuard public key {problem}")
        return value

    def published_data(self) -> dict[str, Any]:
        """What the cluster file says about this host that a store would carry in `data`."""
        return {"wireguard_key": self.wireguard_key} if self.wireguard_key else {}

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _HOST_NAME_RE.fullmatch(value):  # not .match: "$" accepts a trailing newline
            raise ValueError(
                f"invalid host name {_short(value)}: use 1..32 of a-z, 0-9 and '-', "
                "starting and ending with a letter or digit"
            )
        return value


class LanSpec(BaseModel):
    """The shared LAN of the bridge backend."""

    model_config = ConfigDict(extra="forbid")

    cidr: Network
    gateway: Address
    range_len: int | None = None  # filled in: cidr.prefixlen + 2 when not given

    @model_validator(mode="after")
    def _default_range_len(self) -> LanSpec:
        if self.range_len is None:
            self.range_len = self.cidr.prefixlen + 2
        return self


class Cluster(NetworkSettings):
    """The cluster file: the network's settings (crossnet.netmodel.NetworkSettings,
    shared with the stores' NetworkConfig), the hosts, and the bridge backend's LAN."""

    lan: LanSpec | None = None
    underlay_networks: list[Network] = Field(default_factory=list)
    hosts: list[HostSpec]

    # (inputs, result) of the last carve; keyed so model_copy(update=...) can't serve stale data
    _subnets: tuple[tuple[Any, ...], dict[str, IPv4Network]] | None = PrivateAttr(default=None)

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: list[HostSpec]) -> list[HostSpec]:
        if not value:
            raise ValueError("at least one host is required")
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> Cluster:
        problems = list(_semantic_errors(self))
        if not problems:
            problems = self._carve_problems()
        if problems:
            raise problems_error(type(self).__name__, problems)
        return self

    def _carve_problems(self) -> list[Problem]:
        try:
            self.host_subnets()
        except leases.CarveError as exc:  # order-dependent: a pin or address vs earlier hosts
            return [_carve_problem(self, exc)]
        except IpamError as exc:  # the checks above should make this unreachable
            return [(("hosts",), str(exc))]
        return []

    # ---- queries

    @property
    def is_bridge(self) -> bool:
        return self.backend in backends.lan_backend_names()  # containers on the LAN in per-host ranges

    def container_network(self) -> IPv4Network:
        """The network containers live in: ``network``, or ``lan.cidr`` for bridge."""
        if self.is_bridge:
            assert self.lan is not None
            return self.lan.cidr
        assert self.network is not None
        return self.network

    def bridge_name(self) -> str:
        if self.bridge:
            return self.bridge
        return "br0" if self.is_bridge else "cn0"

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        known = ", ".join(h.name for h in self.hosts)
        raise ConfigError(f"unknown host {name!r} (hosts: {known})")

    def host_subnets(self) -> dict[str, IPv4Network]:
        """Per host: its overlay subnet, or its container range in the LAN (bridge)."""
        key = _carve_inputs(self)
        if self._subnets is None or self._subnets[0] != key:
            self._subnets = (key, _carve(self))
        return dict(self._subnets[1])

    def subnet_of(self, name: str) -> IPv4Network:
        return self.host_subnets()[self.host(name).name]

    def gateway_of(self, name: str) -> IPv4Address:
        """Containers' default gateway on host ``name``: the first address of its subnet
        (overlay), or the host's own LAN address, which moves onto the bridge (bridge)."""
        if self.is_bridge:
            return self.host(name).address
        return self.subnet_of(name).network_address + 1

    def container_prefixlen(self) -> int:
        if self.is_bridge:
            assert self.lan is not None
            return self.lan.cidr.prefixlen
        return self.subnet_len

    def peers_of(self, name: str) -> list[HostSpec]:
        me = self.host(name)
        return [h for h in self.hosts if h.name != me.name]

    # ---- more isolated networks (`networks:`, docs/networks.md)

    def network_vni(self, index: int) -> int:
        """VNI of networks[index]: its own, or the top-level VNI + index + 1."""
        return self.networks[index].vni or self.vxlan.vni + index + 1

    def network_subnets(self, index: int) -> dict[str, IPv4Network]:
        """Per host, its subnet of networks[index]: the lowest free block, in file order."""
        net = self.networks[index]
        return leases.carve_subnets(net.network, net.subnet_len or self.subnet_len, [(h.name, None) for h in self.hosts])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (unset optional fields omitted); round-trips via parse_cluster."""
        out = self.model_dump(mode="json", exclude_none=True)
        if not out.get("networks"):
            out.pop("networks", None)  # a one-network file reads as it always did
        return out


# --------------------------------------------------------------------------- cross-field rules


def _carve_inputs(c: Cluster) -> tuple[Any, ...]:
    lan = (c.lan.cidr, c.lan.gateway, c.lan.range_len) if c.lan else None
    hosts = tuple((h.name, h.address, h.subnet) for h in c.hosts)
    return (c.backend, c.network, c.subnet_len, lan, hosts)


def _carve(cluster: Cluster) -> dict[str, IPv4Network]:
    """Strictly in file order (see leases.carve_subnets): a host's block depends only on
    the hosts before it, so appending a host never moves an existing one."""
    hosts = [(h.name, h.subnet) for h in cluster.hosts]
    if cluster.is_bridge:
        lan = cluster.lan
        assert lan is not None and lan.range_len is not None
        cidr = lan.cidr
        reserved = [cidr.network_address, cidr.broadcast_address, lan.gateway]
        addresses = [h.address for h in cluster.hosts]
        return leases.carve_subnets(cidr, lan.range_len, hosts, reserved, addresses)
    assert cluster.network is not None
    return leases.carve_subnets(cluster.network, cluster.subnet_len, hosts)


def _carve_problem(c: Cluster, exc: leases.CarveError) -> Problem:
    """The carving error as a problem of the later host's field."""
    host = c.hosts[exc.index]
    loc: Loc = ("hosts", exc.index, exc.field)
    if exc.owner is None:  # out of space: the count checks before carving make this unreachable
        return loc, str(exc)
    noun = "range" if c.is_bridge else "subnet"
    owner = _host_ref(exc.owner, c.hosts[exc.owner])
    if exc.field == "address":
        return loc, (
            f"{host.address} is inside the container range {exc.block} of {owner} "
            "(ranges are carved in file order, use an address outside it)"
        )
    return loc, (
        f"{host.subnet} is already the {noun} of {owner}: hosts without a pin take the lowest "
        f"free {noun} in file order, regardless of later pins"
    )


def _bridge_reserved(cluster: Cluster) -> list[IPv4Address]:
    """Addresses no container range may contain (bridge backend)."""
    assert cluster.lan is not None
    cidr = cluster.lan.cidr
    return [
        cidr.network_address,
        cidr.broadcast_address,
        cluster.lan.gateway,
        *(h.address for h in cluster.hosts),
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _host_ref(index: int, host: HostSpec) -> str:
    return f"hosts[{index}] {host.name!r}"


def _semantic_errors(c: Cluster) -> Iterator[Problem]:
    sections = list(_section_errors(c))
    yield from sections
    yield from _duplicate_errors(c)
    yield from _device_name_errors(c)
    if sections:
        return
    if c.is_bridge:
        yield from _bridge_errors(c)
    else:
        yield from _overlay_errors(c)
    if c.networks:
        yield from _networks_errors(c)


def _section_errors(c: Cluster) -> Iterator[Problem]:
    if c.is_bridge:
        if c.lan is None:
            yield ("lan",), "required for backend bridge (the shared LAN: cidr, gateway)"
        if c.network is not None:
            yield ("network",), "not used by backend bridge (containers live in lan.cidr)"
    else:
        if c.network is None:
            yield ("network",), f"required for backend {c.backend} (e.g. 10.32.0.0/16)"
        if c.lan is not None:
            yield ("lan",), f"only used by backend bridge, not {c.backend}"


def _duplicate_errors(c: Cluster) -> Iterator[Problem]:
    names: dict[str, int] = {}
    addresses: dict[IPv4Address, int] = {}
    for i, host in enumerate(c.hosts):
        if host.name in names:
            yield (
                ("hosts", i, "name"),
                f"duplicate name {host.name!r} (also hosts[{names[host.name]}])",
            )
        else:
            names[host.name] = i
        if host.address in addresses:
            j = addresses[host.address]
            yield (
                ("hosts", i, "address"),
                f"duplicate address {host.address} (also used by {_host_ref(j, c.hosts[j])})",
            )
        else:
            addresses[host.address] = i


def _device_name_errors(c: Cluster) -> Iterator[Problem]:
    """Names from the file must not be devices crossnet creates itself: `bridge: cnvx1`
    would make the bridge and the VXLAN device one device; a NIC named like the bridge
    would be enslaved to itself."""
    bridge = c.bridge_name()
    if c.bridge is not None:  # not a name crossnet uses itself: NetworkSettings checks that
        for i, host in enumerate(c.hosts):
            if host.iface == c.bridge:
                yield ("bridge",), f"{c.bridge} is the underlay NIC of {_host_ref(i, host)} (hosts[{i}].iface)"
                return
    for i, host in enumerate(c.hosts):
        why = ifname.reserved_problem(host.iface, bridge=bridge)
        if why is not None:
            yield ("hosts", i, "iface"), f"{why}, not an underlay NIC"


def _underlay_overlap_errors(c: Cluster, loc: Loc, net: IPv4Network) -> Iterator[Problem]:
    for i, underlay in enumerate(c.underlay_networks):
        if underlay.overlaps(net):
            yield loc, f"{net} overlaps underlay_networks[{i}] {underlay}"


# ---- overlay backends


def _overlay_errors(c: Cluster) -> Iterator[Problem]:
    network = c.network
    assert network is not None
    hint = None
    for i, host in enumerate(c.hosts):
        if host.address in network:
            if hint is None:  # the first message names a range that works (crossnet.suggest)
                hint = _free_network_hint(c, network)
            yield (
                ("network",),
                f"{network} overlaps the underlay: it contains {_host_ref(i, host)} "
                f"address {host.address}{hint}",
            )
            hint = ""
    yield from _underlay_overlap_errors(c, ("network",), network)
    if c.backend == "auto":
        yield from _auto_errors(c, network)
    problem = subnet_len_problem(network, c.subnet_len)
    if problem:
        yield ("subnet_len",), problem
        return
    pinned = list(_pinned_errors(c, network, c.subnet_len, "network", "subnet_len"))
    yield from pinned
    count = 1 << (c.subnet_len - network.prefixlen)
    if not pinned and count < len(c.hosts):
        yield (
            ("subnet_len",),
            f"subnet_len {c.subnet_len} in {network} gives {_count(count, 'subnet')} "
            f"for {_count(len(c.hosts), 'host')}",
        )


def _networks_errors(c: Cluster) -> Iterator[Problem]:
    """networks: the rules a store's config shares (netmodel.named_network_problems), and
    those that need the hosts: no host address nor underlay inside a network, no bridge
    named like a NIC, a subnet for every host."""
    from crossnet.netmodel import named_network_problems

    nics = {}
    for i, h in enumerate(c.hosts):
        nics.setdefault(h.iface, f"hosts[{i}].iface")
    shared = list(named_network_problems(c.backend, c.network, c.subnet_len, c.vxlan.vni, c.bridge_name(),
                                         c.networks, nics, wireguard=c.wireguard, vxlan_port=c.vxlan.port))
    yield from shared
    if any(loc == ("networks",) for loc, _ in shared):
        return
    for i, net in enumerate(c.networks):
        for j, host in enumerate(c.hosts):
            if host.address in net.network:
                yield (("networks", i, "network"), f"{net.network} contains {_host_ref(j, host)} address {host.address}")
        yield from _underlay_overlap_errors(c, ("networks", i, "network"), net.network)
        subnet_len = net.subnet_len or c.subnet_len
        if subnet_len_problem(net.network, subnet_len) is None and (1 << (subnet_len - net.network.prefixlen)) < len(c.hosts):
            yield (("networks", i, "subnet_len"), f"{net.network} has fewer /{subnet_len} subnets than hosts")


def _free_network_hint(c: Cluster, network: IPv4Network) -> str:
    from crossnet.suggest import free_network

    free = free_network(network, c.subnet_len, len(c.hosts), [h.address for h in c.hosts], c.underlay_networks,
                        [h.subnet for h in c.hosts if h.subnet is not None])
    return f" (a free range: network: {free})" if free is not None else ""


def _auto_errors(c: Cluster, network: IPv4Network) -> Iterator[Problem]:
    probe = c.auto.probe_network
    if probe.overlaps(network):
        yield ("auto", "probe_network"), f"{probe} overlaps network {network}"
    for i, host in enumerate(c.hosts):
        if host.address in probe:
            yield ("auto", "probe_network"), f"{probe} contains {_host_ref(i, host)} address {host.address}"
    yield from _underlay_overlap_errors(c, ("auto", "probe_network"), probe)
    if network.prefixlen < c.subnet_len and (1 << (c.subnet_len - network.prefixlen)) > probe.num_addresses - 2:
        yield ("auto", "probe_network"), (f"{probe} is too small for the {1 << (c.subnet_len - network.prefixlen)} "
                                          f"subnets of network {network}")


def _pinned_errors(
    c: Cluster, outer: IPv4Network, prefixlen: int, outer_field: str, len_field: str
) -> Iterator[Problem]:
    """Pinned host subnets/ranges: inside ``outer``, right length, no mutual overlap."""
    seen: list[tuple[int, IPv4Network]] = []
    for i, host in enumerate(c.hosts):
        sub = host.subnet
        if sub is None:
            continue
        loc: Loc = ("hosts", i, "subnet")
        if not sub.subnet_of(outer):
            yield loc, f"{sub} is not inside {outer_field} {outer}"
        elif sub.prefixlen != prefixlen:
            yield loc, f"{sub} is a /{sub.prefixlen}, expected /{prefixlen} ({len_field})"
        else:
            for j, other in seen:
                if sub.overlaps(other):
                    yield loc, f"{sub} overlaps hosts[{j}].subnet {other}"
            seen.append((i, sub))


# ---- bridge backend


def _bridge_errors(c: Cluster) -> Iterator[Problem]:
    lan = c.lan
    assert lan is not None and lan.range_len is not None
    cidr = lan.cidr
    edges = (cidr.network_address, cidr.broadcast_address)
    if lan.gateway not in cidr or lan.gateway in edges:
        yield ("lan", "gateway"), f"{lan.gateway} is not a usable address of lan.cidr {cidr}"
    for i, host in enumerate(c.hosts):
        if host.address not in cidr or host.address in edges:
            yield (
                ("hosts", i, "address"),
                f"{host.address} is not a usable address of lan.cidr {cidr}",
            )
        elif host.address == lan.gateway:
            yield ("hosts", i, "address"), f"{host.address} is lan.gateway"
    yield from _underlay_overlap_errors(c, ("lan", "cidr"), cidr)
    if not cidr.prefixlen < lan.range_len <= 32:
        yield (
            ("lan", "range_len"),
            f"{lan.range_len} must be longer than the /{cidr.prefixlen} of lan.cidr {cidr} "
            "and at most 32 (default: lan.cidr prefix + 2)",
        )
        return
    problems = [
        *_pinned_errors(c, cidr, lan.range_len, "lan.cidr", "lan.range_len"),
        *_range_content_errors(c),
    ]
    yield from problems
    if not problems:
        yield from _range_count_errors(c)


def _range_content_errors(c: Cluster) -> Iterator[Problem]:
    """A pinned container range must not contain the gateway, its host's address or the
    address of a host before it. (A later host's address inside it is that host's
    error, reported by the carving: appending a host never makes an earlier one wrong.)"""
    assert c.lan is not None
    named = [("lan.gateway", c.lan.gateway)] + [
        (f"{_host_ref(j, h)} address", h.address) for j, h in enumerate(c.hosts)
    ]
    for i, host in enumerate(c.hosts):
        if host.subnet is None:
            continue
        for what, address in named[: i + 2]:  # the gateway, hosts[0..i]
            if address in host.subnet:
                yield ("hosts", i, "subnet"), f"range {host.subnet} contains {what} {address}"


def _range_count_errors(c: Cluster) -> Iterator[Problem]:
    lan = c.lan
    assert lan is not None and lan.range_len is not None
    pinned = [h.subnet for h in c.hosts if h.subnet is not None]
    free = leases.count_free_blocks(lan.cidr, lan.range_len, [*_bridge_reserved(c), *pinned])
    unpinned = len(c.hosts) - len(pinned)
    if free < unpinned:
        yield (
            ("lan", "range_len"),
            f"range_len {lan.range_len} in {lan.cidr} gives "
            f"{_count(free + len(pinned), 'free range')} for {_count(len(c.hosts), 'host')} "
            "(ranges holding the gateway, a host address or the LAN's network/broadcast "
            "address are skipped)",
        )


# --------------------------------------------------------------------------- errors


def _one_line(text: str) -> str:
    return " ".join(text.split())


def config_error(source: str, exc: ValidationError) -> ConfigError:
    """Translate a pydantic ValidationError into a one-line ConfigError."""
    return model_error(source, exc, Cluster)


# --------------------------------------------------------------------------- load / dump


def parse_cluster(data: dict[str, Any], source: str = "cluster") -> Cluster:
    """Validate a cluster mapping; raises ConfigError (one line, names the field)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_short(data)}")
    try:
        return Cluster.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, exc) from None


# Bounds of the cluster file, checked before anything is built from it: a file is
# read at most MAX_BYTES + 1 bytes (also /dev/zero, pipes); the YAML event stream is
# scanned iteratively first (PyYAML/libyaml compose recursively: 50,000 nested lists
# crash the process) for nesting depth, and for the node count with every alias
# expanded (an "alias bomb" of 9 anchors x 9 aliases is 9^9 nodes), and recursive aliases.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 250_000


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when available: 10x faster
    """SafeLoader that rejects duplicate and unhashable mapping keys instead of keeping
    the last / raising TypeError, and turns any failure of a tag's constructor
    (`!!int abc`, `!!timestamp x`) into a ConstructorError with the node's position."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, MemoryError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - a constructor of the tag failed on this value
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            value = f" {_short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{tag}{value} is not a valid {tag} ({_short(str(exc))[1:-1]})", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!map [a]`: SafeConstructor's own error
            return super().construct_mapping(node, deep=deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: explicit keys override it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a scalar, got a {type(key).__name__}", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)}", key_node.start_mark
                )
            seen.add(key)
        self.flatten_mapping(node)  # resolve merge keys before the keys are constructed
        return super().construct_mapping(node, deep=deep)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(_one_line(f"{path}: {_where(mark)}invalid YAML: {problem}"))


def _check_shape(path: Path, text: str) -> None:
    """Walk the YAML event stream (no recursion, nothing built) and refuse a document
    nested deeper than MAX_DEPTH, larger than MAX_NODES nodes once aliases are
    expanded, or with an alias inside the node it names. Syntax errors are left to
    the real load, which reports them the same way."""
    events = yaml.events
    loader = _UniqueKeyLoader(text)
    stack: list[list[Any]] = []  # per open collection: [anchor, expanded size]
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    total = 0
    try:
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, (events.SequenceStartEvent, events.MappingStartEvent)):
                if len(stack) >= MAX_DEPTH:
                    raise ConfigError(f"{path}: {_where(ev.start_mark)}nested deeper than {MAX_DEPTH} levels")
                stack.append([ev.anchor, 1])
                continue
            if isinstance(ev, (events.SequenceEndEvent, events.MappingEndEvent)):
                anchor, size = stack.pop()
                if anchor is not None:
                    sizes[anchor] = size
            elif isinstance(ev, events.ScalarEvent):
                size = 1
                if ev.anchor is not None:
                    sizes[ev.anchor] = 1
            elif isinstance(ev, events.AliasEvent):
                if any(frame[0] == ev.anchor for frame in stack):
                    raise ConfigError(
                        f"{path}: {_where(ev.start_mark)}alias *{ev.anchor} refers to a node that contains it"
                    )
                size = sizes.get(ev.anchor, 1)  # an undefined alias: the load reports it
            else:
                continue
            if stack:
                stack[-1][1] += size
                size = stack[-1][1]
            else:
                total += size
                size = total
            if size > MAX_NODES:
                raise ConfigError(
                    f"{path}: {_where(ev.start_mark)}more than {MAX_NODES} YAML nodes with aliases expanded "
                    "(a cluster file is far smaller)"
                )
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(getattr(exc, "problem", "") or ""):
            # libyaml (PyYAML >= 6.0.4 wheels) stops at its own depth limit while scanning
            # ahead, before this walk reaches MAX_DEPTH: the same verdict, the same words
            raise ConfigError(f"{path}: {_where(getattr(exc, 'problem_mark', None))}nested deeper than "
                              f"{MAX_DEPTH} levels") from None
        raise _yaml_error(path, exc) from None
    finally:
        loader.dispose()


def _read_bounded(path: Path) -> str:
    """The file's text, at most MAX_BYTES (any kind of file: /dev/zero, a pipe)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a cluster file") from None
    except OSError as exc:
        raise ConfigError(_one_line(f"{path}: cannot read: {exc.strerror or exc}")) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // (1 << 20)} MiB, the limit for a cluster file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None


def load_yaml_text(path: Path, text: str) -> Any:
    """The YAML document in ``text`` as Python data, within the bounds above; every
    problem is a one-line ConfigError starting with ``path``."""
    _check_shape(path, text)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    data = load_yaml_text(path, _read_bounded(path))
    if data is None:
        raise ConfigError(f"{path}: empty file, expected a cluster mapping")
    return parse_cluster(data, source=str(path))


def dump_cluster(cluster: Cluster, path: str | Path) -> None:
    text = yaml.safe_dump(cluster.to_dict(), sort_keys=False, default_flow_style=False)
    Path(path).write_text(text, encoding="utf-8")


__all__ = [  # with the names of the network model it re-exports (crossnet.netmodel)
    "BACKENDS",
    "MAX_SUBNET_LEN",
    "Address",
    "Cluster",
    "HostSpec",
    "IfName",
    "LanSpec",
    "Network",
    "VxlanSpec",
    "WireguardSpec",
    "config_error",
    "dump_cluster",
    "load_cluster",
    "load_yaml_text",
    "parse_cluster",
]
