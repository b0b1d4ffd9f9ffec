"""The agent's local API: HTTP/1.0 + JSON on a unix socket ``<state-dir>/agent.sock``
(mode 0600: only root, or whoever owns the state dir, may use it).

    GET  /v1/status                 {"agent": {...lease, peers, health...}, "host": <crossnet status>}
    GET  /v1/peers                  [{"name", "address", "subnet", "programmed"}]
    POST /v1/attach  {"container": SPEC} | {"id": ID, "netns": PATH}, optional "ip", "ifname",
                                    "netns_id" ([st_dev, st_ino] of PATH as the caller sees it)
                                    -> the attachment (same JSON as `crossnet attach -o json`);
                                    400 for this host's own network namespace
    POST /v1/detach  {"container": SPEC} | {"id": ID}, optional "netns", "netns_id"
                                    -> {"id", "detached", "address"?, "asked_as"?} (an attachment
                                    of the same namespace under another id is found)
    POST /v1/gc      {"dry_run"?}   -> {"dry_run", "collected": [...]} (crossnet gc)
    GET  /v1/containers             {"host", "store", "known", "hosts": {name: [{"id", "address", "name"?}]}}:
                                    every host's containers as published in the store
                                    (known: false with the cluster file, which has no channel)

attach, detach and CNI ADD/DEL return once this host's container list is published
in the store (or after at most 1 s if the store does not answer; retried at resync).

Errors: HTTP 400 (bad input) / 409 (not configured) / 500 with {"error": "<one line>"}.
Try it: ``curl --unix-socket /var/lib/crossnet/agent.sock http://agent/v1/status``.
:func:`call` is the client (used by tests, the CNI plugin, scripts).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socketserver
import threading
from typing import TYPE_CHECKING, Any

from crossnet.errors import ConfigError, CrossnetError, IpamError
from crossnet.state import StateDir
from crossnet.unixhttp import UnixHTTPConnection, short_path

if TYPE_CHECKING:
    from crossnet.agent import Agent

MAX_BODY = 1 << 20


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, agent: Agent):
        self.agent = agent
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            with short_path(path) as p:
                super().__init__(p, _Handler, bind_and_activate=True)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def address_string(self) -> str:  # AF_UNIX peers have no address
        return "local"

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ConfigError("request body too large")
        raw = self.rfile.read(n) if n else b""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise ConfigError("request body is not JSON") from None
        if not isinstance(data, dict):
            raise ConfigError("request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method == "POST" else {}
            status, data = handle(self.server.agent, method, self.path.split("?")[0], body)
        except (ConfigError, IpamError) as exc:
            status, data = 400, {"error": str(exc)}
        except CrossnetError as exc:
            status, data = 500, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback over the socket
            status, data = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        self._reply(status, data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


def _container(body: dict) -> tuple[str, str | None]:
    from crossnet.runtime import resolve

    if body.get("container"):
        spec = str(body["container"])
        try:
            return resolve(spec)
        except ConfigError:
            from crossnet.runtime import spec_id

            return spec_id(spec), None
    if body.get("id"):
        return str(body["id"]), body.get("netns")
    raise ConfigError("give \"container\" (a CONTAINER spec) or \"id\" (+ \"netns\")")


def handle(agent: Agent, method: str, path: str, body: dict) -> tuple[int, Any]:
    from crossnet import containers
    from crossnet.host import status

    state = agent.state
    if method == "GET" and path == "/v1/status":
        try:
            host = status(state)
        except CrossnetError as exc:
            host = {"error": str(exc)}
        return 200, {"agent": agent.info(), "host": host}
    if method == "GET" and path == "/v1/peers":
        return 200, agent.info()["peers"]
    if method == "POST" and path == "/v1/attach":
        cid, netns = _container(body)
        if not netns:
            from crossnet.runtime import resolve

            cid, netns = resolve(str(body.get("container") or cid))
        _same_namespace(body, str(netns))
        ctx, backend = _context(state)
        att = containers.attach(state, ctx, backend, cid, netns, requested=body.get("ip"),
                                ifname=str(body.get("ifname") or "eth0"))
        _containers_changed(agent)
        return 200, att.to_json()
    if method == "POST" and path == "/v1/detach":
        cid, netns = _container(body)
        if netns:
            _same_namespace(body, str(netns))
        ctx, backend = _context(state)
        key = containers.resolve_key(state, ctx, cid, str(netns)) if netns else cid  # another name of it
        res = containers.detach(state, ctx, backend, key)
        if res is not None:
            _containers_changed(agent)
        return 200, {"id": key, "detached": res is not None, **(res or {}), **({"asked_as": cid} if key != cid else {})}
    if method == "POST" and path == "/v1/gc":
        ctx, backend = _context(state)
        items = containers.gc(state, ctx, backend, dry_run=bool(body.get("dry_run")))
        if items and not body.get("dry_run"):
            _containers_changed(agent)
        return 200, {"dry_run": bool(body.get("dry_run")), "collected": items}
    if method == "GET" and path == "/v1/containers":
        return 200, agent.cluster_containers()
    if method == "POST" and path == "/v1/cni":
        out = _cni(body)
        if not out.get("stale") and str((body.get("environ") or {}).get("CNI_COMMAND")) in ("ADD", "DEL"):
            _containers_changed(agent)
        return 200, out
    if path in ("/v1/status", "/v1/peers", "/v1/attach", "/v1/detach", "/v1/gc", "/v1/cni", "/v1/containers"):
        return 405, {"error": f"{method} not allowed on {path}"}
    return 404, {"error": f"no such endpoint {path} (try /v1/status)"}


def _same_namespace(body: dict, netns: str) -> None:
    """A caller that sends the identity of the namespace it means ("netns_id": [dev, ino],
    as `crossnet attach/detach` do) must mean the one ``netns`` names here: a /proc/PID
    path resolves in the agent's PID namespace, a relative or bind-mounted path in its
    mount namespace, and could name another namespace than the caller's."""
    want = body.get("netns_id")
    if want is None:
        return
    from crossnet.containers import netns_ident

    if not (isinstance(want, list) and len(want) == 2 and all(isinstance(x, int) for x in want)):
        raise ConfigError("netns_id: expected [st_dev, st_ino] of the namespace file")
    if netns_ident(netns if "/" in netns else f"/run/netns/{netns}") != tuple(want):
        raise ConfigError(f"netns: {netns} names another network namespace in the agent than in the caller "
                          "(different PID or mount namespace); give a path both see the same way")


