"""Something other than a socket planted at a server's socket path (the agent API, the
docker plugin): a regular file, a directory or a symlink. The server must refuse the
path and leave whatever is there as it was."""

from __future__ import annotations

from pathlib import Path

KINDS = ["file", "dir", "symlink"]


def plant(path: Path, kind: str, target: Path) -> None:
    """At ``path``: a regular file holding "keep", a directory, or a symlink to ``target``."""
    if kind == "file":
        path.write_text("keep")
    elif kind == "dir":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        raise ValueError(f"kind: {kind!r} is not one of {KINDS}")


def left_as_planted(path: Path, kind: str) -> bool:
    """What :func:`plant` put at ``path`` is still there (the link itself, not followed;
    the caller checks its target)."""
    if kind == "file":
        return path.read_text() == "keep"
    if kind == "dir":
        return path.is_dir()
    return path.is_symlink()
