"""Where a network config is validated: in this process with the model
(crossnet.netmodel, pydantic), or -- after :func:`use_helper`, in the long-running
processes (`crossnet launch`'s, the agent's) -- in a short-lived helper process
(``python -S -m crossnet.netconfig``, as crossnet.mesh.signer signs) whose answer
becomes a pydantic-free view (crossnet.netview). pydantic and the model are ~9 MB of
the process issue 13 counts (etcd member + agent ≤ 80 MB; docs/mesh.md, "Resources").

* :func:`parse` (``NetworkConfig.parse``: a store's JSON) and :func:`build`
  (``NetworkConfig(**fields)``): the same validation and the same one-line ConfigError
  either way; a NetworkConfig or a NetworkConfigView (same fields and methods).
* :func:`named` (``NamedNetwork(**fields)`` of this host's own records): in helper mode
  checked for types only; :func:`build` validates the networks with the rest.

Protocol of the helper (crossnet.helper): ``{"op": "parse", "data", "source"}`` or
``{"op": "build", "data"}`` in; ``{"config": ENCODED}`` (``netview.encode``: the
model's values and which fields were set) or ``{"error", "kind"}`` out.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Network
from typing import Any

from crossnet.errors import ConfigError
from crossnet.netview import NamedNetworkView, NetworkConfigView, as_input, encode

HELPER_TIMEOUT = 30.0
HELPER_MODULE = "crossnet.netconfig"
_HELPER = False


def use_helper(on: bool = True) -> None:
    """Validate configs in a helper process from now on (this process never imports pydantic)."""
    global _HELPER
    _HELPER = on


def parse(data: Any, source: str = "config") -> Any:
    """``NetworkConfig.parse(data, source)``: a NetworkConfig, or its view in helper mode."""
    if not _HELPER:
        from crossnet.netmodel import NetworkConfig

        return NetworkConfig.parse(data, source)
    return NetworkConfigView.decode(_ask({"op": "parse", "data": data, "source": source})["config"])


def build(**fields: Any) -> Any:
    """``NetworkConfig(**fields)`` (fields may hold views): a NetworkConfig, or its view in helper mode."""
    if not _HELPER:
        from crossnet.netmodel import NetworkConfig

        return NetworkConfig(**fields)
    return NetworkConfigView.decode(_ask({"op": "build", "data": as_input(fields)})["config"])


def named(**fields: Any) -> Any:
    """``NamedNetwork(**fields)`` of this host's own records; in helper mode a view whose
    values have the right types (TypeError/ValueError otherwise, as the model's
    ValidationError is a ValueError): :func:`build` validates it with the config."""
    if not _HELPER:
        from crossnet.netmodel import NamedNetwork

        return NamedNetwork(**fields)
    values = dict.fromkeys(NamedNetworkView._fields)
    values.update(fields)
    for f in ("subnet_len", "vni", "wireguard_port"):
        if values[f] is not None and (type(values[f]) is not int):
            raise TypeError(f"{f}: {values[f]!r} is no integer")
    for f in ("name", "bridge"):
        if values[f] is not None and not isinstance(values[f], str):
            raise TypeError(f"{f}: {values[f]!r} is no string")
    if not isinstance(values["network"], str | IPv4Network):
        raise ValueError(f"network: {values['network']!r} is no IPv4 network")
    values["network"] = IPv4Network(values["network"])  # ValueError when it is none
    return NamedNetworkView(_set=frozenset(fields), **values)


def _ask(request: dict) -> dict:
    from crossnet import helper

    return helper.run(HELPER_MODULE, request, "network config helper", HELPER_TIMEOUT)


# ---------------------------------------------------------------- the helper process


def serve(req: dict) -> dict:
    from crossnet.netmodel import NetworkConfig

    if req.get("op") == "parse":
        cfg = NetworkConfig.parse(req.get("data"), str(req.get("source") or "config"))
    elif req.get("op") == "build" and isinstance(req.get("data"), dict):
        cfg = NetworkConfig(**req["data"])
    else:
        return {"error": f"unknown request {req.get('op')!r}", "kind": "error"}
    return {"config": encode(cfg)}


def main() -> int:
    from crossnet import helper, netmodel  # noqa: F401 - the model first: a helper started ahead is ready

    return helper.serve_stdin(serve, {ConfigError: "config"})


def prestart() -> None:
    """Start the helper now when configs are validated in one (an agent's start-up: it
    imports the model while the agent connects to its store)."""
    if _HELPER:
        from crossnet import helper

        helper.prestart(HELPER_MODULE)


if __name__ == "__main__":
    sys.exit(main())
