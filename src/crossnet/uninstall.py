"""`crossnet uninstall` (and scripts/uninstall): remove what scripts/install added.

scripts/install writes ``<prefix>/share/crossnet/install.json`` (:data:`MANIFEST`):
the virtual environment's prefix, the links it made in the bin dir and the Debian
packages it had to install. Uninstalling removes, in this order:

- crossnet's systemd units (`crossnet systemd install`; files crossnet did not write are
  left alone), stopped and disabled first when they are in the system unit directory;
- the CNI plugin `crossnet cni install` put in the CNI bin dir (crossnet-cni and
  crossnet-cni-py, only files crossnet wrote) and the conflists in the CNI conf dir of the
  shape it writes (crossnet-cni, then at most portmap): they run the interpreter that is
  about to go; an admin's own list chaining crossnet-cni with other plugins is left alone;
- the links in the bin dir (only symlinks that still point into the prefix);
- the prefix itself (only a directory holding the manifest and a ``pyvenv.cfg``);
- with ``packages=True``, the Debian packages install added (``apt-get remove``).

The state directory is kept: it is the record of what crossnet programmed (``reset``
needs it) and the IPAM allocations; removing crossnet from a host that is still
configured is refused unless ``force`` (docs/operations.md: reset first, back up, purge).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from crossnet.errors import ConfigError, CrossnetError
from crossnet.state import left_over

MANIFEST = Path("share", "crossnet", "install.json")
MANIFEST_VERSION = 1
PLUGIN_FILES = ("crossnet-cni", "crossnet-cni-py")


def manifest_path(prefix: str | None = None) -> Path:
    return Path(prefix or sys.prefix) / MANIFEST


def load_manifest(prefix: str | None = None) -> dict[str, Any]:
    """The install manifest of the installation at prefix (default: the running one)."""
    path = manifest_path(prefix)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"uninstall: {path} not found: this crossnet was not installed by scripts/install "
                          "(a development checkout: remove it with pip)") from None
    except (OSError, ValueError) as exc:
        raise CrossnetError(f"uninstall: {path}: unreadable install manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        raise CrossnetError(f"uninstall: {path}: unknown install manifest format "
                            f"(version {doc.get('version') if isinstance(doc, dict) else None!r})")
    for key, kind in (("prefix", str), ("bin_dir", str), ("links", list), ("packages_added", list)):
        if not isinstance(doc.get(key), kind):
            raise CrossnetError(f"uninstall: {path}: field {key!r} missing or not a {kind.__name__}")
    if not all(isinstance(x, str) for x in doc["links"] + doc["packages_added"]):
        raise CrossnetError(f"uninstall: {path}: links and packages_added must be lists of strings")
    if os.path.realpath(doc["prefix"]) != os.path.realpath(path.parents[2]):
        raise CrossnetError(f"uninstall: {path}: names prefix {doc['prefix']!r}, not the one it is in")
    return doc


def plan(doc: dict[str, Any], state_dir: str, unit_dir: str, cni_bin_dir: str, cni_conf_dir: str,
         packages: bool, force: bool) -> tuple[list[str], list[tuple[str, Any]]]:
    """(lines to print, steps) of an uninstall; steps are ("units"|"unlink"|"rmtree"|"apt", arg)."""
    from crossnet import units
    from crossnet.cni.install import is_ours_conflist, is_ours_plugin
    from crossnet.state import StateDir

    state = StateDir(state_dir)
    if not force and (state.applied_path.exists() or state.journal_path.exists()):
        raise ConfigError(f"--state-dir: this host is still configured ({state.root} records what crossnet "
                          "programmed): run `crossnet reset` first, or pass --force to leave it programmed")
    lines: list[str] = []
    steps: list[tuple[str, Any]] = []
    unit_names = [n for n in units.UNITS.values() if units._is_ours(Path(unit_dir) / n)]
    if unit_names:
        steps.append(("units", unit_names))
    for name in PLUGIN_FILES:
        p = Path(cni_bin_dir) / name
        if is_ours_plugin(p):
            steps.append(("unlink", p))
    conf = Path(cni_conf_dir)
    if conf.is_dir():
        steps.extend(("unlink", p) for p in sorted(conf.glob("*.conflist")) if is_ours_conflist(p))
    # what a `cni install` killed before its renames left
    steps.extend(("unlink", p) for p in left_over(Path(cni_bin_dir), "|".join(map(re.escape, PLUGIN_FILES))))
    steps.extend(("unlink", p) for p in left_over(conf, r"[^/]+\.conflist") if is_ours_conflist(p))
    prefix = os.path.realpath(doc["prefix"])
    for link in doc["links"]:
        p = Path(link)
        if p.is_symlink() and os.path.realpath(p).startswith(prefix + os.sep):
            steps.append(("unlink", p))
        elif p.exists() or p.is_symlink():
            lines.append(f"{p}: not a link into {prefix}, left alone")
    if not (Path(prefix) / "pyvenv.cfg").is_file():
        raise CrossnetError(f"uninstall: {prefix} is not a virtual environment; not removing it")
    steps.append(("rmtree", Path(prefix)))
    if packages and doc["packages_added"]:
        steps.append(("apt", list(doc["packages_added"])))
    return lines, steps


def run(steps: list[tuple[str, Any]], unit_dir: str, dry_run: bool) -> list[str]:
    """Carry out the steps of :func:`plan` (or only describe them): what was done."""
    from crossnet import units

    done = []
    for kind, arg in steps:
        if kind == "units":
            reload = unit_dir.rstrip("/") == units.SYSTEM_UNIT_DIR
            done.extend(units.uninstall(arg, unit_dir, systemd=reload, dry_run=dry_run))
        elif kind == "unlink":
            done.append(f"remove {arg}")
            if not dry_run:
                arg.unlink(missing_ok=True)
        elif kind == "rmtree":
            done.append(f"remove {arg}/")
            if not dry_run:
                shutil.rmtree(arg)
        elif kind == "apt":
            done.append(f"apt-get remove -y {' '.join(arg)}")
            if not dry_run:
                proc = subprocess.run(["apt-get", "remove", "-y", "-qq", *arg], check=False,
                                      env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                    raise CrossnetError(f"apt-get remove: {tail}")
    return done
