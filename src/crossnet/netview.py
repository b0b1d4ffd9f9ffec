"""The network config without pydantic: what the long-running processes hold (issue
13's budget, etcd member + agent ≤ 80 MB; crossnet.netconfig validates in a helper).

The one network model stays :mod:`crossnet.netmodel` (pydantic): every config is
validated by it, nothing here validates. Here:

* the methods of the model that only read fields (``SettingsMethods``,
  ``ConfigMethods``: ``vni``, ``port``, ``bridge_name``, ``network_vni``, ``to_json``,
  ``transport_settings``; ``NamedMethods``): the pydantic models inherit them, and so do
* the *views* (:class:`NetworkConfigView` and its parts): frozen, plain objects with the
  model's fields, ``model_fields``, ``model_fields_set``, ``model_dump`` and
  ``model_copy``, built (``decode``) from what the model validated;
* :func:`encode`: a model (or view) as plain JSON, its values and which fields were
  set (``to_json`` writes WireGuard's and auto's settings only when they were given);
  :func:`as_input`: a model's fields that were set, as input to build another.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar

# ---------------------------------------------------------------- methods that only read


class SettingsMethods:
    """Of NetworkSettings (the cluster file's and a store's network settings)."""

    def transport_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(wireguard, auto) as the data plane takes them: WireGuard's settings for
        backends wireguard and auto, auto's for auto, empty otherwise. The one rule for
        ``program.Settings`` (cluster file and store) and ``NetworkConfig.of``."""
        wireguard = self.wireguard.model_dump() if self.backend in ("wireguard", "auto") else {}
        auto = self.auto.model_dump(mode="json") if self.backend == "auto" else {}
        return wireguard, auto


class ConfigMethods(SettingsMethods):
    """Of NetworkConfig (a store's network config): what the agent reads, and the store's JSON."""

    @property
    def vni(self) -> int:
        return self.vxlan.vni

    @property
    def port(self) -> int:
        return self.vxlan.port

    @property
    def bridge_name(self) -> str:
        return self.bridge or "cn0"

    def network_vni(self, index: int) -> int:
        """VNI of networks[index]: its own, or the top-level VNI + index + 1 (as the cluster file's)."""
        return self.networks[index].vni or self.vxlan.vni + index + 1

    def to_json(self) -> dict[str, Any]:
        """``{"name", "network", "subnet_len", "backend", "ttl", "masquerade", "mtu",
        "vxlan": {"vni", "port"}, "bridge"}``, plus ``"wireguard"`` with the settings that
        were given (none given: no key), and ``"auto"`` likewise."""
        wireguard = self.wireguard.model_dump(exclude_unset=True)
        auto = self.auto.model_dump(mode="json", exclude_unset=True)
        return {
            "name": self.name,
            "network": str(self.network),
            "subnet_len": self.subnet_len,
            "backend": self.backend,
            "ttl": self.ttl,
            "masquerade": self.masquerade,
            "mtu": self.mtu,
            "vxlan": {"vni": self.vxlan.vni, "port": self.vxlan.port},
            "bridge": self.bridge,
            **({"wireguard": wireguard} if wireguard else {}),
            **({"auto": auto} if auto else {}),
            **({"dns_domain": self.dns_domain} if self.dns_domain != "crossnet.local" else {}),
            **({"networks": [n.model_dump(mode="json", exclude_none=True) for n in self.networks]}
               if self.networks else {}),
            **({"datapath": self.datapath} if self.datapath != "kernel" else {}),
        }


class NamedMethods:
    """Of NamedNetwork (one more isolated network)."""

    def bridge_name(self) -> str:
        return self.bridge or f"cn-{self.name}"


# ---------------------------------------------------------------- views


