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
- the prefix itself (only a directory holding the manifest and a ``pyvenv.cfg``): renamed
  at once (atomically) to the sibling ``.<name>.removing`` (:func:`removing_path`), then
  emptied but for the manifest;
- with ``packages=True``, the Debian packages install added (``apt-get remove``);
- last, the manifest and the renamed directory.

Crash safety: killed before the rename, ``<prefix>/bin/crossnet`` is still there and a
second run (`crossnet uninstall`, scripts/uninstall) plans what is left; killed after it,
``<prefix>`` is gone and scripts/uninstall finishes the ``.<name>.removing`` tree itself
(bash: the rest of the tree, the packages with ``--packages``, then the manifest), or a
`crossnet uninstall` of a new installation in the same prefix removes it first. The
tree is touched only while its manifest names the prefix (or it holds no file at all).

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
from crossnet.state import crash_point, left_over

MANIFEST = Path("share", "crossnet", "install.json")
MANIFEST_VERSION = 1


def manifest_path(prefix: str | None = None) -> Path:
    return Path(prefix or sys.prefix) / MANIFEST


def removing_path(prefix: str | os.PathLike[str]) -> Path:
    """Where uninstall renames the prefix before deleting it: ``<parent>/.<name>.removing``."""
    p = Path(prefix)
    return p.parent / f".{p.name}.removing"


def unfinished(removing: Path, prefix: str) -> bool:
    """``removing`` is what an interrupted uninstall of ``prefix`` left: a directory (not a
    link) whose manifest names ``prefix``, or that holds no file any more (killed while it
    removed the last empty directories)."""
    if removing.is_symlink() or not removing.is_dir():
        return False
    try:
        doc = json.loads((removing / MANIFEST).read_text())
        return isinstance(doc, dict) and isinstance(doc.get("prefix"), str) and \
            os.path.realpath(doc["prefix"]) == os.path.realpath(prefix)
    except FileNotFoundError:
        return all(not files for _, _, files in os.walk(removing)) and not any(
            os.path.islink(os.path.join(d, n)) for d, dirs, _ in os.walk(removing) for n in dirs)
    except (OSError, ValueError):
        return False


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
    bad = [p for p in doc["packages_added"] if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", p)]
    if bad:  # they become apt-get's arguments: never an option (scripts/uninstall checks the same)
        raise CrossnetError(f"uninstall: {path}: packages_added: {bad[0]!r} is not a Debian package name")
    if os.path.realpath(doc["prefix"]) != os.path.realpath(path.parents[2]):
        raise CrossnetError(f"uninstall: {path}: names prefix {doc['prefix']!r}, not the one it is in")
    return doc


def plan(doc: dict[str, Any], state_dir: str, unit_dir: str, cni_bin_dir: str, cni_conf_dir: str,
         packages: bool, force: bool) -> tuple[list[str], list[tuple[str, Any]]]:
    """(lines to print, steps) of an uninstall; steps are ("units"|"unlink"|"rmtree"|"rename"|
    "empty"|"apt"|"drop", arg): what a re-run needs (the prefix's command, its manifest) goes last."""
    from crossnet import units
    from crossnet.cni.install import PLUGIN_FILES, is_ours_conflist, is_ours_plugin
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
    removing = removing_path(prefix)
    if removing.exists() or removing.is_symlink():
        if not unfinished(removing, prefix):
            raise CrossnetError(f"uninstall: {removing} exists and is not what an interrupted uninstall of "
                                f"{prefix} left; not touching it (move it away)")
        steps.append(("rmtree", removing))  # an earlier uninstall's, killed after its rename
    # what a re-run needs (the command, then the manifest) goes last: one rename takes the
    # prefix away whole, the manifest is deleted after everything else
    steps.append(("rename", (Path(prefix), removing)))
    steps.append(("empty", removing))
    if packages and doc["packages_added"]:
        steps.append(("apt", list(doc["packages_added"])))
    steps.append(("drop", removing))
    return lines, steps


def _empty_but_manifest(root: Path) -> None:
    """Delete everything under root except the manifest (and the directories leading to it)."""
    keep = root / MANIFEST
    todo = [root]
    while todo:
        d = todo.pop()
        for entry in sorted(d.iterdir()):
            if entry == keep:
                continue
            if keep.is_relative_to(entry) and entry.is_dir() and not entry.is_symlink():
                todo.append(entry)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            crash_point()  # test hook (CROSSNET_TEST_CRASH_AT): the tree half deleted


def run(steps: list[tuple[str, Any]], unit_dir: str, dry_run: bool) -> list[str]:
    """Carry out the steps of :func:`plan` (or only describe them): what was done."""
    from crossnet import units

    done = []
    for i, (kind, arg) in enumerate(steps):
        if kind == "units":
            reload = unit_dir.rstrip("/") == units.SYSTEM_UNIT_DIR
            done.extend(units.uninstall(arg, unit_dir, systemd=reload, dry_run=dry_run))
        elif kind == "unlink":
            done.append(f"remove {arg}")
            if not dry_run:
                arg.unlink(missing_ok=True)
        elif kind == "rename":
            src, dst = arg
            done.append(f"remove {src}/ (renamed to {dst}/ first, its manifest deleted last)")
            if not dry_run:
                os.rename(src, dst)
        elif kind == "empty":
            if not dry_run:
                _empty_but_manifest(arg)
        elif kind == "rmtree":
            done.append(f"remove {arg}/ (left by an interrupted uninstall)")
            if not dry_run:
                shutil.rmtree(arg)
        elif kind == "drop":  # the manifest and the directories leading to it, last
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
        if not dry_run and i < len(steps) - 1:
            crash_point()  # test hook (CROSSNET_TEST_CRASH_AT): between the steps
    return done
