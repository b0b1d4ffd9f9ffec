"""A small etcd v3 client over etcd's HTTP/JSON gateway (``/v3/...``).

Why our own: the gRPC ``etcd3`` package breaks with protobuf >= 4, ``aetcd`` needs
grpcio (and asyncio), ``etcd3gw`` works but pulls requests/futurist/pbr and hides
the watch stream's header, cancel reason and compact revision, which a watcher that
resumes after reconnecting needs. The gateway is part of every etcd >= 3.3 (``/v3``
path from 3.4), speaks plain JSON with base64 keys/values, and http.client + ssl from
the standard library cover it: no dependency, small RSS, TLS client certs included.

Only what crossnet needs: range, put, delete, txn, lease grant/keepalive/revoke/ttl,
and a streaming watch. Every call has a timeout; endpoints are tried in turn.

Errors: :class:`EtcdUnavailable` (no endpoint answered: connection refused, timeout,
TLS failure...), :class:`EtcdError` (etcd answered with an error, e.g. lease not found),
:class:`WatchCompacted` (the watch's start revision was compacted away).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from crossnet.errors import ConfigError, CrossnetError
from crossnet.redact import mask_credentials
from crossnet.unixhttp import UnixHTTPConnection

# grpc codes the gateway returns in {"code": N}
GRPC_NOT_FOUND = 5

# A watch stays open while it is quiet. etcd sends a progress notification on an idle watch
# every 10 minutes (its --experimental-watch-progress-notify-interval default): a watch silent
# for longer than WATCH_IDLE_TIMEOUT is taken as dead and opened again. A host or link that
# died is found sooner by TCP keepalive on the watch's socket (the kernel probes the idle
# connection: WATCH_KEEPALIVE_IDLE s of silence, then WATCH_KEEPALIVE_COUNT probes
# WATCH_KEEPALIVE_INTERVAL s apart; no request, no TLS record, nothing for etcd to do).
# Re-opening idle watches every 30 s instead cost every host a TLS handshake, a watch and a
# read per watch each time, on the etcd member it uses (docs/mesh.md, Resources).
WATCH_IDLE_TIMEOUT = 660.0
WATCH_KEEPALIVE_IDLE = 15
WATCH_KEEPALIVE_INTERVAL = 5
WATCH_KEEPALIVE_COUNT = 3


class EtcdError(CrossnetError):
    """etcd answered, with an error."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(mask_credentials(message))
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached."""


class WatchCompacted(EtcdError):
    def __init__(self, compact_revision: int):
        super().__init__(f"watch start revision was compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


def b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """range_end for "every key starting with prefix" (etcd's convention)."""
    p = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    for i in range(len(p) - 1, -1, -1):
        if p[i] < 0xFF:
            p[i] += 1
            return bytes(p[: i + 1])
    return b"\0"


@dataclass
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, d: dict) -> KV:
        return cls(
            key=unb64(d.get("key")).decode(),
            value=unb64(d.get("value")),
            create_revision=int(d.get("create_revision", 0)),
            mod_revision=int(d.get("mod_revision", 0)),
            version=int(d.get("version", 0)),
            lease=int(d.get("lease", 0)),
        )

    def json(self) -> Any:
        return json.loads(self.value) if self.value else None


