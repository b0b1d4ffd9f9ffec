"""crossnet.unixsock: bind a unix socket path without taking what is not ours (real
sockets in a tmp dir; no network namespace needed)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from crossnet import unixsock
from crossnet.errors import ConfigError


def _listener(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


def _accepts(path: str) -> bool:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(2)
    try:
        c.connect(path)
        return True
    except OSError:
        return False
    finally:
        c.close()


def _ino(path: str) -> int:
    return os.lstat(path).st_ino


def test_absent_path_is_bound_listening_with_mode_0600(tmp_path):
    path = str(tmp_path / "a.sock")
    sock, ident = unixsock.bind(path)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert ident == (st.st_dev, st.st_ino)
        assert _accepts(path)
    finally:
        sock.close()
    assert unixsock.release(path, ident) and not os.path.lexists(path)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o400])
def test_mode_is_what_was_asked_and_umask_restored(tmp_path, mode):
    path = str(tmp_path / "m.sock")
    before = os.umask(0o022)
    try:
        sock, _ = unixsock.bind(path, mode=mode)
        assert os.umask(0o022) == 0o022  # the process umask is back
    finally:
        os.umask(before)
    sock.close()
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "s.sock")
    old = _listener(path)
    old.close()  # the file stays: stale (connect refused)
    assert os.path.lexists(path) and not _accepts(path)
    sock, ident = unixsock.bind(path)
    try:
        assert ident[1] == _ino(path) and _accepts(path)
    finally:
        sock.close()


def test_live_socket_is_refused_and_left_accepting(tmp_path):
    path = str(tmp_path / "l.sock")
    other = _listener(path)
    ino = _ino(path)
    try:
        with pytest.raises(unixsock.InUse) as err:
            unixsock.bind(path)
        assert str(err.value) == f"{path} is served by a running process"
        assert isinstance(err.value, ConfigError)
        assert _ino(path) == ino and _accepts(path)
    finally:
        other.close()


def test_regular_file_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "f.sock"
    path.write_text("precious\n")
    with pytest.raises(ConfigError) as err:
        unixsock.bind(str(path))
    assert str(err.value) == f"{path} exists and is not a socket"
    assert "\n" not in str(err.value) and not isinstance(err.value, unixsock.InUse)
    assert path.read_text() == "precious\n"


def test_directory_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "d.sock"
    path.mkdir()
    (path / "inside").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        unixsock.bind(str(path))
    assert (path / "inside").read_text() == "x"


@pytest.mark.parametrize("target_kind", ["file", "stale-socket", "live-socket", "dangling"])
def test_symlink_is_not_followed(tmp_path, target_kind):
    target = str(tmp_path / "target")
    keep = None
    if target_kind == "file":
        with open(target, "w") as fh:
            fh.write("t")
    elif target_kind == "stale-socket":
        _listener(target).close()
    elif target_kind == "live-socket":
        keep = _listener(target)
    link = str(tmp_path / "link.sock")
    os.symlink(target, link)
    before = os.lstat(target).st_ino if os.path.lexists(target) else None
    try:
        with pytest.raises(ConfigError) as err:
            unixsock.bind(link)
        assert str(err.value) == f"{link} exists and is not a socket"
        assert os.path.islink(link) and os.readlink(link) == target
        assert (os.lstat(target).st_ino if os.path.lexists(target) else None) == before
    finally:
        if keep is not None:
            keep.close()


def test_release_leaves_a_successors_socket(tmp_path):
    """Our socket was removed (by hand) while we still served and a successor bound the
    path: our release() leaves the successor's socket. (release runs before our socket
    is closed: while it is open its inode number cannot be reused by the successor's.)"""
    path = str(tmp_path / "r.sock")
    first, ident = unixsock.bind(path)
    os.unlink(path)
    succ, succ_ident = unixsock.bind(path)
    try:
        assert succ_ident != ident
        assert not unixsock.release(path, ident)
        first.close()
        assert _ino(path) == succ_ident[1] and _accepts(path)
        assert not unixsock.release(path, None)  # a socket someone else passed (systemd's): never removed
        assert os.path.exists(path)
        assert unixsock.release(path, succ_ident) and not os.path.lexists(path)
    finally:
        first.close()
        succ.close()


def test_release_leaves_a_file_that_replaced_the_socket(tmp_path):
    path = str(tmp_path / "x.sock")
    sock, ident = unixsock.bind(path)
    sock.close()
    os.unlink(path)
    with open(path, "w") as fh:
        fh.write("mine")
    assert not unixsock.release(path, ident)
    with open(path) as fh:
        assert fh.read() == "mine"


def test_bind_race_eaddrinuse_is_in_use(tmp_path, monkeypatch):
    """Another process binds the path between the check (absent) and our bind()."""
    path = str(tmp_path / "race.sock")
    real_umask = os.umask
    other = []

    def umask_then_race(m):
        if not other and m != 0o777 & ~0o600:  # restoring: not the race point
            return real_umask(m)
        if not other:
            other.append(_listener(path))
        return real_umask(m)

    monkeypatch.setattr(unixsock.os, "umask", umask_then_race)
    try:
        with pytest.raises(unixsock.InUse, match=r"is served by a running process$"):
            unixsock.bind(path)
        assert _accepts(path)
    finally:
        for s in other:
            s.close()


def test_long_path_binds_through_proc_fd(tmp_path):
    d = tmp_path / ("d" * 60) / ("e" * 60)
    d.mkdir(parents=True)
    path = str(d / "agent.sock")
    assert len(path.encode()) > 107
    sock, ident = unixsock.bind(path)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600 and ident[1] == _ino(path)
        with pytest.raises(unixsock.InUse):  # the probe reaches a long path too
            unixsock.bind(path)
    finally:
        sock.close()
    sock, _ = unixsock.bind(path)  # stale at a long path: replaced
    sock.close()


def test_unknown_probe_error_is_never_taken_for_stale(tmp_path, monkeypatch):
    """A socket whose probe fails with anything but ECONNREFUSED (its backlog is full:
    EAGAIN, a timeout) is someone's: refused, not unlinked."""
    path = str(tmp_path / "busy.sock")
    _listener(path).close()
    ino = _ino(path)

    class Busy(socket.socket):
        def connect(self, addr):
            raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(unixsock.socket, "socket", Busy)
    with pytest.raises(unixsock.InUse):
        unixsock.bind(path)
    assert _ino(path) == ino


def test_a_socket_bound_but_not_yet_listening_is_not_taken_for_stale(tmp_path, monkeypatch):
    """Another process bound the path and listens a moment later (bind and listen are two
    syscalls): the first probe is refused, the second, STALE_RECHECK later, is not."""
    path = str(tmp_path / "young.sock")
    young = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    young.bind(path)  # not listening yet: connect refused
    ino = _ino(path)
    real_sleep = unixsock.time.sleep

    def sleep_then_listen(t):
        young.listen(1)
        real_sleep(t)

    monkeypatch.setattr(unixsock.time, "sleep", sleep_then_listen)
    try:
        with pytest.raises(unixsock.InUse):
            unixsock.bind(path)
        assert _ino(path) == ino and _accepts(path)
    finally:
        young.close()
