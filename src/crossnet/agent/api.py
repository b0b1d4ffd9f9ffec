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
    POST /v1/resync  {}             -> {"resync": true} (a full sync soon: crossnet expose/hide)
    GET  /v1/containers             {"host", "store", "known", "hosts": {name: [{"id", "address", "name"?, "network"?}]}}:
                                    every host's containers as published in the store
                                    (known: false with the cluster file, which has no channel)

attach, detach and CNI ADD/DEL return once this host's container list is published
in the store (or after at most 1 s if the store does not answer; retried at resync).

Errors: {"error": "<one line>"} with HTTP 400 (bad input, naming the field: malformed
request, Content-Length, JSON, unknown field, wrong type, bad netns/ifname/ip), 408 (the
body did not arrive within REQUEST_TIMEOUT), 413 (body over MAX_BODY), 404/405, 409 (this
host is not configured yet, the container is attached elsewhere), 503 (over
MAX_CONNECTIONS connections at once) or 500 (the kernel or the store failed).
Try it: ``curl --unix-socket /var/lib/crossnet/agent.sock http://agent/v1/status``.
:func:`call` is the client (used by tests, the CNI plugin, scripts).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import json
import os
import socketserver
import threading
import time
from typing import Any, Protocol

from crossnet import unixsock
from crossnet.agent.metrics import observe
from crossnet.errors import ConfigError, CrossnetError, IpamError
from crossnet.serveloop import ConnectionSlots, WakeOnShutdown
from crossnet.state import StateDir
from crossnet.unixhttp import UnixHTTPConnection


class Agent(Protocol):
    """What the API needs from the agent it serves (crossnet.agent.core.Agent is one; the
    API does not import the agent module, so the dependency goes one way)."""

    state: StateDir

    def info(self) -> dict[str, Any]: ...

    def cluster_containers(self) -> dict[str, Any]: ...

    def containers_changed(self, wait: float = 1.0, force: bool = False) -> None: ...

    def resync_soon(self) -> None: ...

MAX_BODY = 1 << 20  # larger bodies: 413
MAX_DEPTH = 16  # JSON nesting of a body (the largest one, /v1/cni, needs 2)
MAX_CONNECTIONS = 32  # served at once; more: 503 and closed at once
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its whole request (line, headers, body)
REPLY_TIMEOUT = 30.0  # seconds to take a reply
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s")


class BadRequest(CrossnetError):
    """The request itself is unusable: answered with ``status`` (400, 408, 413, ...)."""

    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.status = status


class AgentNotRunning(CrossnetError):
    """Nothing answers on the state dir's agent socket (no agent runs, or it is being
    restarted): the request was not sent."""


class NotConfigured(CrossnetError):
    """The agent has not configured this host (yet): 409."""


