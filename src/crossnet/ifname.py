"""The one validator for interface names that come from input (cluster file, CLI,
CNI config, store records), and the names crossnet gives its own devices.

A name is accepted when Linux accepts it (``dev_valid_name``: 1..15 bytes, not ``.``
or ``..``, no ``/``, ``:`` or whitespace) AND it only uses letters, digits, ``.``,
``-`` and ``_`` and does not start with ``-``: such a name is safe to paste into an
nft script, an ``ip``/``ovs-vsctl`` command line or a log line without quoting
surprises. Real NIC names (eth0, ens3, enp0s31f6, eth0.100, br-1a2b) all pass.

    problem(name) -> None | "interface name 'x y' must not contain whitespace"
    check(name, field) -> name, or raises ConfigError("FIELD: interface name ...")
    reserved_problem(name, ...) -> why NAME collides with a device crossnet creates
"""

from __future__ import annotations

import re
from typing import Any

from crossnet.errors import ConfigError

IFNAMSIZ = 16  # including the terminating NUL: names are 1..15 bytes
MAX_LEN = IFNAMSIZ - 1

_ALLOWED = re.compile(r"[A-Za-z0-9._-]+")

# devices crossnet creates (see backends/*, containers.py, backends/ovs.py)
VXLAN_RE = re.compile(r"cnvx[0-9]+")  # the VXLAN device cnvx<VNI>
VETH_RE = re.compile(r"cn[vt][0-9a-f]{10}")  # host side of a container veth (cnv<hash>), its temp name (cnt<hash>)
OVS_FIXED = ("cnovs0", "br-phy")  # OVS overlay bridge, userspace-datapath physical bridge
WIREGUARD_DEFAULT = "cnwg0"  # the WireGuard device (wireguard.device overrides it)
OVS_TUNNEL_RE = re.compile(r"(gre|vxl)-.*")  # OVS tunnel ports, one per peer
DEFAULT_BRIDGES = ("br0", "cn0")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def problem(name: Any) -> str | None:
    """Why ``name`` is not an acceptable interface name, or None when it is."""
    if not isinstance(name, str):
        return f"expected an interface name (a string), got {_short(name)}"
    what = f"interface name {_short(name)}"
    if not name:
        return "interface name must not be empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_LEN:
        return f"{what} must be 1..{MAX_LEN} characters"
    if name in (".", ".."):
        return f"{what} is not allowed ('.' and '..' are not interface names)"
    if "/" in name or ":" in name:
        return f"{what} must not contain '/' or ':'"
    if any(ch.isspace() for ch in name) or "\0" in name:
        return f"{what} must not contain whitespace"
    if not _ALLOWED.fullmatch(name):
        return f"{what} may only use letters, digits, '.', '-' and '_'"
    if name.startswith("-"):
        return f"{what} must not start with '-'"
    return None


def check(name: Any, field: str) -> str:
    """``name`` if valid, else ConfigError ``FIELD: <problem>`` (exit 2)."""
    why = problem(name)
    if why is not None:
        raise ConfigError(f"{field}: {why}")
    return name


def reserved_problem(name: str, *, bridge: str | None = None) -> str | None:
    """Why ``name`` collides with a device crossnet creates itself, or None.

    ``bridge`` is the container bridge's name (crossnet creates it, so an underlay
    NIC must not carry it); leave it None when checking the bridge name itself,
    which may be anything but crossnet's other devices."""
    if VXLAN_RE.fullmatch(name):
        return f"{name} is the name of crossnet's VXLAN device (cnvx<VNI>)"
    if VETH_RE.fullmatch(name):
        return f"{name} has the form of crossnet's container veths (cnv<hash>/cnt<hash>)"
    if name == WIREGUARD_DEFAULT:
        return f"{name} is the name of crossnet's WireGuard device"
    if name in OVS_FIXED:
        return f"{name} is a device of crossnet's Open vSwitch backends"
    if OVS_TUNNEL_RE.fullmatch(name):
        return f"{name} has the form of crossnet's Open vSwitch tunnel ports (gre-*, vxl-*)"
    if bridge is not None and name == bridge:
        return f"{name} is the container bridge crossnet creates (bridge)"
    return None


# ---- the forms other modules use (one check underneath: problem())


def valid_ifname(name: Any) -> bool:
    """True when ``name`` passes problem() (the kernel's rules and the safe alphabet)."""
    return problem(name) is None


def check_ifname(name: Any, field: str) -> str:
    """``name`` if valid, else ConfigError naming ``field`` (one line)."""
    return check(name, field)


def nft_ifname(name: Any, field: str) -> str:
    """``name`` as a double-quoted nftables string, after check(): the safe alphabet
    holds no quote, backslash or control character, so nothing can leave the string."""
    return f'"{check(name, field)}"'
