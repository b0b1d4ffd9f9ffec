"""The Docker network `crossnet docker-plugin` creates itself (crossnet.runtime.dockernet),
against a fake Docker Engine API served over a unix socket in a temp dir."""

from __future__ import annotations

import json
import threading

import pytest

from crossnet.errors import ConfigError, CrossnetError
from crossnet.runtime.dockernet import (
    NetworkCreator,
    check_name,
    existing_note,
    network_config,
)
from crossnet.runtime.engines import EngineClient
from tests.unit.test_cni_runtimes import (
    _Handler as EngineHandler,  # its JSON answers (_send)
)
from tests.unit.test_cni_runtimes import _Server

SUBNET, GW = "10.32.1.0/24", "10.32.1.1"


class FakeDocker:
    """GET /networks/NAME and POST /networks/create, recording every request."""

    def __init__(self, path: str, networks: dict | None = None, create_status: int = 201):
        self.path = path
        self.networks = dict(networks or {})
        self.create_status = create_status
        self.requests: list[tuple[str, str, object]] = []
        fake = self

        class Handler(EngineHandler):
            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, None))
                name = self.path.rsplit("/", 1)[-1]
                if name in fake.networks:
                    self._send(200, fake.networks[name])
                else:
                    self._send(404, {"message": f"network {name} not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, body))
                if fake.create_status == 201:
                    cfg = body["IPAM"]["Config"]
                    fake.networks[body["Name"]] = {"Name": body["Name"], "Driver": body["Driver"],
                                                   "IPAM": {"Driver": body["IPAM"]["Driver"], "Config": cfg}}
                    self._send(201, {"Id": "n" * 64, "Warning": ""})
                else:
                    self._send(fake.create_status, {"message": "plugin not found"})

        self.server_cls, self.handler = _Server, Handler
        self.server = None

    def start(self) -> None:
        self.server = self.server_cls(self.path, self.handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def docker(tmp_path):
    fakes = []

    def make(**kw) -> FakeDocker:
        fake = FakeDocker(str(tmp_path / "docker.sock"), **kw)
        fakes.append(fake)
        return fake

    yield make
    for f in fakes:
        f.stop()


def creator(fake, subnet=lambda: (SUBNET, GW), **kw):
    logs: list[str] = []
    c = NetworkCreator(EngineClient(fake.path, "docker"), "crossnet", subnet, logs.append,
                       first_delay=0.01, max_delay=0.05, **kw)
    return c, logs


def test_creates_the_network_with_this_hosts_subnet_once_dockerd_answers(docker):
    fake = docker()
    c, logs = creator(fake, max_tries=400)
    thread = c.start()
    assert not c.done.wait(0.3)  # dockerd is not there yet: retried in the background
    fake.start()
    assert c.done.wait(10)
    thread.join(5)
    posts = [r for r in fake.requests if r[0] == "POST"]
    assert posts == [("POST", "/networks/create", network_config(SUBNET, GW, "crossnet"))]
    assert posts[0][2]["IPAM"] == {"Driver": "crossnet", "Config": [{"Subnet": SUBNET, "Gateway": GW}]}
    assert posts[0][2]["Driver"] == "crossnet"
    waits = [m for m in logs if m.startswith("waiting for dockerd")]
    assert len(waits) == 1 and logs[-1] == f"created Docker network 'crossnet' (subnet {SUBNET}, gateway {GW})"


def test_waits_for_this_hosts_subnet(docker):
    fake = docker()
    fake.start()
    ready = {"v": False}

    def subnet():
        if not ready["v"]:
            raise CrossnetError("this host has no crossnet subnet yet: run crossnet apply/launch first")
        return SUBNET, GW

    c, logs = creator(fake, subnet, max_tries=400)
    c.start()
    assert not c.done.wait(0.2)
    assert fake.requests == []  # Docker is not asked before the subnet is known
    ready["v"] = True
    assert c.done.wait(10)
    assert sum(m.startswith("waiting to create") for m in logs) == 1
    assert fake.networks["crossnet"]["IPAM"]["Config"] == [{"Subnet": SUBNET, "Gateway": GW}]


@pytest.mark.parametrize("existing,want", [
    ({"Driver": "crossnet", "IPAM": {"Config": [{"Subnet": SUBNET, "Gateway": GW}]}}, "exists (subnet"),
    ({"Driver": "crossnet", "IPAM": {"Config": [{"Subnet": "0.0.0.0/0", "Gateway": GW}]}},
     "without a subnet (pool 0.0.0.0/0"),
    ({"Driver": "crossnet", "IPAM": {"Config": [{"Subnet": "10.32.7.0/24", "Gateway": "10.32.7.1"}]}},
     "host's crossnet subnet is now 10.32.1.0/24"),
    ({"Driver": "bridge", "IPAM": {"Config": []}}, "driver 'bridge', not crossnet"),
])
def test_an_existing_network_is_left_alone_with_one_line(docker, existing, want):
    fake = docker(networks={"crossnet": {"Name": "crossnet", **existing}})
    fake.start()
    c, logs = creator(fake, max_tries=3)
    c.run()
    assert c.done.is_set() and [r[0] for r in fake.requests] == ["GET"]
    assert len(logs) == 1 and want in logs[0] and "\n" not in logs[0]
    if "exists (subnet" not in want:
        assert "docker network rm crossnet" in logs[0]


def test_create_refused_is_retried_and_logged_once(docker):
    fake = docker(create_status=500)
    fake.start()
    c, logs = creator(fake, max_tries=4)
    c.run()
    assert not c.done.is_set()
    assert len([r for r in fake.requests if r[0] == "POST"]) == 4
    assert len(logs) == 1 and "HTTP 500" in logs[0] and "plugin not found" in logs[0]


def test_stop_ends_the_retries(docker):
    fake = docker()  # never started
    c, _logs = creator(fake)
    thread = c.start()
    c.stop()
    thread.join(5)
    assert not thread.is_alive() and not c.done.is_set()


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "a/b", "../x", "a\nb"])
def test_bad_network_names(name):
    with pytest.raises(ConfigError, match="--network-name"):
        check_name(name)


def test_existing_note_with_junk_is_one_line():
    for info in (None, [], {"IPAM": None}, {"Driver": "crossnet", "IPAM": {"Config": ["x"]}}):
        note = existing_note(info, "crossnet", SUBNET, GW)
        assert "\n" not in note and "crossnet" in note


def test_cli_rejects_a_bad_network_name_before_anything(tmp_path):
    import os
    import subprocess
    import sys

    sock = tmp_path / "p.sock"
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "s"), "docker-plugin",
                           "--socket", str(sock), "--network-name", "bad name"],
                          capture_output=True, text=True, timeout=60, env=os.environ, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("crossnet: error: --network-name:"), proc.stderr
    assert not sock.exists() and not (tmp_path / "s").exists()