def _containers_changed(agent: Agent) -> None:
    agent.containers_changed()


def _cni(body: dict) -> dict:
    """Run one crossnet-cni invocation ({environ, stdin, netns}) in the agent: the
    same plugin code and IPAM, without a process start. Callers from another
    network namespace are told `stale` and run the plugin themselves."""
    from crossnet.cni import plugin
    from crossnet.cni.client import netns_id, target_id

    if body.get("netns") != netns_id():
        return {"stale": True}
    environ = body.get("environ") if isinstance(body.get("environ"), dict) else {}
    if body.get("target") != target_id(environ):  # CNI_NETNS names another namespace here: the caller runs it
        return {"stale": True}
    environ = {str(k): str(v) for k, v in (body.get("environ") or {}).items()}
    rc, out = plugin.run(environ, str(body.get("stdin", "")).encode("utf-8", "surrogateescape"))
    return {"rc": rc, "stdout": plugin.output_text(out)}


def _context(state: StateDir):
    from crossnet.host import load_context

    try:
        return load_context(state)
    except CrossnetError as exc:
        raise CrossnetError(f"agent has not configured this host yet: {exc}") from None


class _ApiHandle:
    def __init__(self, server: _Server):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="api", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


def serve(agent: Agent, path: str) -> _ApiHandle:
    return _ApiHandle(_Server(path, agent))


# ---------------------------------------------------------------------- client


def call(state_dir: str | os.PathLike[str], method: str, path: str, body: dict | None = None,
         timeout: float = 30.0) -> Any:
    """Call the agent running with this state dir. CrossnetError when there is none
    or it answers with an error."""
    sock = os.path.join(os.fspath(state_dir), "agent.sock")
    conn = UnixHTTPConnection(sock, timeout, host="agent")
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, payload, headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (FileNotFoundError, ConnectionRefusedError):
        raise CrossnetError(f"no crossnet agent is running with state dir {state_dir} (no {sock})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CrossnetError(f"agent API {sock}: {exc}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise CrossnetError(f"agent API {sock}: answer is not JSON") from None
    if resp.status != 200:
        msg = data.get("error") if isinstance(data, dict) else None
        raise CrossnetError(msg or f"agent API {sock}: HTTP {resp.status}")
    return data


def agent_running(state_dir: str | os.PathLike[str]) -> bool:
    try:
        call(state_dir, "GET", "/v1/peers", timeout=2)
    except CrossnetError:
        return False
    return True
