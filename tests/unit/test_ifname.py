"""crossnet.ifname (the one interface-name validator), runtime.netns_problem and
state.root_problem: the input checks other modules share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet import ifname
from crossnet.errors import ConfigError
from crossnet.runtime.spec import netns_problem
from crossnet.state import root_problem

REAL_NAMES = ["eth0", "ens3", "enp0s31f6", "wlp2s0", "eth0.100", "br-1a2b3c", "docker0", "bond0", "cn0", "br0",
              "veth_x", "a", "abcdefghijklmno"]


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_interface_names_pass(name: str) -> None:
    assert ifname.problem(name) is None
    assert ifname.check(name, "f") == name


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "must not be empty"), ("abcdefghijklmnop", "1..15"), (".", "'.' and '..'"), ("..", "'.' and '..'"),
    ("a/b", "'/'"), ("a:b", "':'"), ("a b", "whitespace"), ("a\nb", "whitespace"), ("a\0b", "whitespace"),
    ('a"b', "may only use"), ("a;b", "may only use"), ("é", "may only use"), ("-x", "start with '-'"),
    (5, "a string"), (None, "a string"), ("ééééééééé", "1..15"),  # 18 bytes: the kernel counts bytes
])
def test_bad_names(name, fragment: str) -> None:
    why = ifname.problem(name)
    assert why is not None and fragment in why, why
    with pytest.raises(ConfigError, match=r"^--ifname: "):
        ifname.check(name, "--ifname")


@given(st.text(max_size=20))
def test_accepted_names_are_valid_linux_names(name: str) -> None:
    """Whatever passes is a name Linux accepts (dev_valid_name) and is plain ASCII."""
    if ifname.problem(name) is None:
        assert 1 <= len(name.encode()) <= 15 and name not in (".", "..")
        assert not any(c in name for c in "/: \t\n\r\v\f\0") and name.isascii() and not name.startswith("-")
    else:
        assert "\n" not in ifname.problem(name)


@pytest.mark.parametrize("name", ["cnvx1", "cnvx16777215", "cnv0123456789", "cnt89abcdef01", "cnovs0", "br-phy",
                                  "gre-h2", "vxl-0a1b2c3d"])
def test_crossnet_device_names_are_reserved(name: str) -> None:
    assert ifname.reserved_problem(name) is not None
    assert ifname.reserved_problem("cn0", bridge="cn0") is not None  # a NIC named like the bridge
    assert ifname.reserved_problem("eth0", bridge="cn0") is None


def test_netns_problem(tmp_path: Path) -> None:
    assert netns_problem(f"/proc/{os.getpid()}/ns/net") is None
    regular = tmp_path / "f"
    regular.write_text("x")
    assert "not a network namespace" in netns_problem(str(regular))
    assert "directory" in netns_problem(str(tmp_path))
    assert "not a network namespace" in netns_problem(f"/proc/{os.getpid()}/ns/mnt")
    assert "not a network namespace file" in netns_problem("/dev/null")
    assert "no such" in netns_problem(str(tmp_path / "missing"))


def test_root_problem(tmp_path: Path) -> None:
    assert root_problem(tmp_path) is None
    assert root_problem(tmp_path / "new" / "deeper") is None  # created on first use
    f = tmp_path / "file"
    f.write_text("x")
    assert root_problem(f) == f"{f} is not a directory"
    assert root_problem(f / "sub" / "x") == f"{f / 'sub' / 'x'}: {f} is not a directory"
    assert root_problem("") == "must not be empty"


def test_damaged_state_file_is_one_line_error(tmp_path: Path) -> None:
    from crossnet.state import DamagedStateFile, StateDir

    state = StateDir(tmp_path)
    assert state.load_applied() is None
    state.applied_path.write_text("garbage")
    with pytest.raises(DamagedStateFile, match="damaged state file, not JSON"):
        state.load_applied()
    state.applied_path.write_text("[1]")
    with pytest.raises(DamagedStateFile, match="expected a JSON object"):
        state.load_applied()
    state.applied_path.unlink()
    state.applied_path.mkdir()
    with pytest.raises(ValueError, match="cannot read"):  # still a ValueError for callers that skip torn files
        state.load_applied()
