"""docker:NAME / podman:NAME resolution against a fake Engine API on a unix socket."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from crossnet.errors import ConfigError
from crossnet.runtime import engines as runtimes
from crossnet.runtime.spec import resolve


class _Handler(BaseHTTPRequestHandler):
    containers: dict = {}

    def do_GET(self):  # noqa: N802
        name = self.path.split("/")[2] if self.path.startswith("/containers/") else None
        if self.path == "/version":
            self._send(200, {"Version": "fake"})
        elif name in self.containers:
            self._send(200, self.containers[name])
        else:
            self._send(404, {"message": f"no such container: {name}"})

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    sock = str(tmp_path / "engine.sock")
    other_pid = os.getppid()  # some other process; its netns may equal ours, see below
    _Handler.containers = {
        "self": {"Id": "a" * 64, "State": {"Running": True, "Pid": os.getpid(), "Status": "running"}},
        "stopped": {"Id": "b" * 64, "State": {"Running": False, "Pid": 0, "Status": "exited"}},
        "ghost": {"Id": "c" * 64, "State": {"Running": True, "Pid": 2**22 + 7, "Status": "running"}},
        "other": {"Id": "d" * 64, "State": {"Running": True, "Pid": other_pid, "Status": "running"}},
    }
    server = _Server(sock, _Handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    monkeypatch.setenv("CROSSNET_PODMAN_SOCKET", sock)
    yield sock
    server.shutdown()
    server.server_close()


def test_version(fake_engine):
    assert runtimes.EngineClient(fake_engine).version()["Version"] == "fake"


def test_unknown_container(fake_engine):
    with pytest.raises(ConfigError, match="no such container 'nope'"):
        resolve("docker:nope")


def test_stopped_container_names_its_id(fake_engine):
    with pytest.raises(ConfigError, match="not running .*" + "b" * 64):
        resolve("podman:stopped")


def test_invisible_pid(fake_engine):
    with pytest.raises(ConfigError, match="not visible"):
        resolve("docker:ghost")


def test_refuses_the_hosts_own_namespace(fake_engine):
    # our own pid shares this namespace: like `--network host`
    with pytest.raises(ConfigError, match="shares this host's network namespace"):
        resolve("docker:self")


def test_resolves_pid_netns(fake_engine, monkeypatch):
    real_stat = os.stat
    mine = real_stat("/proc/self/ns/net")

    class Other:
        st_dev, st_ino = mine.st_dev, mine.st_ino + 1

    monkeypatch.setattr(runtimes.os, "stat", lambda p: Other if p == f"/proc/{os.getppid()}/ns/net" else real_stat(p))
    cid, path = resolve("docker:other")
    assert cid == "d" * 64 and path == f"/proc/{os.getppid()}/ns/net"


def test_missing_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("docker:x")


def test_tcp_docker_host_rejected(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    with pytest.raises(ConfigError, match="only unix sockets"):
        resolve("docker:x")


def test_empty_name():
    with pytest.raises(ConfigError):
        runtimes.resolve_docker("")


@pytest.mark.parametrize("name", ["-l", "--latest", "--format={{.Id}}", "a b", "x/../y", "-", "é"])
def test_a_name_that_is_no_container_name_never_reaches_the_runtime(tmp_path, monkeypatch, name):
    """`podman:-l` ran `podman container inspect -l`: podman took it for --latest and
    crossnet attached (or detached) the newest container, whichever it was. A name that
    is not a container name or id is one line naming CONTAINER; podman is never run and
    the Engine API never asked."""
    log = tmp_path / "argv"
    podman = tmp_path / "podman"
    podman.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {log}\necho "[]"\n')
    podman.chmod(0o755)
    monkeypatch.setenv("CROSSNET_PODMAN", str(podman))
    monkeypatch.delenv("CROSSNET_PODMAN_SOCKET", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    monkeypatch.setattr(runtimes, "PODMAN_SOCKET", str(tmp_path / "no-podman.sock"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    for runtime in ("podman", "docker"):
        with pytest.raises(ConfigError) as err:
            resolve(f"{runtime}:{name}")
        msg = str(err.value)
        assert msg.startswith(f"CONTAINER: {runtime}: ") and "is not a container name" in msg and "\n" not in msg
    assert not log.exists(), f"podman was run with {log.read_text()!r}"
