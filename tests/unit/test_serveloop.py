"""crossnet.serveloop: servers that sleep until a connection or shutdown, never on a timer."""

from __future__ import annotations

import http.client
import http.server
import selectors
import socket
import socketserver
import threading
import time
from typing import ClassVar

import pytest

from crossnet import serveloop


class CountingSelector(selectors.DefaultSelector):
    """The default selector, counting select() calls and refusing a timeout; ``blocked``:
    how many threads are inside select() right now."""

    calls = 0
    blocked = 0
    timeouts: ClassVar[list] = []
    _lock = threading.Lock()

    def select(self, timeout=None):
        cls = type(self)
        with cls._lock:
            cls.calls += 1
            cls.timeouts.append(timeout)
            cls.blocked += 1
        try:
            return super().select(timeout)
        finally:
            with cls._lock:
                cls.blocked -= 1


def _wait_blocked(counting, n: int = 1, within: float = 5.0) -> None:
    """Until n threads sleep in select() (a loop that just served a request may still be on
    its way back to it: on a loaded machine, after the client already has the answer)."""
    deadline = time.monotonic() + within
    while counting.blocked < n:
        assert time.monotonic() < deadline, "the serving loop never went back to select()"
        time.sleep(0.01)


@pytest.fixture
def counting(monkeypatch):
    CountingSelector.calls = 0
    CountingSelector.blocked = 0
    CountingSelector.timeouts = []
    monkeypatch.setattr(serveloop.Waker, "selector_class", CountingSelector)
    return CountingSelector


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(serveloop.WakeOnShutdown, socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _serving(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def test_it_serves_requests_and_shutdown_returns_at_once(counting):
    server = Server(("127.0.0.1", 0), _Hello)
    t = _serving(server)
    try:
        port = server.server_address[1]
        assert [_get(port, f"/{i}") for i in range(3)] == [(200, b"hello /0"), (200, b"hello /1"), (200, b"hello /2")]
        t0 = time.monotonic()
        server.shutdown()
        took = time.monotonic() - t0
        t.join(timeout=5)
        assert not t.is_alive()
        assert took < 2.0  # woken, not waiting for a timer (that it has none: below)
        assert counting.timeouts and set(counting.timeouts) == {None}  # it never waits on a timer
    finally:
        server.server_close()
    with pytest.raises(OSError):
        _get(port, "/closed")


def test_no_wakeup_while_idle(counting):
    server = Server(("127.0.0.1", 0), _Hello)
    t = _serving(server)
    try:
        assert _get(server.server_address[1], "/warm") == (200, b"hello /warm")
        _wait_blocked(counting)
        before = counting.calls
        time.sleep(1.0)
        assert counting.calls == before  # socketserver's own loop: two select() calls in that second
    finally:
        server.shutdown()
        server.server_close()
    t.join(timeout=5)
    assert not t.is_alive()


def test_shutdown_before_the_loop_started_makes_it_return_and_it_can_serve_again():
    server = Server(("127.0.0.1", 0), _Hello)
    try:
        done = threading.Thread(target=server.shutdown, daemon=True)
        done.start()  # asks before serve_forever ran: waits for it, as socketserver's does
        time.sleep(0.05)
        t = _serving(server)
        t.join(timeout=5)
        done.join(timeout=5)
        assert not t.is_alive() and not done.is_alive()
        t = _serving(server)  # served again: the wake-up byte of the first shutdown is gone
        assert _get(server.server_address[1], "/again") == (200, b"hello /again")
        server.shutdown()
        t.join(timeout=5)
        assert not t.is_alive()
    finally:
        server.server_close()


def test_a_server_that_cannot_bind_leaves_no_socket_open():
    """Its listening socket and its waker's socketpair are closed. (Checked on the
    server's own sockets: a count of the process's open fds also saw other tests'
    threads and helpers open and close theirs, under pytest-xdist.)"""
    made = []

    class Failing(Server):
        def server_bind(self):
            made.append(self)
            super().server_bind()

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            Failing(taken.getsockname(), _Hello)
        (srv,) = made
        assert [s.fileno() for s in (srv.socket, srv._waker._r, srv._waker._w)] == [-1, -1, -1]
    finally:
        taken.close()



def test_waker_readable_yields_per_readiness_and_ends_on_wake(counting):
    a, b = socket.socketpair()
    waker = serveloop.Waker()
    got: list[bytes] = []

    def loop():
        for _ in waker.readable(a):
            got.append(a.recv(100))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        b.send(b"one")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        _wait_blocked(counting)  # back in select() after handling "one"
        calls = counting.calls
        time.sleep(0.5)
        assert counting.calls == calls  # asleep while nothing comes
        t0 = time.monotonic()
        waker.wake()
        waker.wake()  # idempotent
        t.join(timeout=5)
        assert not t.is_alive() and time.monotonic() - t0 < 2.0
        assert got == [b"one"] and set(counting.timeouts) == {None}
        assert list(waker.readable(a)) == []  # woken stays woken: a late loop ends at once
    finally:
        waker.close()
        a.close()
        b.close()


def test_a_stale_wake_byte_after_reset_does_not_spin_the_loop(counting):
    """reset() makes the waker usable again; a byte that still arrives after it (a wake()
    racing a reset) is drained by the loop, which then sleeps again instead of spinning."""
    a, b = socket.socketpair()
    waker = serveloop.Waker()
    waker.wake()
    waker.reset()
    waker._w.send(b"\0")  # the late byte
    t = threading.Thread(target=lambda: list(waker.readable(a)), daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        _wait_blocked(counting)
        calls = counting.calls
        time.sleep(0.5)
        assert 1 <= calls <= 2 and counting.calls == calls  # woke once for the byte, then asleep
        waker.wake()
        t.join(timeout=5)
        assert not t.is_alive()
    finally:
        waker.close()
        a.close()
        b.close()


@pytest.mark.parametrize(("address", "key"), [
    ("10.1.2.3", "10.1.2.3"), ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"), ("::ffff:10.1.2.3", "10.1.2.3"), ("fe80::1%eth0", "fe80::/64"),
])
def test_connections_count_against_their_sources_share(address, key):
    assert serveloop.source_key(address) == key