class _View:
    """A frozen record of one model's fields (the model validated them).
    ``_nested``: field -> view class (a list of them for ``networks``);
    ``_networks``: fields holding an IPv4Network."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _nested: ClassVar[dict[str, type[_View]]] = {}
    _networks: ClassVar[frozenset[str]] = frozenset()
    model_fields: ClassVar[dict[str, None]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.model_fields = dict.fromkeys(cls._fields)

    def __init__(self, *, _set: frozenset[str] | None = None, **values: Any) -> None:
        unknown = set(values) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}")
        missing = set(self._fields) - set(values)
        if missing:
            raise TypeError(f"{type(self).__name__}: missing fields {sorted(missing)}")
        for k, v in values.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "model_fields_set", frozenset(values) if _set is None else frozenset(_set))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"

    def model_dump(self, *, mode: str = "python", exclude: set[str] | None = None, exclude_unset: bool = False,
                   exclude_none: bool = False) -> dict[str, Any]:
        """As pydantic's ``model_dump`` of the same model (the flags apply to nested models too)."""
        out: dict[str, Any] = {}
        for f in self._fields:
            if (exclude and f in exclude) or (exclude_unset and f not in self.model_fields_set):
                continue
            v = getattr(self, f)
            if exclude_none and v is None:
                continue
            out[f] = _dump(v, mode, exclude_unset, exclude_none)
        return out

    def model_copy(self, *, update: dict[str, Any] | None = None) -> _View:
        values = {f: getattr(self, f) for f in self._fields}
        values.update(update or {})
        return type(self)(_set=self.model_fields_set | set(update or ()), **values)

    @classmethod
    def decode(cls, enc: dict[str, Any]) -> _View:
        """The view of :func:`encode`'s form of a model of this kind."""
        values = {}
        for f in cls._fields:
            v = enc["values"][f]
            nested = cls._nested.get(f)
            if nested is not None:
                v = [nested.decode(x) for x in v] if isinstance(v, list) else nested.decode(v)
            elif f in cls._networks and v is not None:
                v = IPv4Network(v)
            values[f] = v
        return cls(_set=frozenset(enc["set"]), **values)


def _dump(v: Any, mode: str, exclude_unset: bool, exclude_none: bool) -> Any:
    if getattr(type(v), "model_fields", None) is not None:  # a view or a pydantic model
        return v.model_dump(mode=mode, exclude_unset=exclude_unset, exclude_none=exclude_none)
    if isinstance(v, list | tuple):
        return [_dump(x, mode, exclude_unset, exclude_none) for x in v]
    if mode == "json" and isinstance(v, IPv4Network | IPv4Address):
        return str(v)
    return v


class VxlanView(_View):
    _fields = ("vni", "port")


class WireguardView(_View):
    _fields = ("port", "device", "keepalive", "implementation")


class AutoView(_View):
    _fields = ("encrypt", "probe_network")
    _networks = frozenset({"probe_network"})


class NamedNetworkView(NamedMethods, _View):
    _fields = ("name", "network", "subnet_len", "vni", "bridge", "masquerade", "wireguard_port")
    _networks = frozenset({"network"})


class NetworkConfigView(ConfigMethods, _View):
    _fields = ("name", "backend", "network", "subnet_len", "mtu", "masquerade", "datapath", "bridge", "vxlan",
               "wireguard", "auto", "dns_domain", "networks", "ttl")
    _nested = {"vxlan": VxlanView, "wireguard": WireguardView, "auto": AutoView, "networks": NamedNetworkView}
    _networks = frozenset({"network"})


# ---------------------------------------------------------------- the wire form


def encode(value: Any) -> Any:
    """A model (pydantic or view) as plain JSON: ``{"values": {field: ...}, "set": [...]}``."""
    fields = getattr(type(value), "model_fields", None)
    if fields is not None:
        return {"values": {f: encode(getattr(value, f)) for f in fields}, "set": sorted(value.model_fields_set)}
    if isinstance(value, list | tuple):
        return [encode(x) for x in value]
    if isinstance(value, IPv4Network):
        return str(value)
    return value


def as_input(fields: dict[str, Any]) -> dict[str, Any]:
    """A model's fields (values may be models or views) as JSON input to build it: each
    model as ``model_dump(mode="json", exclude_unset=True)``, so the model built from it
    knows the same ones set (``to_json`` writes only those)."""
    return {k: _dump(v, "json", exclude_unset=True, exclude_none=False) for k, v in fields.items()}
