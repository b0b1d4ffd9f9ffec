"""State dir permissions: every file crossnet writes there is 0600, a state dir others
can write is refused, and a lock file others could open (an older crossnet made it
0644 in a 0755 dir) can no longer be used to block `apply` forever.

The unprivileged side runs as nobody (setpriv --reuid=65534), in a directory under /tmp
that nobody can traverse (0755 parents), so the test shows what such a user can do.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from crossnet.errors import ConfigError
from crossnet.ipam import AddressPool
from crossnet.state import StateDir, check_state_dir, ensure_state_dir, lock_fd, write_json_atomic

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setpriv)")
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def public_dir():
    """A directory under /tmp that every user can traverse (like /var/lib), removed after."""
    d = Path(tempfile.mkdtemp(prefix="cnst-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def umask0():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def as_nobody(code: str, timeout: float = 10) -> subprocess.CompletedProcess:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_every_state_file_is_0600_even_with_umask_0(tmp_path: Path, umask0) -> None:
    state = StateDir(tmp_path / "state")
    with state.lock():
        state.save_applied({"version": 1})
    pool = AddressPool(state.ipam_path, __import__("ipaddress").IPv4Network("10.1.0.0/24"))
    pool.allocate("c1")
    assert mode(state.root) == 0o700
    for name in ("lock", "applied.json", "ipam.json", "ipam.json.lock"):
        assert mode(state.root / name) == 0o600, name
    write_json_atomic(state.root / "journal.json", {"x": 1})
    assert mode(state.root / "journal.json") == 0o600


def test_a_legacy_0644_lock_file_is_replaced_and_its_holder_blocks_nobody(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    lock = root / "lock"
    lock.write_text("")
    os.chmod(lock, 0o644)
    held = open(lock)  # what any user could do with the old file: open it and flock it for ever
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        done = threading.Event()

        def take() -> None:
            with StateDir(root).lock():
                done.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert done.wait(5), "apply's lock blocked by the holder of the old 0644 lock file"
        assert mode(lock) == 0o600
        assert os.stat(lock).st_ino != os.fstat(held.fileno()).st_ino
    finally:
        held.close()


def test_the_lock_is_still_exclusive(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.root.mkdir(mode=0o700)
    state.save_applied({"version": 1})  # a configured host: the lock file stays after the block
    with state.lock():
        with pytest.raises(BlockingIOError):
            lock_fd(state.root / "lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(lock_fd(state.root / "lock", fcntl.LOCK_EX | fcntl.LOCK_NB))


@pytest.mark.parametrize("bad", [0o777, 0o775, 0o757, 0o1777])
def test_a_state_dir_others_can_write_is_refused_with_one_line(tmp_path: Path, bad: int) -> None:
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, bad)
    with pytest.raises(ConfigError) as info:
        with StateDir(root).lock():
            pass
    msg = str(info.value)
    assert msg == f"state dir {root} is writable by others (mode {bad:04o}): chmod 0700 it"
    assert "\n" not in msg
    assert not (root / "lock").exists()  # nothing created in it


def test_a_readable_0755_state_dir_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, 0o755)
    with StateDir(root).lock():
        assert mode(root / "lock") == 0o600
    assert not (root / "lock").exists()  # nothing recorded: the state dir is left as it was


@root_only
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"state dir {root} belongs to uid {NOBODY}"):
        check_state_dir(root)


def test_a_world_writable_parent_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(ConfigError, match="parent .* is writable by everyone"):
        ensure_state_dir(parent / "state")
    os.chmod(parent, 0o1777)  # sticky, like /tmp: others cannot rename our dir away
    assert ensure_state_dir(parent / "state") == parent / "state"
    assert mode(parent / "state") == 0o700


def test_a_state_dir_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        ensure_state_dir(f)


def test_ipam_refuses_a_writable_state_dir(tmp_path: Path) -> None:
    import ipaddress

    root = tmp_path / "s"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        AddressPool(root / "ipam.json", ipaddress.IPv4Network("10.1.0.0/24")).allocate("c")
    assert not (root / "ipam.json.lock").exists()


@root_only
def test_nobody_cannot_open_or_flock_the_lock_in_a_0755_state_dir(public_dir: Path) -> None:
    """The reported attack: a pre-existing 0755 state dir whose lock file was 0644."""
    root = public_dir / "state"
    root.mkdir()
    os.chmod(root, 0o755)
    lock = root / "lock"
    lock.write_text("")
    os.chmod(lock, 0o644)
    probe = (
        "import fcntl, sys\n"
        f"p = {str(lock)!r}\n"
        "try:\n"
        "    fh = open(p)\n"
        "except PermissionError:\n"
        "    print('denied'); sys.exit(0)\n"
        "fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('locked')\n"
    )
    # before crossnet touches it, nobody can open and flock it (the attack)
    assert as_nobody(probe).stdout.strip() == "locked"
    with StateDir(root).lock():
        pass
    assert mode(lock) == 0o600
    r = as_nobody(probe)
    assert r.returncode == 0 and r.stdout.strip() == "denied", r.stderr
    # and for the IPAM and agent lock files and the JSON files crossnet writes there
    import ipaddress

    AddressPool(root / "ipam.json", ipaddress.IPv4Network("10.1.0.0/24")).allocate("c")
    for name in ("ipam.json.lock", "ipam.json"):
        r = as_nobody(probe.replace(str(lock), str(root / name)))
        assert r.stdout.strip() == "denied", (name, r.stdout, r.stderr)


@root_only
def test_cli_refuses_a_world_writable_state_dir_before_doing_anything(tmp_path: Path) -> None:
    """`crossnet apply` on a 0777 state dir: one line, exit 2, nothing created. Run in a
    throw-away network namespace (unshare -n) so nothing could reach the machine's own."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, 0o777)
    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "backend: host-gw\nnetwork: 10.77.0.0/16\nhosts:\n"
        "  - {name: a, address: 192.0.2.1, iface: lo}\n  - {name: b, address: 192.0.2.2, iface: lo}\n"
    )
    r = subprocess.run(["unshare", "-n", sys.executable, "-m", "crossnet", "--state-dir", str(root), "apply",
                        "-f", str(cluster), "--host", "a"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == f"crossnet: error: state dir {root} is writable by others (mode 0777): chmod 0700 it\n"
    assert sorted(os.listdir(root)) == []
