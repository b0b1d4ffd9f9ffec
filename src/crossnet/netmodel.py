"""One network model: the settings of a container network, as pydantic models, shared by
the cluster file and the stores.

* :class:`NetworkSettings` -- name, backend, network, subnet_len, mtu, masquerade,
  bridge, ``vxlan`` (:class:`VxlanSpec`), ``wireguard`` (:class:`WireguardSpec`) and their
  validators. ``crossnet.config.Cluster`` is a NetworkSettings plus the hosts (and the
  bridge backend's LAN).
* :class:`NetworkConfig` -- the network config of a store: what ``crossnet etcd init``
  writes to etcd and every agent reads (``to_json`` / ``from_json``, a fixed JSON
  format), and what the static store derives from a cluster file. A NetworkSettings
  plus the lease TTL; the network is required and the backend must be one a store can
  lease subnets for.
* :func:`model_error` -- a pydantic ValidationError as the one-line ConfigError naming
  the field (``hosts[1].address: ...``, ``vxlan.vni: ...``), for both.

Here, not in crossnet.config, so that the agent reads its config with pydantic without
importing YAML or building the cluster file's models (start-up time and memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from crossnet import backends, ifname
from crossnet.errors import ConfigError
from crossnet.ipv4 import IPV4_ONLY, ipv4_address, ipv4_problem, short  # noqa: F401 (names of this module too)
from crossnet.netview import ConfigMethods, NamedMethods, SettingsMethods

BACKENDS = backends.backend_names()
STORE_BACKENDS = backends.store_backend_names()
MAX_SUBNET_LEN = 30
MAX_PROBLEMS = 20  # errors reported on a ConfigError's one line; more are counted
DEFAULT_TTL = 60
MIN_TTL = 2

# --------------------------------------------------------------------------- field types


def _parse_address(value: Any) -> Any:
    problem = ipv4_problem(value)
    if problem:
        raise ValueError(problem)
    addr = value if isinstance(value, IPv4Address) else IPv4Address(value.strip())
    problem = _not_unicast(addr)
    if problem:
        raise ValueError(f"{addr} is {problem}, not a unicast host address")
    return addr


def _not_unicast(addr: IPv4Address) -> str | None:
    """Why ``addr`` cannot be a host's or a gateway's address (None if it can)."""
    if addr in IPv4Network("0.0.0.0/8"):
        return "an unspecified ('this network') address"
    if addr == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr in IPv4Network("240.0.0.0/4"):
        return "a reserved (class E) address"
    return None


def _parse_network(value: Any) -> Any:
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"expected an IPv4 network like 10.32.0.0/16, got {short(value)}")
    try:
        return IPv4Network(value.strip())
    except ValueError:
        pass
    try:
        fixed = IPv4Network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"invalid IPv4 network {short(value)}") from None
    raise ValueError(f"{value.strip()} has host bits set (did you mean {fixed}?)")


def in_range(low: int, high: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}..{high}{unit}")
        return value

    return AfterValidator(check)


def _check_ifname(value: str) -> str:
    why = ifname.problem(value)  # the one shared validator (crossnet.ifname)
    if why is not None:
        raise ValueError(why)
    return value


Address = Annotated[IPv4Address, BeforeValidator(_parse_address)]
Network = Annotated[IPv4Network, BeforeValidator(_parse_network)]
IfName = Annotated[str, AfterValidator(_check_ifname)]

# --------------------------------------------------------------------------- models


class VxlanSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vni: Annotated[int, in_range(1, 16_777_215)] = 1
    port: Annotated[int, in_range(1, 65_535)] = 4789


class WireguardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: Annotated[int, in_range(1, 65_535)] = 51820
    device: IfName = "cnwg0"
    keepalive: Annotated[int, in_range(0, 65_535)] = 0  # persistent keepalive seconds, 0 = off
    implementation: Literal["auto", "kernel", "userspace"] = "auto"


class AutoSpec(BaseModel):
    """backend auto (docs/transport.md): `encrypt` puts every peer on WireGuard;
    `probe_network` gives each host a WireGuard probe address (its subnet index + 1)."""

    model_config = ConfigDict(extra="forbid")

    encrypt: bool = False
    probe_network: Network = IPv4Network("198.18.0.0/15")


NETWORK_NAME_RE = r"[a-z][a-z0-9]{0,11}"  # a named network (docs/networks.md); its bridge: cn-<name>
DEFAULT_NETWORK = "default"  # the top-level settings' network, for `--network`


class NamedNetwork(NamedMethods, BaseModel):
    """One more isolated network of a cluster (``networks:``, docs/networks.md): its own
    CIDR, per-host subnets, bridge (default ``cn-<name>``) and VNI (default: the
    top-level VNI + its position + 1). Everything else is the top-level settings'."""

    model_config = ConfigDict(extra="forbid")

    name: str
    network: Network
    subnet_len: int | None = None  # default: the top-level subnet_len
    vni: Annotated[int, in_range(1, 16_777_215)] | None = None
    bridge: IfName | None = None
    masquerade: bool | None = None  # default: the top-level masquerade
    # backends wireguard/auto: its device cnwg<vni>'s port (default: wireguard.port + vni offset, crossnet.wg.named)
    wireguard_port: Annotated[int, in_range(1, 65_535)] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        import re

        if not isinstance(value, str) or not re.fullmatch(NETWORK_NAME_RE, value):
            raise ValueError(f"network name {short(value)} must match {NETWORK_NAME_RE} (lower-case letters and digits)")
        if value == DEFAULT_NETWORK:
            raise ValueError(f"{value!r} names the top-level network; choose another name")
        return value

    @field_validator("bridge")
    @classmethod
    def _check_bridge(cls, value: str | None) -> str | None:
        why = ifname.reserved_problem(value) if value is not None else None
        if why is not None:
            raise ValueError(f"{why}: choose another bridge name")
        return value


