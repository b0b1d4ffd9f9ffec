"""`crossnet trace --peer-state-dir`: the peer's Open vSwitch is never guessed.

The reported case: with state and OVS directories side by side (state-h1, state-h2,
ovs-h1, ovs-h2), looking for `*/db.sock` next to h2's state dir found ovs-h1 first and
trace read host1's OVS as host2's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from crossnet.trace.model import HostSide
from crossnet.trace.ovs import SYSTEM_RUNDIR, find_rundir, rundir_problem


def side_by_side(tmp_path: Path) -> Path:
    for h in ("h1", "h2"):
        (tmp_path / f"state-{h}").mkdir()
        (tmp_path / f"ovs-{h}").mkdir()
        (tmp_path / f"ovs-{h}" / "db.sock").write_text("")  # a file is enough for find_rundir
    return tmp_path


def host(name: str, state_dir: Path, netns: str | None = "ns", ovs_rundir: str | None = None) -> HostSide:
    return HostSide(name=name, ctx=SimpleNamespace(backend="ovs-gre"), backend=object(), view=None,
                    netns=netns, state_dir=str(state_dir), ovs_rundir=ovs_rundir)


def test_a_peer_without_a_known_rundir_is_unknown_not_a_neighbours_ovs(tmp_path: Path) -> None:
    d = side_by_side(tmp_path)
    h2 = host("h2", d / "state-h2")
    assert find_rundir(h2) is None  # before: d/ovs-h1 (the wrong host's OVS)
    msg = rundir_problem(h2)
    assert msg.startswith("Open vSwitch of host h2 unknown: pass --peer-ovs-rundir DIR")


def test_a_given_or_recorded_rundir_is_used(tmp_path: Path) -> None:
    d = side_by_side(tmp_path)
    assert find_rundir(host("h2", d / "state-h2", ovs_rundir=str(d / "ovs-h2"))) == str(d / "ovs-h2")
    gone = host("h2", d / "state-h2", ovs_rundir=str(d / "nowhere"))
    assert find_rundir(gone) is None and rundir_problem(gone) == f"no Open vSwitch at {d / 'nowhere'} (no db.sock there)"


def test_the_local_host_uses_ovs_rundir_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    d = side_by_side(tmp_path)
    monkeypatch.setenv("OVS_RUNDIR", str(d / "ovs-h2"))
    assert find_rundir(host("h1", d / "state-h1", netns=None)) == str(d / "ovs-h2")
    monkeypatch.delenv("OVS_RUNDIR")
    import os

    want = SYSTEM_RUNDIR if os.path.exists(os.path.join(SYSTEM_RUNDIR, "db.sock")) else None
    assert find_rundir(host("h1", d / "state-h1", netns=None)) == want


@pytest.mark.parametrize("backend,recorded", [("ovs-gre", True), ("ovs-vxlan", True), ("vxlan", False)])
def test_apply_records_the_ovs_rundir(tmp_path: Path, monkeypatch, backend: str, recorded: bool) -> None:
    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path / "ovs-x"))
    from types import SimpleNamespace

    from crossnet.host import record_extras

    data = record_extras(SimpleNamespace(backend=backend))  # what apply and the agent add to applied.json
    assert data.get("ovs_rundir") == (str(tmp_path / "ovs-x") if recorded else None)