@dataclass
class Event:
    type: str  # PUT | DELETE
    kv: KV


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoints(urls: str | list[str]) -> list[Endpoint]:
    """'http://10.0.0.1:2379,https://h2:2379' -> endpoints. ConfigError on a bad URL;
    no message ever shows a password or token (crossnet.redact.mask_credentials)."""
    if isinstance(urls, str):
        _refuse_credentials(urls)
        items = urls.split(",")
    else:
        items = list(urls)
        for u in items:
            _refuse_credentials(u)
    out = []
    for raw in (u.strip() for u in items):
        if not raw:
            continue
        shown = repr(mask_credentials(raw)) if not any(c.isspace() for c in raw) else "(contains white space)"
        if raw.startswith("unix://"):
            path = raw[len("unix://"):]
            if not path.startswith("/"):
                raise ConfigError(f"--etcd: bad URL {shown} (expected unix:///ABSOLUTE/PATH)")
            out.append(Endpoint("unix", path, 0))
            continue
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--etcd: bad URL {shown}: {mask_credentials(str(exc))}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--etcd: bad URL {shown} (expected http://HOST:PORT, https://HOST:PORT or unix:///PATH)")
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"--etcd: bad URL {shown}: no path expected")
        out.append(Endpoint(parts.scheme, parts.hostname, port or 2379))
    if not out:
        raise ConfigError("--etcd: no etcd URL given")
    return out


def _refuse_credentials(urls: str) -> None:
    """User info in an http(s) URL was silently dropped (etcd's JSON gateway takes TLS
    client certificates, not passwords in the URL): refuse it, masked."""
    bad = [u for u in urls.split(",") if "@" in u and not u.strip().startswith("unix://")]
    if bad:
        # shown (masked) only when every such item is a URL whose user info the masker finds
        showable = all("://" in u.split("@", 1)[0] for u in bad) and not any(c.isspace() for c in urls)
        shown = repr(mask_credentials(urls)) if showable else ""
        raise ConfigError(f"--etcd: a user name or password in the URL is not supported "
                          f"(authenticate with --cert/--key){': ' + shown if shown else ''}")