class _Server(WakeOnShutdown, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One thread per connection, at most MAX_CONNECTIONS of them: a connection over
    the limit gets a 503 and is closed by the accepting thread, which never blocks on
    it. Each connection must deliver its request within REQUEST_TIMEOUT. The accepting
    thread sleeps until a connection or close() (crossnet.serveloop: no poll interval)."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, agent: Agent):
        self.agent = agent
        self.path = path
        self.slots = ConnectionSlots(MAX_CONNECTIONS)  # a unix socket: no per-source share
        # never another process's socket, nor a file that is not a socket (crossnet.unixsock)
        sock, self.ident = unixsock.bind_for("--state-dir", path, "(another crossnet agent?); stop it first",
                                             backlog=self.request_queue_size)
        try:
            super().__init__(path, _Handler, bind_and_activate=False)
        except BaseException:
            unixsock.release(path, self.ident)
            sock.close()
            raise
        unixsock.adopt(self, sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.try_acquire():
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Not socketserver's traceback on stderr: every error of a request is answered
        in _Handler._dispatch; what ends here is a client that went away mid-reply."""

    def close(self) -> None:
        self.shutdown()
        unixsock.release(self.path, self.ident)  # before closing: a successor's socket stays
        self.server_close()


def _refuse_busy(sock: Any) -> None:
    body = json.dumps({"error": f"too many connections (at most {MAX_CONNECTIONS} at once); try again"}).encode()
    with contextlib.suppress(OSError):
        sock.setblocking(False)  # a small reply fits the socket buffer; never wait for this client
        sock.send(_BUSY % (len(body), body))


class _DeadlineReader(io.RawIOBase):
    """The connection's read side with one deadline for the whole request: a client
    sending a byte now and then cannot hold a thread longer than REQUEST_TIMEOUT."""

    def __init__(self, sock: Any, deadline: float):
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + REQUEST_TIMEOUT))

    def address_string(self) -> str:  # AF_UNIX peers have no address
        return "local"

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line, header lines too long or
        too many, unknown method) as one JSON line; bad input is never a 5xx: an unknown
        method is 405 (not 501), an HTTP version other than 1.x is 400 (not 505)."""
        if code == 501:
            code, message = 405, f"method {str(self.command)[:20]!r} not allowed"
        elif code >= 500:
            code = 400
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unreadable request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        text = message or self.responses.get(code, ("error",))[0]
        with contextlib.suppress(OSError):
            self._reply(code, {"error": " ".join(str(text).split())[:200]})

    def _reply(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.connection.settimeout(REPLY_TIMEOUT)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _length(self) -> int:
        values = self.headers.get_all("Content-Length") or []
        if len(set(v.strip() for v in values)) > 1:
            raise BadRequest("Content-Length is given twice with different values")
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest("Transfer-Encoding is not supported: send Content-Length")
        raw = values[0].strip() if values else "0"
        if not raw.isascii() or not raw.isdigit():
            raise BadRequest(f"Content-Length: {raw[:40]!r} is not a number of bytes")
        if len(raw.lstrip("0")) > 12 or int(raw) > MAX_BODY:
            raise BadRequest(f"request body too large (Content-Length {raw[:20]}; at most {MAX_BODY} bytes)", 413)
        return int(raw)

    def _body(self) -> dict:
        from crossnet.safejson import JsonInputError, loads

        n = self._length()
        try:
            raw = self.rfile.read(n) if n else b""
        except TimeoutError:
            raise BadRequest(f"request body not received within {REQUEST_TIMEOUT:g} s", 408) from None
        if len(raw) < n:
            raise BadRequest(f"request body ended after {len(raw)} of {n} bytes (Content-Length)")
        try:
            data = loads(raw, "request body", MAX_BODY, MAX_DEPTH) if raw.strip() else {}
        except JsonInputError as exc:
            raise BadRequest(str(exc)) from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        try:
            if method == "POST":
                body = self._body()
            else:
                self._length()
                body = {}
            self.connection.settimeout(None)  # the request is in: the work takes what it takes
            status, data = handle(self.server.agent, method, self.path.split("?")[0], body)
        except BadRequest as exc:
            status, data = exc.status, {"error": str(exc)}
        except (ConfigError, IpamError) as exc:
            status, data = 400, {"error": str(exc)}
        except NotConfigured as exc:
            status, data = 409, {"error": str(exc)}
        except CrossnetError as exc:
            from crossnet.containers import InUse, NotReady

            status = 409 if isinstance(exc, (InUse, NotReady)) else 500
            data = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback over the socket
            status, data = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        self._reply(status, data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


# the fields each POST takes (anything else is refused, naming it)
FIELDS = {
    "/v1/attach": ("container", "id", "netns", "ip", "ifname", "netns_id", "name"),
    "/v1/detach": ("container", "id", "netns", "netns_id"),
    "/v1/cni": ("environ", "stdin", "netns", "code", "target"),
    "/v1/gc": ("dry_run",),
    "/v1/resync": (),
}
MAX_FIELD = 4096


def check_body(path: str, body: dict) -> None:
    """The body of a POST to ``path``: known fields of the right types (BadRequest
    naming the field). Values that need the system (does the netns exist?) are
    checked by the endpoint."""
    allowed = FIELDS.get(path)
    if allowed is None:
        return
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r} (allowed: {', '.join(allowed)})")
    for key in [k for k, v in body.items() if v is None]:  # null: not given (the CLI sends "ip": null)
        del body[key]
    if path == "/v1/cni":
        netns = body.get("netns")
        if not (isinstance(netns, list) and len(netns) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in netns)):
            raise BadRequest("netns: must be [device, inode] of the caller's network namespace")
        if "code" in body and not isinstance(body["code"], str):
            raise BadRequest("code: must be a string")
        target = body.get("target")  # CNI_NETNS as the client resolved it (None: no such file there)
        if target is not None and not (isinstance(target, list) and len(target) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in target)):
            raise BadRequest("target: must be [device, inode] of CNI_NETNS as the caller resolves it")
        return
    if "dry_run" in body and not isinstance(body["dry_run"], bool):
        raise BadRequest(f"dry_run: must be true or false, not {_kind(body['dry_run'])}")
    if "netns_id" in body:
        ident = body["netns_id"]
        if not (isinstance(ident, list) and len(ident) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ident)):
            raise BadRequest("netns_id: must be [device, inode] of the namespace file as the caller sees it")
        if "netns" not in body and "container" not in body:
            raise BadRequest('netns_id: goes with "netns" or "container"')
    for key in allowed:
        if key not in body or key in ("netns_id", "dry_run"):
            continue
        value = body[key]
        if not isinstance(value, str):
            raise BadRequest(f"{key}: must be a string, not {_kind(value)}")
        if not value or len(value) > MAX_FIELD or not value.isprintable():
            raise BadRequest(f"{key}: must be a non-empty printable string of at most {MAX_FIELD} characters")
    if "container" in body and "id" in body:
        raise BadRequest('give either "container" or "id", not both')
    if "netns" in body and "id" not in body:
        raise BadRequest('netns: goes with "id" (a "container" spec names its namespace itself)')
    if "name" in body:  # the container's DNS name (docs/dns.md)
        from crossnet.dns import name_problem

        problem = name_problem(body["name"])
        if problem:
            raise BadRequest(f"name: invalid container name {body['name'][:40]!r}: {problem}")
    if "ifname" in body:
        from crossnet.cni.plugin import ifname_problem

        problem = ifname_problem(body["ifname"])
        if problem:
            raise BadRequest(f"ifname: invalid interface name {body['ifname'][:20]!r}: {problem}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_netns(path: str, field: str) -> None:
    """``path`` exists and is a network namespace, else BadRequest naming ``field``."""
    from crossnet.cni.plugin import netns_problem

    if not os.path.exists(path):
        raise BadRequest(f"{field}: {path[:200]!r}: no such network namespace file")
    problem = netns_problem(path)
    if problem:
        raise BadRequest(f"{field}: {path[:200]!r} {problem}")


def _container(body: dict) -> tuple[str, str | None]:
    from crossnet.runtime.spec import resolve

    if body.get("container"):
        spec = str(body["container"])
        try:
            return resolve(spec)
        except ConfigError:
            from crossnet.runtime.spec import spec_id

            return spec_id(spec), None
    if body.get("id"):
        return str(body["id"]), body.get("netns")
    raise ConfigError("give \"container\" (a CONTAINER spec) or \"id\" (+ \"netns\")")


def handle(agent: Agent, method: str, path: str, body: dict) -> tuple[int, Any]:
    from crossnet import containers
    from crossnet.host import status

    state = agent.state
    if method == "POST":
        check_body(path, body)
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
            from crossnet.runtime.spec import resolve

            cid, netns = resolve(str(body.get("container") or cid))
        check_netns(netns, "netns" if "netns" in body else "container")
        _same_namespace(body, str(netns))
        t0, ok = time.perf_counter(), False
        try:
            ctx, backend = _context(state)
            att = containers.attach(state, ctx, backend, cid, netns, requested=body.get("ip"),
                                    ifname=str(body.get("ifname") or "eth0"))
            containers.name_and_resolver(state, ctx, att, body.get("name"))
            ok = True
        finally:
            observe(agent, "attach", time.perf_counter() - t0, ok)
        _containers_changed(agent)
        return 200, att.to_json()
    if method == "POST" and path == "/v1/detach":
        cid, netns = _container(body)
        if netns:
            _same_namespace(body, str(netns))
        ctx, backend = _context(state)
        key = containers.resolve_key(state, ctx, cid, str(netns) if netns else None)  # another name of it
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
    if method == "POST" and path == "/v1/resync":  # the main loop is woken and syncs (crossnet expose)
        agent.resync_soon()
        return 200, {"resync": True}
    if method == "GET" and path == "/v1/containers":
        return 200, agent.cluster_containers()
    if method == "POST" and path == "/v1/cni":
        t0 = time.perf_counter()
        out = _cni(body)
        if not out.get("stale"):
            observe(agent, "cni", time.perf_counter() - t0, out.get("rc") == 0,
                    str((body.get("environ") or {}).get("CNI_COMMAND")))
        if not out.get("stale") and str((body.get("environ") or {}).get("CNI_COMMAND")) in ("ADD", "DEL"):
            _containers_changed(agent)
        return 200, out
    if path in ("/v1/status", "/v1/peers", "/v1/attach", "/v1/detach", "/v1/gc", "/v1/cni", "/v1/containers", "/v1/resync"):
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
    from crossnet.cni import netns_id, plugin, target_id

    try:
        environ, stdin = plugin.unpack_request(body)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if body.get("netns") != netns_id():
        return {"stale": True}
    if body.get("target") != target_id(environ):  # CNI_NETNS names another namespace here: the caller runs it
        return {"stale": True}
    t0 = time.perf_counter()
    rc, out = plugin.run(environ, stdin)
    plugin._log(environ, stdin, rc, out, time.perf_counter() - t0, via="agent")  # the network's logFile, if any
    return {"rc": rc, "stdout": plugin.output_text(out)}


def _context(state: StateDir):
    from crossnet.host import load_context

    try:
        return load_context(state)
    except CrossnetError as exc:
        raise NotConfigured(f"agent has not configured this host yet: {exc}") from None


class _ApiHandle:
    def __init__(self, server: _Server):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
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
        raise AgentNotRunning(f"no crossnet agent is running with state dir {state_dir} (no {sock})") from None
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
