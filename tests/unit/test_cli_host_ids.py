"""CONTAINER specs map to the same id whether or not the namespace still exists
(`detach pid:N` after the process exited releases what `attach pid:N` took)."""

from __future__ import annotations

import pytest

from crossnet.errors import ConfigError
from crossnet.runtime.spec import resolve, spec_id


def test_pid_spec_id_without_the_process():
    pid = 2**22 + 12345  # above pid_max: no such process
    with pytest.raises(ConfigError, match="no process"):
        resolve(f"pid:{pid}")
    assert spec_id(f"pid:{pid}") == f"pid-{pid}"


def test_spec_id_matches_resolve(tmp_path):
    import os

    assert resolve(f"pid:{os.getpid()}")[0] == spec_id(f"pid:{os.getpid()}") == f"pid-{os.getpid()}"
    f = tmp_path / "ns"
    f.symlink_to(f"/proc/{os.getpid()}/ns/net")  # a path to a network namespace file
    assert resolve(str(f))[0] == spec_id(str(f)) == str(f)
    assert spec_id("web1") == "web1"
    assert spec_id("pid:abc") == "pid:abc"  # not a pid: left as given
    assert spec_id("podman:web") == "podman:web"
