"""The agent's local API under bad input and too many / too slow clients, with a
stand-in agent (no kernel): every bad request of tests/unit/bad_cni/api_cases.py is a
4xx with one JSON line (never 500), idle and slow connections are closed after
REQUEST_TIMEOUT, at most MAX_CONNECTIONS are served at once (the rest get 503 at once),
and the API keeps serving afterwards. (Was: 100 idle connections kept 105 threads
forever; `Content-Length: abc` was a 500.)"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from crossnet.agent import api as agentapi
from crossnet.state import StateDir
from tests.unit.bad_cni.api_cases import CASES, ApiCase, post


class FakeAgent:
    def __init__(self, root):
        self.state = StateDir(root)

    def info(self):
        return {"host": "h1", "peers": []}


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setattr(agentapi, "REQUEST_TIMEOUT", 1.0)
    handle = agentapi.serve(FakeAgent(tmp_path / "state"), str(tmp_path / "agent.sock"))
    yield tmp_path / "agent.sock"
    handle.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("api-files")
    (d / "file").write_text("x")
    (d / "dir").mkdir()
    return "/proc/self/ns/net", str(d / "file"), str(d / "dir")


def exchange(sock_path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send a raw request (then EOF) and read the answer until the server closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading it all
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def parse(raw: bytes) -> tuple[int, dict]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    status = int(head.split(b" ", 2)[1])
    data = json.loads(body)
    return status, data


def check_one_line_error(raw: bytes, allowed: tuple[int, ...]) -> tuple[int, str]:
    status, data = parse(raw)
    assert status in allowed, (status, data)
    assert 400 <= status < 500
    assert set(data) == {"error"} and isinstance(data["error"], str), data
    assert data["error"] and "\n" not in data["error"] and "Traceback" not in data["error"], data
    return status, data["error"]


def test_api_corpus_size():
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_corpus(api, files, case: ApiCase):
    allowed = case.status + ((409,) if 400 in case.status else ())  # the stand-in host is never configured
    check_one_line_error(exchange(api, case.request(*files)), allowed)


def test_content_length_abc_is_400_naming_it(api):
    status, msg = check_one_line_error(exchange(api, b"POST /v1/attach HTTP/1.0\r\nContent-Length: abc\r\n\r\n"),
                                       (400,))
    assert "Content-Length" in msg


@pytest.mark.parametrize("netns,what", [("file", "not a network namespace"), ("dir", "is a directory")])
def test_regular_file_or_directory_as_netns_is_400(api, files, netns, what):
    path = files[1] if netns == "file" else files[2]
    for body in ({"id": "c1", "netns": path}, {"container": path}):
        status, msg = check_one_line_error(exchange(api, post("/v1/attach", body)), (400,))
        assert what in msg and path in msg, msg


def test_unknown_field_and_wrong_type_name_the_field(api):
    _, msg = check_one_line_error(exchange(api, post("/v1/attach", {"id": "a", "colour": 1})), (400,))
    assert "colour" in msg
    _, msg = check_one_line_error(exchange(api, post("/v1/attach", {"id": "a", "ifname": 7})), (400,))
    assert msg.startswith("ifname:")


def test_body_too_large_is_413(api):
    body = b'{"id": "' + b"a" * ((1 << 20) + 10) + b'"}'
    check_one_line_error(exchange(api, post("/v1/attach", body)), (413,))


def test_not_configured_is_409(api, files):
    status, msg = check_one_line_error(exchange(api, post("/v1/attach", {"id": "a", "netns": files[0]})), (409,))
    assert "not configured" in msg


def _api_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_idle_connections_are_bounded_and_time_out(api):
    """100 idle connections: at most MAX_CONNECTIONS threads, the others answered 503 at
    once; all closed after REQUEST_TIMEOUT; then the API serves as before."""
    socks = []
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(api))
            socks.append(s)
        time.sleep(0.3)
        assert _api_threads() <= agentapi.MAX_CONNECTIONS
        busy = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.0 503"):
                busy += 1
                assert "too many connections" in parse(data)[1]["error"]
        assert busy == 100 - agentapi.MAX_CONNECTIONS
        # the served ones are closed after REQUEST_TIMEOUT without a request
        deadline = time.monotonic() + agentapi.REQUEST_TIMEOUT + 3
        while _api_threads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _api_threads() == 0
        for s in socks:
            s.settimeout(1)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pytest.fail("a connection was not closed by the server")
    finally:
        for s in socks:
            s.close()
    assert agentapi.call(api.parent, "GET", "/v1/peers") == []  # call() takes the socket's directory


def test_slow_client_is_cut_at_the_deadline(api):
    """A client sending one header byte at a time cannot hold a thread beyond the
    deadline of the whole request (a per-read timeout alone would let it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(api))
    start = time.monotonic()
    closed = False
    try:
        s.sendall(b"GET /v1/peers HTTP/1.0\r\n")
        for _ in range(int(agentapi.REQUEST_TIMEOUT * 10) + 30):
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            s.settimeout(0.1)
            try:
                if s.recv(4096) == b"":
                    closed = True
                    break
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                pass
    finally:
        s.close()
    assert closed and time.monotonic() - start < agentapi.REQUEST_TIMEOUT + 1.5


def test_default_limits():
    assert agentapi.MAX_CONNECTIONS == 32 and agentapi.REQUEST_TIMEOUT == 5.0 and agentapi.MAX_BODY == 1 << 20


def test_null_fields_are_not_given(api, files):
    """What `crossnet attach` sends through an agent: optional fields as null."""
    body = {"id": "c1", "netns": files[0], "ip": None, "ifname": None}
    status, msg = check_one_line_error(exchange(api, post("/v1/attach", body)), (409,))
    assert "not configured" in msg


def test_client_going_away_leaves_no_traceback(api, capfd):
    """A client that sends half a request and closes: answered into the void, no
    socketserver traceback on the agent's stderr (its log)."""
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(api))
        s.sendall(b"POST /v1/attach HTTP/1.0\r\nContent-Length: 10\r\n\r\n{")
        s.close()
    time.sleep(0.5)  # the threads answer (into closed sockets)
    deadline = time.monotonic() + 3
    while _api_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Traceback" not in capfd.readouterr().err
    assert agentapi.call(api.parent, "GET", "/v1/peers") == []
