"""State file format versions (crossnet.stateformat): older formats are migrated on read,
newer ones refused with one line naming the file; the readers of the state dir use it."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet import stateformat
from crossnet.errors import CrossnetError
from crossnet.ipam import AddressPool
from crossnet.state import StateDir
from crossnet.stateformat import FORMATS, MIGRATIONS, StateFormatError, upgrade


def test_current_format_is_returned_unchanged():
    doc = {"version": 1, "host": "h1", "resources": []}
    assert upgrade("applied.json", doc) is doc


def test_every_file_has_a_path_from_version_0_to_current():
    for name, want in FORMATS.items():
        assert all((name, v) in MIGRATIONS for v in range(want)), name
        assert upgrade(name, {"x": 1}) == {"x": 1, "version": want}


@given(name=st.sampled_from(sorted(FORMATS)), extra=st.integers(1, 10**6))
def test_a_newer_format_is_refused_naming_the_file(name, extra):
    version = FORMATS[name] + extra
    with pytest.raises(StateFormatError) as exc:
        upgrade(name, {"version": version}, f"/s/{name}")
    msg = str(exc.value)
    assert msg.startswith(f"/s/{name}: format version {version} was written by a newer crossnet")
    assert "\n" not in msg and isinstance(exc.value, CrossnetError)


@given(version=st.one_of(st.integers(max_value=-1), st.booleans(), st.text(), st.floats(), st.none()))
def test_a_version_that_is_not_a_format_number_is_refused(version):
    with pytest.raises(StateFormatError, match="damaged state file"):
        upgrade("ipam.json", {"version": version})


def test_a_migration_chain_runs_step_by_step(monkeypatch):
    """A future format 3 of applied.json: files of versions 0, 1, 2 all reach it."""
    monkeypatch.setitem(FORMATS, "applied.json", 3)
    monkeypatch.setitem(MIGRATIONS, ("applied.json", 1), lambda d: {**d, "version": 2, "a": d.get("a", 0) + 1})
    monkeypatch.setitem(MIGRATIONS, ("applied.json", 2), lambda d: {**d, "version": 3, "b": True})
    assert upgrade("applied.json", {"host": "h"}) == {"host": "h", "version": 3, "a": 1, "b": True}
    assert upgrade("applied.json", {"version": 2, "a": 7}) == {"version": 3, "a": 7, "b": True}
    monkeypatch.delitem(MIGRATIONS, ("applied.json", 2))
    with pytest.raises(StateFormatError, match="no migration from format version 2"):
        upgrade("applied.json", {"version": 2})
    monkeypatch.setitem(MIGRATIONS, ("applied.json", 2), lambda d: d)  # forgets to bump
    with pytest.raises(StateFormatError, match="migration to format version 3 failed"):
        upgrade("applied.json", {"version": 2})


def test_state_dir_reads_applied_and_journal_through_it(tmp_path):
    state = StateDir(str(tmp_path))
    state.applied_path.write_text(json.dumps({"host": "h1", "resources": []}))  # before versions: 0
    assert state.load_applied() == {"version": 1, "host": "h1", "resources": []}
    assert json.loads(state.applied_path.read_text()) == {"host": "h1", "resources": []}  # reading writes nothing
    state.applied_path.write_text(json.dumps({"version": 2, "host": "h1"}))
    with pytest.raises(StateFormatError, match=r"applied\.json: format version 2 .*newer crossnet"):
        state.load_applied()
    state.journal_path.write_text(json.dumps({"version": 5}))
    with pytest.raises(StateFormatError, match=r"journal\.json: format version 5"):
        state.load_journal()
    state.journal_path.write_text("[]")
    with pytest.raises(CrossnetError, match="expected a JSON object"):
        state.load_journal()


def test_ipam_migrates_an_unversioned_file_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "ipam.json"
    path.write_text(json.dumps({"subnet": "10.1.0.0/24", "last": "10.1.0.2",
                                "allocations": {"c1": {"address": "10.1.0.2", "meta": {}}}}))
    pool = AddressPool(path, IPv4Network("10.1.0.0/24"))
    assert str(pool.allocate("c2").address) == "10.1.0.3"  # c1's address kept
    assert json.loads(path.read_text())["version"] == stateformat.current("ipam.json")  # rewritten in the new format
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "version": 2}))
    with pytest.raises(StateFormatError, match=r"ipam\.json: format version 2 was written by a newer crossnet"):
        pool.allocate("c3")
    assert json.loads(path.read_text())["version"] == 2  # left as it was
