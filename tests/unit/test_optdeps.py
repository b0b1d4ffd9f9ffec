"""A missing optional package is one line naming what to install (crossnet.optdeps), not
`internal error: ModuleNotFoundError`: at the import (OVSDB without ovsdbapp, agent
--metrics-address without prometheus_client) and in the CLI's last-resort handler
(`crossnet keygen` without cryptography). A missing crossnet module stays an internal error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crossnet import optdeps
from crossnet.errors import CrossnetError


def _missing(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ModuleNotFoundError


def test_ovsdb_without_ovsdbapp_names_the_package(monkeypatch, tmp_path):
    from crossnet.ovs.db import OvsDb

    _missing(monkeypatch, "ovsdbapp")
    with pytest.raises(optdeps.MissingDependency) as err:
        OvsDb(socket=str(tmp_path / "db.sock"))
    msg = str(err.value)
    assert msg == ("missing Python package 'ovsdbapp' (needed for the Open vSwitch backends (ovs-gre, ovs-vxlan)): "
                   "pip install 'crossnet[ovs]' (Debian: apt install python3-ovsdbapp)")
    assert isinstance(err.value, CrossnetError) and "\n" not in msg


def test_metrics_without_prometheus_client(monkeypatch):
    from types import SimpleNamespace

    from crossnet.agent import metrics

    _missing(monkeypatch, "prometheus_client")
    with pytest.raises(optdeps.MissingDependency, match=r"needed for --metrics-address\): pip install prometheus-client"):
        metrics.AgentMetrics(SimpleNamespace())


def test_needed_lets_other_import_errors_through(monkeypatch):
    _missing(monkeypatch, "crossnet_nosuch_dep")
    with pytest.raises(ModuleNotFoundError), optdeps.needed("ovsdbapp"):
        import crossnet_nosuch_dep  # noqa: F401
    with pytest.raises(ImportError, match="boom"), optdeps.needed("ovsdbapp"):
        raise ImportError("boom")


def test_missing_knows_only_third_party_packages():
    assert optdeps.missing(ModuleNotFoundError("x", name="crossnet.config")) is None
    assert optdeps.missing(ModuleNotFoundError("x", name=None)) is None
    err = optdeps.missing(ModuleNotFoundError("x", name="dnslib.dns"))
    assert err is not None and "apt install python3-dnslib" in str(err)


def _cli_without(module: str, *argv: str) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from crossnet.cli.main import main\n"
            f"main({list(argv)!r})\n")
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_cli_says_what_to_install(tmp_path):
    proc = _cli_without("cryptography", "--state-dir", str(tmp_path / "s"), "keygen")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ("crossnet: error: missing Python package 'cryptography' (needed for WireGuard keys and "
                           "the mesh's certificates): pip install cryptography (Debian: apt install python3-cryptography)\n")


def test_a_missing_crossnet_module_is_still_an_internal_error(tmp_path):
    proc = _cli_without("crossnet.cli.wg", "--state-dir", str(tmp_path / "s"), "keygen")
    assert proc.returncode == 70 and "internal error: ModuleNotFoundError" in proc.stderr
