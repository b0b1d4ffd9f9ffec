"""`podman:NAME` and `docker:NAME` container specs: find a container's network namespace
through its runtime's API; crossnet.runtime.spec.resolve imports this module (through
RESOLVERS) only for those two forms.

docker: the Docker Engine API over its unix socket (``DOCKER_HOST=unix:///path`` or
/var/run/docker.sock): ``GET /containers/NAME/json`` -> ``State.Pid`` ->
``/proc/PID/ns/net``. podman: the same API served by ``podman system service``
(socket from ``CROSSNET_PODMAN_SOCKET``, ``CONTAINER_HOST=unix://...`` or
/run/podman/podman.sock), else ``podman container inspect`` (the command from
``CROSSNET_PODMAN`` if set, e.g. a lab host's podman wrapper).

The HTTP client is a few lines of stdlib (http.client over AF_UNIX): no dependency.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from typing import Any, Callable
from urllib.parse import quote

from crossnet.errors import ConfigError, CrossnetError
from crossnet.unixhttp import UnixHTTPConnection

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"
TIMEOUT = 10.0


class EngineClient:
    """Minimal Docker Engine API client (also talks to podman's compatible service)."""

    def __init__(self, socket_path: str, label: str = "docker"):
        self.socket_path = socket_path
        self.label = label

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.socket_path)
        headers = {"Host": "docker", "Accept": "application/json"}
        data = None
        if body is not None:  # a JSON request body (POST /networks/create)
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except FileNotFoundError:
            raise ConfigError(f"{self.label}: API socket {self.socket_path} does not exist") from None
        except OSError as exc:
            raise CrossnetError(f"{self.label}: cannot talk to the API at {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = body.decode(errors="replace")
        return resp.status, data

    def inspect(self, name: str) -> dict[str, Any]:
        status, data = self.request("GET", f"/containers/{quote(name, safe='')}/json")
        if status == 404:
            raise ConfigError(f"CONTAINER: {self.label}: no such container {name!r}")
        if status != 200 or not isinstance(data, dict):
            msg = data.get("message") if isinstance(data, dict) else data
            raise CrossnetError(f"{self.label}: inspecting {name!r} failed (HTTP {status}): {msg}")
        return data

    def version(self) -> dict[str, Any]:
        status, data = self.request("GET", "/version")
        if status != 200 or not isinstance(data, dict):
            raise CrossnetError(f"{self.label}: GET /version failed (HTTP {status})")
        return data


def _socket_from_env(var: str) -> str | None:
    value = os.environ.get(var, "")
    if not value:
        return None
    if value.startswith("unix://"):
        return value[len("unix://"):]
    if value.startswith("/"):
        return value
    raise ConfigError(f"{var}={value}: only unix sockets (unix:///path) are supported")


def docker_socket() -> str:
    return _socket_from_env("DOCKER_HOST") or DOCKER_SOCKET


def podman_socket() -> str | None:
    path = _socket_from_env("CROSSNET_PODMAN_SOCKET") or _socket_from_env("CONTAINER_HOST")
    if path:
        return path
    return PODMAN_SOCKET if os.path.exists(PODMAN_SOCKET) else None


def netns_of(info: dict[str, Any], label: str, name: str) -> tuple[str, str]:
    """(container id, /proc/PID/ns/net) from an inspect document (Docker or podman)."""
    cid = info.get("Id") or info.get("ID") or name
    state = info.get("State") or {}
    pid = state.get("Pid") or 0
    if not state.get("Running") or not pid:
        status = state.get("Status") or "not running"
        raise ConfigError(
            f"CONTAINER: {label}:{name} is not running ({status}); "
            f"to release an address it had, run `crossnet detach {cid}`"
        )
    path = f"/proc/{pid}/ns/net"
    try:
        st = os.stat(path)
    except OSError:
        raise ConfigError(
            f"CONTAINER: {label}:{name}: process {pid} is not visible here (is the runtime in another PID namespace?)"
        ) from None
    mine = os.stat("/proc/self/ns/net")
    if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
        raise ConfigError(
            f"CONTAINER: {label}:{name} shares this host's network namespace (--network host); nothing to attach"
        )
    return cid, path


# a container name or (a prefix of) its id, as Docker and podman make them: never an option
# (`podman container inspect -l` is the newest container), a path or white space
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def check_name(label: str, name: str) -> None:
    """``name`` of a ``docker:``/``podman:`` spec, before any runtime is asked (ConfigError
    naming CONTAINER)."""
    if not name:
        raise ConfigError(f"CONTAINER: {label}: empty container name")
    if not NAME_RE.fullmatch(name):
        shown = name[:40].encode("unicode_escape").decode("ascii")
        raise ConfigError(f"CONTAINER: {label}: '{shown}' is not a container name or id "
                          "(a letter or digit, then letters, digits, '_', '.' or '-'; at most 255)")


def resolve_docker(name: str) -> tuple[str, str]:
    check_name("docker", name)
    client = EngineClient(docker_socket(), "docker")
    return netns_of(client.inspect(name), "docker", name)


def resolve_podman(name: str) -> tuple[str, str]:
    check_name("podman", name)
    sock = podman_socket()
    if sock:
        return netns_of(EngineClient(sock, "podman").inspect(name), "podman", name)
    podman = os.environ.get("CROSSNET_PODMAN") or shutil.which("podman")
    if podman is None:
        raise ConfigError("CONTAINER: podman: no podman API socket and no podman command found")
    proc = subprocess.run([*shlex.split(podman), "container", "inspect", name], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        msg = err[-1] if err else f"exit {proc.returncode}"
        if "no such container" in msg.lower():
            raise ConfigError(f"CONTAINER: podman: no such container {name!r}")
        raise CrossnetError(f"podman container inspect {name} failed: {msg}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise CrossnetError(f"podman container inspect {name}: the answer is not JSON") from None
    info = data[0] if isinstance(data, list) and data else data
    if not isinstance(info, dict):
        raise ConfigError(f"CONTAINER: podman: no such container {name!r}")
    return netns_of(info, "podman", name)


# spec prefix -> function(name) -> (container id, netns path)
RESOLVERS: dict[str, Callable[[str], tuple[str, str]]] = {"docker": resolve_docker, "podman": resolve_podman}