def _friendly(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed by server"
    return str(exc) or type(exc).__name__


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive on a long-lived (watch) connection: a peer that is gone without a
    word (host down, link cut) ends the read after about WATCH_KEEPALIVE_IDLE +
    WATCH_KEEPALIVE_COUNT * WATCH_KEEPALIVE_INTERVAL s of silence."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a unix socket: the peer's death closes it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, WATCH_KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, WATCH_KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, WATCH_KEEPALIVE_COUNT)


class EtcdClient:
    def __init__(
        self,
        endpoints: str | list[str],
        cert: str | None = None,
        key: str | None = None,
        cacert: str | None = None,
        timeout: float = 5.0,
    ):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if any(e.scheme == "https" for e in self.endpoints) or cert or cacert:
            try:
                ctx = ssl.create_default_context(cafile=cacert) if cacert else ssl.create_default_context()
                if cert:
                    ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--cert/--key/--cacert: cannot load TLS files: {_friendly(exc)}") from None
            self._ssl = ctx
        self._local = threading.local()
        self._preferred = 0  # index of the endpoint that answered last
        self._generation = 0  # bumped by set_endpoints: each thread drops its kept-alive connections
        self._lock = threading.Lock()

    def describe(self) -> str:
        return mask_credentials(",".join(map(str, self.endpoints)))

    def set_endpoints(self, urls: str | list[str]) -> None:
        """Use these endpoints from the next request on (ConfigError on a bad URL, the
        old list kept). A watch already open stays on its endpoint until it ends; kept-alive
        connections are dropped by each thread at its next call. The mesh's supervisor
        calls this when the voters change, so its agent keeps running (and answering on
        its socket) instead of being restarted."""
        endpoints = parse_endpoints(urls)
        if not endpoints:
            raise ConfigError("--etcd: no endpoint given")
        with self._lock:
            self.endpoints = endpoints
            self._preferred = 0
            self._generation += 1

    # ------------------------------------------------------------------ transport

    def _connect(self, ep: Endpoint, timeout: float | None) -> http.client.HTTPConnection:
        if ep.scheme == "unix":
            return UnixHTTPConnection(ep.host, timeout)
        if ep.scheme == "https":
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _ordered(self) -> tuple[list[tuple[int, Endpoint]], dict[int, http.client.HTTPConnection]]:
        """For one call: the endpoints (index, endpoint), the one that answered last
        first, and this thread's kept-alive connections by index into the same list. Both
        are taken together (set_endpoints may run meanwhile): the connections are dropped
        when the list changed since this thread's last call."""
        with self._lock:
            endpoints, generation = self.endpoints, self._generation
        local = self._local.__dict__
        conns = local.setdefault("conns", {})
        if local.get("generation") != generation:
            for c in conns.values():
                c.close()
            conns.clear()
            local["generation"] = generation
        indexes = [(self._preferred + k) % len(endpoints) for k in range(len(endpoints))]
        return [(i, endpoints[i]) for i in indexes], conns

    def close(self) -> None:
        conns = getattr(self._local, "conns", {})
        for c in conns.values():
            c.close()
        conns.clear()

    def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        """POST body as JSON to /v3/<path> on the first endpoint that answers."""
        payload = json.dumps(body).encode()
        order, conns = self._ordered()
        errors = []
        for i, ep in order:
            for attempt in (0, 1):  # a kept-alive connection may have gone stale: retry once fresh
                conn = conns.get(i)
                fresh = conn is None
                if conn is None:
                    conn = conns[i] = self._connect(ep, timeout or self.timeout)
                else:
                    conn.timeout = timeout or self.timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(conn.timeout)
                try:
                    conn.request("POST", f"/v3/{path}", payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    raw = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conns.pop(i, None)
                    if not fresh and attempt == 0 and not isinstance(exc, (socket.timeout, TimeoutError)):
                        continue
                    errors.append(f"{ep}: {_friendly(exc)}")
                    break
                self._preferred = i
                return self._decode(ep, resp.status, raw)
        raise EtcdUnavailable(f"cannot reach etcd ({'; '.join(errors)})")

    @staticmethod
    def _decode(ep: Endpoint, status: int, raw: bytes) -> dict:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise EtcdError(f"{ep}: not an etcd v3 endpoint (HTTP {status}, non-JSON answer)") from None
        if not isinstance(data, dict):
            raise EtcdError(f"{ep}: unexpected answer (HTTP {status})")
        if status != 200 or "error" in data:
            msg = data.get("message") or data.get("error") or f"HTTP {status}"
            if status == 404 and not data:
                msg = "HTTP 404: no v3 JSON gateway here (is this etcd >= 3.4?)"
            raise EtcdError(f"{ep}: {msg}", data.get("code"))
        return data

    # ------------------------------------------------------------------ kv

    def version(self) -> str:
        """The server version (GET /version), first endpoint that answers."""
        errors = []
        order, _ = self._ordered()
        for i, ep in order:
            conn = self._connect(ep, self.timeout)
            try:
                conn.request("GET", "/version")
                data = json.loads(conn.getresponse().read())
                return str(data.get("etcdserver", "?"))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(f"{ep}: {_friendly(exc)}")
            finally:
                conn.close()
        raise EtcdUnavailable(f"cannot reach etcd ({'; '.join(errors)})")

    def range(self, key: str, prefix: bool = False, serializable: bool = False) -> tuple[list[KV], int]:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if serializable:
            body["serializable"] = True
        data = self.call("kv/range", body)
        return [KV.from_json(kv) for kv in data.get("kvs", [])], int(data["header"]["revision"])

    def get(self, key: str) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        return int(self.call("kv/deleterange", body).get("deleted", 0))

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> tuple[bool, list[dict], int]:
        """Raw transaction; build the parts with the helpers below."""
        data = self.call("kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(data.get("succeeded")), data.get("responses", []), int(data["header"]["revision"])

    # txn building blocks
    @staticmethod
    def cmp_create(key: str, revision: int = 0, result: str = "EQUAL") -> dict:
        return {"key": b64(key), "target": "CREATE", "result": result, "create_revision": str(revision)}

    @staticmethod
    def cmp_mod(key: str, revision: int, result: str = "EQUAL") -> dict:
        return {"key": b64(key), "target": "MOD", "result": result, "mod_revision": str(revision)}

    @staticmethod
    def op_put(key: str, value: str | bytes, lease: int = 0) -> dict:
        req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            req["lease"] = str(lease)
        return {"request_put": req}

    @staticmethod
    def op_delete(key: str) -> dict:
        return {"request_delete_range": {"key": b64(key)}}

    @staticmethod
    def op_range(key: str, prefix: bool = False) -> dict:
        req = {"key": b64(key)}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        return {"request_range": req}

    # ------------------------------------------------------------------ leases

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        data = self.call("lease/grant", {"TTL": str(int(ttl))})
        if data.get("error"):
            raise EtcdError(str(data["error"]))
        return int(data["ID"]), int(data.get("TTL", ttl))

    def lease_keepalive(self, lease: int) -> int:
        """Refresh the lease once; returns its TTL, 0 if the lease no longer exists."""
        data = self.call("lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    def lease_ttl(self, lease: int) -> int:
        """Remaining TTL in seconds, -1 if the lease does not exist."""
        data = self.call("kv/lease/timetolive", {"ID": str(lease)})
        return int(data.get("TTL", -1))

    def lease_revoke(self, lease: int) -> bool:
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code == GRPC_NOT_FOUND:
                return False
            raise
        return True

    # ------------------------------------------------------------------ watch

    def watch(self, key: str, start_revision: int, prefix: bool = True, read_timeout: float = WATCH_IDLE_TIMEOUT,
              on_open: Any = None) -> Iterator[tuple[list[Event], int]]:
        """Stream (events, header revision) for key/prefix from start_revision on.

        Ends (StopIteration) when nothing arrived for read_timeout seconds (with
        ``progress_notify`` etcd sends a progress notification every 10 minutes on an idle
        watch); raises EtcdUnavailable on connection problems, when TCP keepalive finds the
        peer gone (:func:`keep_alive`) or when the server closes the stream, WatchCompacted
        when start_revision is gone.
        The caller reconnects from its last seen revision + 1.
        """
        req: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision), "progress_notify": True}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        payload = json.dumps({"create_request": req}).encode()
        errors = []
        order, _ = self._ordered()
        for i, ep in order:
            conn = self._connect(ep, self.timeout)
            try:
                conn.request("POST", "/v3/watch", payload, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise EtcdError(f"{ep}: watch failed: HTTP {resp.status} {resp.read()[:200]!r}")
                if conn.sock is not None:
                    conn.sock.settimeout(read_timeout)
                    keep_alive(conn.sock)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                errors.append(f"{ep}: {_friendly(exc)}")
                continue
            self._preferred = i
            if on_open is not None:
                on_open(conn)
            try:
                yield from self._stream(ep, resp)
                return
            finally:
                conn.close()
        raise EtcdUnavailable(f"cannot reach etcd ({'; '.join(errors)})")

    @staticmethod
    def _stream(ep: Endpoint, resp: http.client.HTTPResponse) -> Iterator[tuple[list[Event], int]]:
        while True:
            try:
                line = resp.readline()
            except TimeoutError:
                return  # idle for read_timeout: the caller resumes from its last revision
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise EtcdUnavailable(f"watch on {ep}: {_friendly(exc)}") from None
            if not line:
                raise EtcdUnavailable(f"watch on {ep}: stream closed by server")
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise EtcdError(f"watch on {ep}: bad message {line[:200]!r}") from None
            if "error" in msg:
                err = msg["error"]
                raise EtcdUnavailable(f"watch on {ep}: {err.get('message') if isinstance(err, dict) else err}")
            result = msg.get("result", {})
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise WatchCompacted(compact)
            if result.get("canceled"):
                raise EtcdUnavailable(f"watch on {ep}: canceled by server ({result.get('cancel_reason', 'no reason')})")
            events = [Event(e.get("type", "PUT"), KV.from_json(e.get("kv", {}))) for e in result.get("events", [])]
            yield events, int(result.get("header", {}).get("revision", 0))
