"""IPv4 address checks and the short form of hostile values in messages, without
pydantic: what the long-running agent checks of command-line input and records
(crossnet.netmodel builds its field types on them and re-exports them)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from crossnet.errors import ConfigError


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (values in messages may be hostile)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


IPV4_ONLY = "crossnet's underlay and container networks are IPv4 only (docs/transport.md)"


def ipv4_problem(value: Any) -> str | None:
    """Why `value` is no IPv4 address (None: it is one). An IPv6 address is named as such:
    crossnet is IPv4 only (its overheads, probes and records assume IPv4)."""
    if isinstance(value, IPv4Address):
        return None
    if not isinstance(value, str):
        return f"expected an IPv4 address like 10.0.0.1, got {short(value)}"
    try:
        IPv4Address(value.strip())
        return None
    except ValueError:
        pass
    try:
        IPv6Address(value.strip().split("%", 1)[0])
    except ValueError:
        return f"invalid IPv4 address {short(value)}"
    return f"{short(value.strip())} is an IPv6 address: {IPV4_ONLY}"


def ipv4_address(value: str, field: str) -> IPv4Address:
    """`value` as an IPv4 address, else ConfigError naming `field` (e.g. ``--address``)."""
    problem = ipv4_problem(value)
    if problem:
        raise ConfigError(f"{field}: {problem}")
    return IPv4Address(value.strip())
