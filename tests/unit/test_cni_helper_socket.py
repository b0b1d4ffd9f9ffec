"""The CNI warm helper's socket <stateDir>/cni.sock (crossnet.unixsock), with the real
helper loop and a fake plugin (tests/unit/test_cni_shim.py's FAKE_HELPER; no network):
a helper started while a live socket is at the path (systemd's activation socket while
its helper is not running, another helper) exits 0 and leaves it serving (was: unlinked
and taken); a file or symlink at the path is left (was: deleted); two helpers racing:
one serves, the other exits 0, calls are served."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.unit.test_cni_shim import FAKE_HELPER, Helper

HELPER_EXIT = 30  # seconds: the lock wait is 3 s, the imports a few


def _start(h: Helper) -> subprocess.Popen:
    src = FAKE_HELPER.format(paths=[p for p in sys.path if p], code=str(h.code), state=str(h.state), log=str(h.log))
    return subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(timeout=HELPER_EXIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the helper did not exit: it serves the path") from None


def _request(path) -> dict:
    """One call as a client sends it (code "*": the helper's own code, unchanged)."""
    from crossnet.cni import netns_id

    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "mode": "text", "text": "served"})
    body = json.dumps({"environ": {"CNI_COMMAND": "ADD"}, "stdin": conf, "netns": netns_id(),
                       "target": None, "code": "*"}).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect(str(path))
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    finally:
        s.close()
    return json.loads(out)


@pytest.fixture
def h(tmp_path):
    return Helper(tmp_path)


def test_live_socket_at_the_path_is_left_serving_and_the_helper_exits_0(h):
    """systemd's crossnet-cni-helper.socket listens on cni.sock while no helper runs; a
    spawned helper ("helper": "spawn" on the same stateDir) must not take it."""
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(h.sock))
    other.listen(4)
    ino = os.lstat(h.sock).st_ino
    try:
        proc = _start(h)
        _, err = _wait(proc)
        assert proc.returncode == 0 and err == b"", err.decode()
        assert os.lstat(h.sock).st_ino == ino
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(h.sock))  # still reaches the other listener
        probe.close()
        stops = [e for e in h.events() if e.get("server") == "stop"]
        assert stops and stops[-1]["reason"] == f"{h.sock} is served by a running process", h.events()
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_not_a_socket_at_the_path_is_left(h, tmp_path, kind):
    target = tmp_path / "precious"
    target.write_text("keep")
    if kind == "file":
        h.sock.write_text("keep")
    else:
        h.sock.symlink_to(target)
    proc = _start(h)
    _, err = _wait(proc)
    assert proc.returncode != 0
    assert err.decode().strip().splitlines()[-1] == f"crossnet.errors.ConfigError: --state-dir: {h.sock} exists and is not a socket"
    if kind == "file":
        assert h.sock.read_text() == "keep"
    else:
        assert h.sock.is_symlink() and target.read_text() == "keep"
    stops = [e for e in h.events() if e.get("server") == "stop"]
    assert stops and stops[-1]["reason"] == f"--state-dir: {h.sock} exists and is not a socket"


def test_two_racing_helpers_one_serves_the_other_exits_0(h):
    procs = [_start(h), _start(h)]
    try:
        deadline = time.monotonic() + HELPER_EXIT
        while sum(p.poll() is None for p in procs) != 1 or not h.listening():
            assert time.monotonic() < deadline, [p.poll() for p in procs]
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        assert loser.returncode == 0 and loser.stderr.read() == b""
        assert _request(h.sock) == {"rc": 0, "stdout": "served"}
        assert [e.get("server") for e in h.events()].count("start") == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=10)
    assert not os.path.lexists(h.sock)  # the winner removed its own socket at SIGTERM


def test_a_link_at_the_lock_path_is_never_followed(h, tmp_path):
    """The helper's lock `cni.sock.lock` was opened O_CREAT following links: a symlink
    planted there made root create (an empty file) wherever it pointed. It is opened like
    every lock of crossnet (crossnet.state.open_lock_file: O_NOFOLLOW): the helper stops,
    nothing is created, the link is left."""
    target = tmp_path / "created-by-root"
    lock = h.sock.with_name(h.sock.name + ".lock")
    lock.symlink_to(target)
    proc = _start(h)
    _, err = _wait(proc)
    assert proc.returncode == 0, err.decode()
    assert not os.path.lexists(target) and lock.is_symlink()
    assert not os.path.lexists(h.sock)  # it never served


def test_a_helper_started_while_another_serves_leaves_at_once(h):
    """The lock held and the socket there: another helper serves, this one stops at once
    (it used to wait up to 3 s for the lock -- made for a helper stepping down, which
    removes its socket first -- and then took over from a helper that stepped down in that
    window, outliving it unasked: tests/e2e/test_cni_native.py's stop_helper found a
    socket again). A helper waiting for a stepping-down one (no socket) still waits."""
    first = _start(h)
    try:
        deadline = time.monotonic() + HELPER_EXIT
        while not h.listening():
            assert time.monotonic() < deadline and first.poll() is None, "the first helper never listened"
            time.sleep(0.05)
        second = _start(h)
        _, err = _wait(second)
        assert second.returncode == 0 and err == b"", err.decode()
        stops = [e for e in h.events() if e.get("server") == "stop"]
        assert [e["reason"] for e in stops] == ["another helper serves this state dir"], h.events()
        assert first.poll() is None and h.listening()  # the first one serves on
        assert _request(h.sock) == {"rc": 0, "stdout": "served"}
    finally:
        first.terminate()
        first.communicate(timeout=10)


def test_serve_by_hand_on_a_file_names_the_option_and_leaves_it(tmp_path):
    """`crossnet cni serve` typed by hand: the path is <state-dir>/cni.sock, so the one
    error line names --state-dir (it named no option before)."""
    (tmp_path / "applied.json").write_text("{}")
    sock = tmp_path / "cni.sock"
    sock.write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), "cni", "serve",
                           "--idle", "1"], capture_output=True, text=True, timeout=HELPER_EXIT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"crossnet: error: --state-dir: {sock} exists and is not a socket"]
    assert sock.read_text() == "keep"
