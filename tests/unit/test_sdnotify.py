"""crossnet.sdnotify against a NOTIFY_SOCKET the test listens on (a unix datagram socket,
as systemd's): READY=1 with STATUS, WATCHDOG=1 pings only while the loop beats, STOPPING=1,
the abstract-namespace form, and nothing at all outside systemd."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from crossnet import sdnotify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_and_stopping_reach_the_socket(notify_socket):
    stop = threading.Event()
    beat = sdnotify.ready("synced: 2 peer(s)", stop)
    assert recv(notify_socket) == "READY=1\nSTATUS=synced: 2 peer(s)"
    beat.beat()  # no watchdog asked for: beating is harmless
    assert sdnotify.notify("STOPPING=1")
    assert recv(notify_socket) == "STOPPING=1"


def test_abstract_socket_name(monkeypatch):
    name = f"crossnet-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # a socket that went away: no exception
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval_from_the_environment(monkeypatch):
    import os

    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", "")
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_interval() is None


def test_watchdog_pings_while_the_loop_beats_and_stops_when_it_hangs(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 0.05 s, loop considered hung after 0.1 s
    stop = threading.Event()
    beat = sdnotify.ready("ok", stop)
    assert recv(notify_socket) == "READY=1\nSTATUS=ok"
    try:
        pings = 0
        deadline = time.monotonic() + 10
        while pings < 3 and time.monotonic() < deadline:  # the loop turns: pings come
            beat.beat()
            notify_socket.settimeout(0.2)
            try:
                assert recv(notify_socket) == "WATCHDOG=1"
                pings += 1
            except TimeoutError:
                pass
        assert pings == 3
        time.sleep(0.3)  # the loop hangs (no beat): pings stop, systemd would restart the service
        while True:  # drain what was sent before the window closed
            notify_socket.settimeout(0.3)
            try:
                recv(notify_socket)
            except TimeoutError:
                break
        notify_socket.settimeout(0.5)
        with pytest.raises(TimeoutError):
            recv(notify_socket)
    finally:
        stop.set()
