"""Optional third-party packages: when one is missing, one line naming what to install
(``crossnet: error: missing Python package 'ovsdbapp' (needed for the Open vSwitch
backends (ovs-gre, ovs-vxlan)): pip install 'crossnet[ovs]' (Debian: apt install python3-ovsdbapp)``) instead of an internal error.

``needed(module)`` wraps the import where it happens; the CLI's last-resort handler
(crossnet.cli.main) turns any other ModuleNotFoundError of a package listed here into
the same line. A missing crossnet module stays an internal error (a broken install).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from crossnet.errors import CrossnetError

# top-level module -> (what needs it, pip requirement, Debian package)
PACKAGES: dict[str, tuple[str, str, str]] = {
    "ovsdbapp": ("the Open vSwitch backends (ovs-gre, ovs-vxlan)", "'crossnet[ovs]'", "python3-ovsdbapp"),
    "ovs": ("the Open vSwitch backends (ovs-gre, ovs-vxlan)", "'crossnet[ovs]'", "python3-openvswitch"),
    "dnslib": ("container DNS (crossnet.dns)", "dnslib", "python3-dnslib"),
    "cryptography": ("WireGuard keys and the mesh's certificates", "cryptography", "python3-cryptography"),
    "prometheus_client": ("agent --metrics-address", "prometheus-client", "python3-prometheus-client"),
    "yaml": ("cluster files", "PyYAML", "python3-yaml"),
    "pyroute2": ("netlink", "pyroute2", "python3-pyroute2"),
    "pydantic": ("cluster file validation", "pydantic", "python3-pydantic"),
    "rich": ("tables of status/check", "rich", "python3-rich"),
}


class MissingDependency(CrossnetError):
    """An optional package is not installed."""


def missing(exc: ModuleNotFoundError, purpose: str | None = None) -> MissingDependency | None:
    """The one-line error for ``exc`` when it names a package listed here, else None."""
    top = (exc.name or "").partition(".")[0]
    if top not in PACKAGES:
        return None
    what, pip, apt = PACKAGES[top]
    return MissingDependency(f"missing Python package {top!r} (needed for {purpose or what}): "
                             f"pip install {pip} (Debian: apt install {apt})")


@contextlib.contextmanager
def needed(module: str, purpose: str | None = None) -> Iterator[None]:
    """``with needed("ovsdbapp"): from ovsdbapp import ...`` — a missing ``module`` becomes
    MissingDependency; any other import error passes unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != module:
            raise
        err = missing(exc, purpose)
        if err is None:
            raise
        raise err from None
