"""Format versions of the files crossnet keeps in its state directory, and their migration.

Every JSON state file crossnet reads back carries ``"version": N``. Reading one goes
through :func:`upgrade`:

- the version this crossnet writes: returned as it is;
- an older version: migrated step by step (``MIGRATIONS[(file, N)]`` turns version N into
  N + 1) in memory; the file is rewritten in the new format the next time crossnet saves
  it (an upgrade never needs a separate step, and reading changes nothing on disk);
- a newer version (a downgrade after a newer crossnet wrote the file) or no usable
  version: refused with one line naming the file — an old crossnet must not guess what a
  newer record means (``reset`` would remove the wrong objects).

Files written before versions existed have no ``"version"`` key: that is version 0,
whose layout is version 1's. Files that are only written, never read back for a decision
(``dns.json``, ``transport.json``: status for `crossnet status`, rebuilt by the running
service) are not listed. docs/operations.md has the table and the upgrade procedure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossnet.errors import CrossnetError

# file (relative to the state dir) -> the format version this crossnet writes
FORMATS: dict[str, int] = {
    "applied.json": 1,  # crossnet.program.record_header
    "journal.json": 1,  # the same header (crossnet.program.StateJournal)
    "ipam.json": 1,  # crossnet.ipam.STATE_VERSION
    "agent.json": 1,  # crossnet.agent.core (the agent's lease)
    "mesh/launch.json": 1,  # crossnet.mesh.launch
    "mesh/tokens.json": 1,  # crossnet.mesh.token
}


def _add_version(version: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def step(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "version": version}
    return step


# (file, version) -> function turning that version's document into the next version's
MIGRATIONS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    (name, 0): _add_version(1) for name in FORMATS
}


class StateFormatError(CrossnetError):
    """A state file this crossnet cannot read (newer format, or no usable version)."""


def current(name: str) -> int:
    return FORMATS[name]


def upgrade(name: str, doc: dict[str, Any], path: object = None) -> dict[str, Any]:
    """doc (the parsed state file `name`) in the current format; StateFormatError if it
    is newer than this crossnet or its version is not an integer."""
    where = path or name
    want = FORMATS[name]
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise StateFormatError(f"{where}: damaged state file, 'version' is {version!r}, not a format number")
    if version > want:
        raise StateFormatError(
            f"{where}: format version {version} was written by a newer crossnet (this one reads up to {want}); "
            "run that version, or restore the state dir backed up before it (docs/operations.md)"
        )
    while version < want:
        step = MIGRATIONS.get((name, version))
        if step is None:
            raise StateFormatError(f"{where}: no migration from format version {version} (reads {want})")
        doc = step(doc)
        version += 1
        if doc.get("version") != version:
            raise StateFormatError(f"{where}: migration to format version {version} failed")
    return doc