class NetworkSettings(SettingsMethods, BaseModel):
    """The settings of one container network, whoever holds them (the cluster file,
    a store). Checks of one field live here; rules between fields that need the hosts
    live in crossnet.config."""

    model_config = ConfigDict(extra="forbid")

    name: str = "crossnet"
    backend: str
    network: Network | None = None
    subnet_len: int = 24
    mtu: Annotated[int, in_range(576, 65_535)] | None = None
    masquerade: bool = False
    datapath: str = "kernel"  # kernel | ebpf: routed container veths (docs/datapath.md)
    bridge: IfName | None = None
    vxlan: VxlanSpec = Field(default_factory=VxlanSpec)
    wireguard: WireguardSpec = Field(default_factory=WireguardSpec)
    auto: AutoSpec = Field(default_factory=AutoSpec)
    dns_domain: str = "crossnet.local"  # containers' names: NAME.<dns_domain> (docs/dns.md)
    networks: list[NamedNetwork] = Field(default_factory=list)  # more isolated networks (docs/networks.md)

    @classmethod
    def backend_problem(cls, value: str) -> str | None:
        """Why ``value`` is no backend for this kind of model (None: it is one)."""
        if value not in BACKENDS:
            return f"unknown backend {short(value)} (choices: {', '.join(BACKENDS)})"
        return None

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        problem = cls.backend_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("datapath")
    @classmethod
    def _check_datapath(cls, value: str) -> str:
        if value not in backends.DATAPATHS:
            raise ValueError(backends.datapath_problem("", value))
        return value

    @model_validator(mode="after")
    def _check_datapath_backend(self) -> NetworkSettings:
        problem = backends.datapath_problem(self.backend, self.datapath)
        if problem:
            raise problems_error(type(self).__name__, [(("datapath",), problem)])
        return self

    @field_validator("dns_domain")
    @classmethod
    def _check_dns_domain(cls, value: str) -> str:
        from crossnet.dns import domain_problem, normalize

        why = domain_problem(value)
        if why:
            raise ValueError(why)
        return normalize(value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value:
            raise ValueError("must be a non-empty string")
        return value

    @field_validator("bridge")
    @classmethod
    def _check_bridge(cls, value: str | None) -> str | None:
        """Not a device crossnet creates itself: `bridge: cnvx1` would make the bridge
        and the VXLAN device one device."""
        why = ifname.reserved_problem(value) if value is not None else None
        if why is not None:
            raise ValueError(f"{why}: choose another bridge name")
        return value


Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def problems_error(title: str, problems: list[Problem]) -> ValidationError:
    """Problems found by a model validator, each on its field, as the ValidationError
    pydantic raises for field problems (so both are reported the same way)."""
    return ValidationError.from_exception_data(
        title,
        [InitErrorDetails(type=PydanticCustomError("crossnet", msg), loc=loc, input=None) for loc, msg in problems],
    )


def subnet_len_problem(network: IPv4Network, subnet_len: int) -> str | None:
    """Why hosts cannot have /``subnet_len`` subnets of ``network`` (None: they can)."""
    if not network.prefixlen < subnet_len <= MAX_SUBNET_LEN:
        return (
            f"{subnet_len} must be longer than the /{network.prefixlen} of network {network} "
            f"and at most {MAX_SUBNET_LEN}"
        )
    return None


NETWORKS_BACKENDS = ("host-gw", "vxlan", "wireguard", "auto", "ovs-gre", "ovs-vxlan")  # backends that carry several networks (docs/networks.md)
MAX_NETWORKS = 64  # named networks a store's config may carry (a hostile record cannot make thousands)


def networks_backend_problem(backend: str) -> str:
    """Why ``backend`` carries no named networks, and what to use instead."""
    use = ", ".join(NETWORKS_BACKENDS)
    if backend in backends.lan_backend_names():  # bridge: the NIC in br0, containers on the LAN itself
        return (f"backend {backend} is one LAN segment (the host NIC in its bridge, no tunnel to keep networks "
                f"apart; this machine has no VLAN module): networks need one of {use}")
    return f"backend {backend} carries one network; several need one of {use}"


def named_network_problems(backend: str, network: IPv4Network | None, subnet_len: int, vni: int, bridge: str,
                           networks: list[NamedNetwork], reserved: dict[str, str] | None = None, *,
                           wireguard: WireguardSpec | None = None, vxlan_port: int = 4789) -> Iterator[Problem]:
    """The rules of ``networks:`` that need no hosts, for the cluster file (crossnet.config)
    and a store's config alike: a backend that carries several networks, unique names,
    CIDRs that overlap neither the top-level network nor each other, distinct VNIs
    (default: ``vni`` + position + 1) and bridges (``reserved``: more names taken, e.g.
    the hosts' NICs), a valid ``subnet_len``; with WireGuard (``wireguard``: the top-level
    settings), distinct ports and devices (crossnet.wg.named)."""
    if not networks:
        return
    if backend not in NETWORKS_BACKENDS:
        yield ("networks",), networks_backend_problem(backend)
        return
    names: dict[str, str] = {}
    wg_nets: list[tuple[int, int, int | None]] = []  # (position, VNI, own wireguard_port): crossnet.wg.named
    nets: list[tuple[str, IPv4Network]] = [("network", network)] if network is not None else []
    vnis = {vni: "vxlan.vni"}
    bridges = {bridge: "bridge", **{k: v for k, v in (reserved or {}).items() if k != bridge}}
    for i, net in enumerate(networks):
        where = f"networks[{i}]"
        if net.name in names:
            yield (("networks", i, "name"), f"duplicate network name {net.name!r} (also {names[net.name]})")
        names.setdefault(net.name, where)
        for other, cidr in nets:
            if cidr.overlaps(net.network):
                yield (("networks", i, "network"), f"{net.network} overlaps {other} {cidr}")
        nets.append((f"{where}.network", net.network))
        one_vni = net.vni or vni + i + 1
        wg_nets.append((i, one_vni, net.wireguard_port))
        if one_vni in vnis:
            yield (("networks", i, "vni"), f"VNI {one_vni} is already {vnis[one_vni]}'s")
        vnis.setdefault(one_vni, f"{where}.vni")
        one_bridge = net.bridge_name()
        if one_bridge in bridges:
            yield (("networks", i, "bridge"), f"bridge {one_bridge} is already {bridges[one_bridge]}")
        bridges.setdefault(one_bridge, f"{where}.bridge")
        problem = subnet_len_problem(net.network, net.subnet_len or subnet_len)
        if problem:
            yield (("networks", i, "subnet_len"), problem)
    from crossnet.wg import named

    wg = wireguard or WireguardSpec()
    yield from named.problems(backend, wg.port, wg.device, vxlan_port, vni, wg_nets, bridges)


class NetworkConfig(ConfigMethods, NetworkSettings):
    """A store's network config (`crossnet etcd init` writes it, every agent reads it).

    Built from keywords (``NetworkConfig(network="10.32.0.0/16", backend="vxlan")``),
    it raises a ConfigError ``config: <field>: <why>``; ``from_json`` names its source.
    The JSON format is fixed (records in etcd must keep loading): see ``to_json``."""

    backend: str = "vxlan"
    network: Network
    ttl: Annotated[int, in_range(MIN_TTL, 2**31 - 1, " seconds")] = DEFAULT_TTL

    def __init__(self, **data: Any) -> None:  # also what model_validate calls
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _Invalid(exc) from None

    @classmethod
    def backend_problem(cls, value: str) -> str | None:
        if value not in STORE_BACKENDS:
            hint = f" ({value} needs the static cluster file)" if value in backends.lan_backend_names() else ""
            return f"{short(value)} is not supported with a store{hint}; choose from {', '.join(STORE_BACKENDS)}"
        return None

    @model_validator(mode="after")
    def _check_subnet_len(self) -> NetworkConfig:
        found = list(named_network_problems(self.backend, self.network, self.subnet_len, self.vxlan.vni,
                                            self.bridge_name, self.networks, wireguard=self.wireguard,
                                            vxlan_port=self.vxlan.port))
        if len(self.networks) > MAX_NETWORKS:
            found.insert(0, (("networks",), f"{len(self.networks)} networks: a store carries at most {MAX_NETWORKS}"))
        if found:  # the cluster file's rules that need no hosts (the store has none)
            raise problems_error(type(self).__name__, found)
        problem = subnet_len_problem(self.network, self.subnet_len)
        if problem:
            raise problems_error(type(self).__name__, [(("subnet_len",), problem)])
        probe = self.auto.probe_network
        if self.backend == "auto" and probe.overlaps(self.network):
            raise problems_error(type(self).__name__, [(("auto", "probe_network"), f"{probe} overlaps network {self.network}")])
        return self

    @classmethod
    def of(cls, settings: NetworkSettings) -> NetworkConfig:
        """The network config of a cluster file (the static store): its network
        settings, WireGuard's and auto's as ``apply`` uses them (``transport_settings``)."""
        data = {k: getattr(settings, k) for k in NetworkSettings.model_fields}
        data["wireguard"], data["auto"] = settings.transport_settings()
        return cls(**data)

    @classmethod
    def from_json(cls, data: Any, source: str = "config") -> NetworkConfig:
        return cls.parse(data, source)

    @classmethod
    def parse(cls, data: Any, source: str = "config", label: Callable[[str], str] | None = None) -> NetworkConfig:
        """Validate a mapping (the JSON of ``to_json``; ``"vxlan": null`` and
        ``"wireguard": null`` mean the defaults); a ConfigError names ``source`` and the
        field, or only the field's ``label`` (e.g. a command-line option) when source is
        empty."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {short(data)}")
        data = {k: v for k, v in data.items() if not (k in ("vxlan", "wireguard", "auto") and v is None)}
        try:
            return cls.model_validate(data)
        except _Invalid as exc:
            raise model_error(source, exc.validation, cls, label) from None


class _Invalid(ConfigError):
    """A NetworkConfig that does not validate: ``config: <field>: <why>``; ``parse``
    names its own source instead."""

    def __init__(self, validation: ValidationError) -> None:
        super().__init__(str(model_error("config", validation, NetworkConfig)))
        self.validation = validation


# --------------------------------------------------------------------------- errors


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if not isinstance(part, int):
            part = str(part) if len(str(part)) <= 40 else short(str(part))  # an unknown key may be long
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(root: type[BaseModel], parent: Loc) -> str:
    model = root
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            break
        model = inner
    return ", ".join(model.model_fields)


def _format_error(err: Any, root: type[BaseModel]) -> tuple[str, str]:
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "missing":
        msg = "required"
    elif kind == "extra_forbidden":
        msg = f"unknown key (allowed: {_allowed_keys(root, loc[:-1])})"
    elif kind == "value_error":
        msg = str(err["ctx"]["error"])
    elif kind == "crossnet":
        msg = err["msg"]
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping, got {short(err['input'])}"
    else:
        msg = f"{err['msg'][:1].lower()}{err['msg'][1:]} (got {short(err['input'])})"
    return _format_loc(loc) or "(top level)", msg


def _one_line(text: str) -> str:
    return " ".join(text.split())


def model_error(source: str, exc: ValidationError, root: type[BaseModel],
                label: Callable[[str], str] | None = None) -> ConfigError:
    """A pydantic ValidationError of ``root`` as a one-line ConfigError:
    ``<source>: <field>: <why>; <field>: <why>`` (``label`` renames the fields)."""
    pairs = [_format_error(e, root) for e in exc.errors()]
    parts = list(dict.fromkeys(f"{label(f) if label else f}: {m}" for f, m in pairs))  # dedupe, keep order
    more = len(parts) - MAX_PROBLEMS
    if more > 0:
        parts = parts[:MAX_PROBLEMS] + [f"... and {more} more"]
    text = "; ".join(parts)
    return ConfigError(_one_line(f"{source}: {text}" if source else text))
