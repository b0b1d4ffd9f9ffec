"""The installation scripts/install made (CI: /opt/crossnet, installed from this checkout
just before the tests; CROSSNET_PREFIX names another one): nothing in it refers to the
checkout, only runtime dependencies are in it, and a second scripts/install with the same
checkout changes nothing. Skipped where crossnet was not installed by scripts/install
(a development machine). Uninstalling is tested on a copy in tests/unit/test_uninstall.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("CROSSNET_PREFIX", "/opt/crossnet"))
MANIFEST = PREFIX / "share" / "crossnet" / "install.json"

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"crossnet not installed by scripts/install in {PREFIX}")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def source_id(root: Path) -> str:
    """scripts/install's identity of a checkout (sha256sum of pyproject.toml and src/)."""
    files = [Path("pyproject.toml")] + sorted(
        (p.relative_to(root) for p in (root / "src").rglob("*") if p.is_file()
         and "__pycache__" not in p.parts and not any(x.endswith(".egg-info") for x in p.parts)),
        key=lambda p: os.fsencode(str(p)))
    lines = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _snapshot(manifest: dict) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(PREFIX):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, st.st_size, st.st_mode)
    for link in manifest["links"]:
        out[link] = (os.readlink(link), os.lstat(link).st_mtime_ns)
    return out


def test_nothing_installed_refers_to_the_checkout(manifest):
    needle = str(CHECKOUT).encode()
    assert len(needle) > 1
    found = []
    for dirpath, _, filenames in os.walk(PREFIX):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                if needle in os.fsencode(os.readlink(p)):
                    found.append(p)
                continue
            with open(p, "rb") as fh:
                if needle in fh.read():
                    found.append(p)
    assert found == []
    prefix = os.path.realpath(PREFIX)
    for link in manifest["links"]:
        assert os.path.realpath(link).startswith(prefix + "/"), link
    # the commands run from the installation, from anywhere, with no help from the checkout
    bin_dir = manifest["bin_dir"]
    proc = subprocess.run([f"{bin_dir}/crossnet", "--version"], capture_output=True, text=True, cwd="/",
                          env=_env(), timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("crossnet, version "), proc
    proc = subprocess.run([str(PREFIX / "bin" / "python"), "-c", "import crossnet; print(crossnet.__file__)"],
                          capture_output=True, text=True, cwd="/", env=_env(), timeout=60, check=False)
    assert proc.stdout.strip().startswith(prefix + "/lib/"), proc


def test_only_runtime_dependencies_and_the_prebuilt_cni_client(manifest):
    code = ("import importlib.util as u; print(' '.join(m for m in "
            "('pyroute2','pydantic','yaml','click','rich','cryptography','dnslib','prometheus_client',"
            "'ovsdbapp','ovs','pytest','hypothesis','matplotlib','pyinstrument') if u.find_spec(m)))")
    proc = subprocess.run([str(PREFIX / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd="/", env=_env(), timeout=60, check=False)
    assert proc.stdout.split() == ["pyroute2", "pydantic", "yaml", "click", "rich", "cryptography", "dnslib",
                                   "prometheus_client", "ovsdbapp", "ovs"], proc
    client = PREFIX / "libexec" / "crossnet" / "crossnet-cni"
    assert client.read_bytes()[:4] == b"\x7fELF" and os.access(client, os.X_OK)


def test_a_second_install_changes_nothing(manifest):
    have = (PREFIX / "share" / "crossnet" / "source.sha256").read_text().strip()
    if have != source_id(CHECKOUT):
        pytest.skip(f"{PREFIX} was installed from other code than this checkout's")
    before = _snapshot(manifest)
    proc = subprocess.run([str(CHECKOUT / "scripts" / "install")], capture_output=True, text=True, timeout=300,
                          env={**_env(), "CROSSNET_PREFIX": str(PREFIX), "CROSSNET_BIN_DIR": manifest["bin_dir"]}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{PREFIX} is up to date" in proc.stdout
    assert _snapshot(manifest) == before
