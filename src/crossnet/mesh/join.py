"""The join handshake of a crossnet mesh (docs/mesh.md).

Pure logic (`JoinService.handle(method, path, body) -> (status, document)`, the
client's `make_join_request` / `check_join_response`) plus a small HTTPS transport
(`JoinServer`, `request_join`), all over one port (`JOIN_PORT`):

    joiner                                              serving host (holds CA key)
    1  TLS, certificate NOT verified   GET /v1/ca  ──►  {ca: PEM}
       pin(ca) == pin in the join token?  no → refused, nothing sent, nothing written
    2  TLS verified against that CA only (+ server's IP in its SANs):
                                       POST /v1/challenge ──► {nonce}   (single use, 60 s)
    3  own key + CSR made locally;     POST /v1/join {token_id, name, address, csr, nonce,
       proof = HMAC-SHA256(verifier(token), transcript(pin, nonce, token_id, name, address, csr))}
                                       ◄── {cert, ca, members}   or 403 {error, code}
    4  cert certifies our key, is signed by the pinned CA, names our address → saved
       (member.key 0600, member.crt, ca.crt); otherwise nothing is written.

The token secret and the private key never cross the wire; the CA certificate fetched
in step 1 is public and is trusted only once its pin matches.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import ipaddress
import json
import math
import re
import secrets
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from crossnet.errors import ConfigError, CrossnetError
from crossnet.mesh import pki
from crossnet.mesh.token import JoinToken, Token, TokenError, TokenStore, validate_id
from crossnet.ratelimit import ConnectRate, FailureLimit
from crossnet.serveloop import LimitedConnections, WakeOnShutdown, source_key

PROTOCOL = "crossnet-join/1"
JOIN_PORT = 6790
NONCE_TTL = 60.0
MAX_NONCES = 4096
MAX_BODY = 64 * 1024
TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # connections served at once; the next one is closed at once
MAX_PER_SOURCE = 8  # of them from one address (IPv6: one /64), so one client cannot hold them all
CONNECTION_DEADLINE = 60.0  # s a connection may last, whatever it sends (a join takes well under 1 s)
MAX_FAILURES = 5  # refused requests (wrong secret, unknown token, bad proof...) of one source
FAILURE_WINDOW = 60.0  # ...within this many s: the source is then refused with `rate-limited`...
FAILURE_BACKOFF = 60.0  # ...for this many s, before any token lookup or proof check
CONNECT_RATE = 5.0  # new connections per s and source (refilled), before the TLS handshake...
CONNECT_BURST = 20  # ...and at once (a join takes 2)
MAX_SOURCES = 4096  # sources each of these two tables remembers (the least recently seen go first)
MAX_MEMBERS = 128  # entries of a join response's member list (etcd clusters have a handful of voters)
MAX_URLS = 8  # client or peer URLs of one member


class JoinRefused(CrossnetError):
    """The handshake was refused. `code`: unknown, wrong-secret, revoked, expired
    (the token), bad-nonce, bad-request, conflict (refused by the admit hook),
    rate-limited (too many refused requests from this source: try again later),
    ca-pin-mismatch, bad-server-cert, bad-response."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- shared: the signed transcript

def transcript(pin: str, nonce: str, token_id: str, name: str, address: str, csr_der: bytes) -> bytes:
    """The bytes the proof authenticates: every request field plus the CA pin the joiner
    checked (a proof made for one cluster is worthless at another) and the server's nonce
    (a proof is single-use). Length-prefixed, so no two field lists give the same bytes."""
    out = [PROTOCOL.encode() + b"\0"]
    for part in (pin.encode(), nonce.encode(), token_id.encode(), name.encode(), address.encode(), csr_der):
        out.append(struct.pack(">I", len(part)) + part)
    return b"".join(out)


def make_proof(token: Token, message: bytes) -> bytes:
    import hmac

    return hmac.new(token.verifier, message, "sha256").digest()


# ---------------------------------------------------------------- serving side

class JoinService:
    """Transport-agnostic join endpoint of a host that holds the CA key. Refusals
    change nothing (the token store is only read; nothing is written)."""

    def __init__(self, ca: Any, tokens: TokenStore, members: Callable[[], list] | None = None,
                 admit: Callable[[str, str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        """ca: pki.CA, or signer.HelperCA (signs in a helper process: `pin`, `cert_pem`,
        `key`, `issue_pem`). members() fills the response's member list; admit(name, address), called once
        the token is proven and before signing, may raise JoinRefused (e.g. code
        "conflict": name or address taken — `crossnet launch`: launch.admit_joiner, which
        reserves both) and may return a callable, called if no certificate is issued."""
        if ca.key is None:
            raise pki.PkiError("a join endpoint needs the CA key")
        self.ca = ca
        self.tokens = tokens
        self.members = members or (lambda: [])
        self.admit = admit
        self.clock = clock
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """One request → (HTTP status, JSON document). Never raises for bad input."""
        try:
            if method == "GET" and path == "/v1/ca":
                return 200, {"protocol": PROTOCOL, "ca": self.ca.cert_pem.decode()}
            if method == "POST" and path == "/v1/challenge":
                return 200, {"protocol": PROTOCOL, "nonce": self.challenge()}
            if method == "POST" and path == "/v1/join":
                return 200, self.join(_json_object(body))
            return 404, {"error": f"no such endpoint: {method} {path[:64]}", "code": "bad-request"}
        except ConfigError as exc:
            return 400, {"error": str(exc), "code": "bad-request"}
        except (JoinRefused, TokenError) as exc:
            return 403, {"error": str(exc), "code": exc.code}
        except CrossnetError as exc:
            return 500, {"error": str(exc), "code": "server-error"}

    def challenge(self) -> str:
        nonce = secrets.token_hex(16)
        now = self.clock()
        with self._lock:
            for n in [n for n, exp in self._nonces.items() if exp <= now]:
                del self._nonces[n]
            while len(self._nonces) >= MAX_NONCES:  # oldest first (dicts keep insertion order)
                del self._nonces[next(iter(self._nonces))]
            self._nonces[nonce] = now + NONCE_TTL
        return nonce

    def _consume(self, nonce: str) -> None:
        with self._lock:
            expiry = self._nonces.pop(nonce, None)
        if expiry is None or expiry <= self.clock():
            raise JoinRefused("bad-nonce", "challenge unknown, used or expired; start the join again")

    def join(self, req: dict) -> dict:
        if req.get("protocol") != PROTOCOL:
            raise ConfigError(f"protocol: expected {PROTOCOL}")
        token_id = validate_id(req.get("token_id"), "token_id")
        name = pki.validate_name(req.get("name"))
        address = pki.validate_joiner_address(req.get("address"))
        nonce = _field_str(req, "nonce", 64)
        csr_der = _field_b64(req, "csr", pki.MAX_PEM)
        proof = _field_b64(req, "proof", 64)
        self._consume(nonce)  # single use, whatever happens next
        message = transcript(self.ca.pin, nonce, token_id, name, address, csr_der)
        self.tokens.verify_proof(token_id, message, proof)  # TokenError: unknown/wrong-secret/revoked/expired
        # the admit hook may reserve name and address (returning what gives them back when
        # no certificate is issued: a bad CSR, a signer error); the CSR is validated by issue_pem
        release = self.admit(name, address) if self.admit is not None else None
        try:
            cert = self.ca.issue_pem(csr_der, name, address)  # pki.CA, or signer.HelperCA (another process)
        except BaseException:
            if callable(release):
                release()
            raise
        return {"protocol": PROTOCOL, "cert": cert, "ca": self.ca.cert_pem.decode(),
                "members": list(self.members())}


def _json_object(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise ConfigError("request body too large")
    try:
        data = json.loads(body)
    except ValueError:
        raise ConfigError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise ConfigError("request body must be a JSON object")
    return data


def _field_str(req: dict, name: str, max_len: int) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ConfigError(f"{name}: expected a string of 1-{max_len} characters")
    return value


def _field_b64(req: dict, name: str, max_len: int) -> bytes:
    value = req.get(name)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if not raw or len(raw) > max_len:
        raise ConfigError(f"{name}: expected base64 of 1-{max_len} bytes")
    return raw


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: JoinServer
    timeout = TIMEOUT
    # headers and body go out in two writes: without TCP_NODELAY every answer waited for
    # the client's delayed ACK (~40 ms; a join took 156 ms on loopback, now ~26 ms)
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # the TLS handshake runs here, in the request's own thread (a slow client
        # cannot stall accept())
        self.request.settimeout(TIMEOUT)
        self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _dispatch(self, method: str) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        source = source_key(str(self.client_address[0]))
        failures = self.server.failures
        wait = failures.retry_after(source)
        headers = {}
        if not 0 <= n <= MAX_BODY:
            status, doc = 400, {"error": "request body too large", "code": "bad-request"}
            self.close_connection = True
        elif wait is not None:  # no token lookup, proof check or signature for this source until then
            self.rfile.read(n)  # read (at most MAX_BODY), so the connection stays usable
            status, doc = 429, _rate_limited(source, failures, wait)
            headers["Retry-After"] = str(math.ceil(wait))
        else:
            body = self.rfile.read(n) if n else b""
            try:
                status, doc = self.server.service.handle(method, self.path.split("?")[0], body)
            except Exception as exc:  # noqa: BLE001 - one line to the client, never a dropped connection
                status, doc = 500, {"error": f"internal error: {type(exc).__name__}: {exc}", "code": "server-error"}
        if 400 <= status < 429 and doc.get("code") != "conflict":
            # a refused request (bad input, wrong secret, unknown/expired/revoked token, used
            # nonce); not "conflict" (the proof was good) nor the server's own errors (5xx)
            failures.failed(source)
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


def _rate_limited(source: str, failures: FailureLimit, wait: float) -> dict:
    return {"error": f"too many failed joins from {source} ({failures.failures} within {failures.window:g} s); "
                     f"try again in {math.ceil(wait)} s", "code": "rate-limited"}


class JoinServer(WakeOnShutdown, LimitedConnections, socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The join endpoint over TLS (TLS 1.2+), with this host's member certificate (issued
    by the cluster CA, the host's address in its SANs). `start()` serves in a thread,
    which sleeps until a connection or close() (crossnet.serveloop: no poll interval)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: JoinService, host: str, port: int, cert_file: str, key_file: str):
        # LimitedConnections: a client that sends each byte within TIMEOUT but never a whole
        # request is cut at CONNECTION_DEADLINE; at most MAX_CONNECTIONS hold a thread, at
        # most MAX_PER_SOURCE of them from one source
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise pki.PkiError(f"join endpoint certificate {cert_file}: {exc}") from None
        self.ssl_context = ctx
        self.service = service
        # per source: refused requests (checked before any work for a request) and new
        # connections (checked before the TLS handshake)
        self.failures = FailureLimit(MAX_FAILURES, FAILURE_WINDOW, FAILURE_BACKOFF, MAX_SOURCES)
        self.connects = ConnectRate(CONNECT_RATE, CONNECT_BURST, MAX_SOURCES)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise CrossnetError(f"join endpoint {host}:{port}: {exc.strerror}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed TLS handshakes, resets: the client sees them; no traceback on stderr

    def limits(self) -> tuple[int, int, float]:
        return MAX_CONNECTIONS, MAX_PER_SOURCE, CONNECTION_DEADLINE

    def process_request(self, request: Any, client_address: Any) -> None:
        # a source opening connections faster than CONNECT_RATE (after CONNECT_BURST) gets
        # them closed at once, before any TLS handshake; then LimitedConnections' limits
        if not self.connects.allow(source_key(str(client_address[0]))):
            request.close()
            return
        super().process_request(request, client_address)

    def start(self) -> JoinServer:
        self._thread = threading.Thread(target=self.serve_forever, name="crossnet-join", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()


# ---------------------------------------------------------------- joining side

@dataclass
class JoinResult:
    key: Any = field(repr=False)
    cert: Any
    ca_cert: Any
    members: list


def parse_server(text: Any, field: str = "ADDR") -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` of a running host (default port JOIN_PORT)."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{field}: expected the IP address of a running host, optionally :PORT")
    host, port = text, str(JOIN_PORT)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{field}: expected [IPv6]:PORT")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{field}: expected the IP address of a running host, got {text[:64]!r}") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{field}: port must be 1-65535")
    return str(ip), int(port)


def make_join_request(join_token: JoinToken, nonce: str, name: str, address: str, key: Any) -> dict:
    """The POST /v1/join document: CSR (public key only) and the HMAC proof."""
    name = pki.validate_name(name)
    address = pki.validate_joiner_address(address)
    csr = pki.make_csr(key, name)
    token = join_token.token
    proof = make_proof(token, transcript(join_token.pin, nonce, token.id, name, address, csr))
    return {"protocol": PROTOCOL, "token_id": token.id, "name": name, "address": address,
            "csr": base64.b64encode(csr).decode(), "nonce": nonce, "proof": base64.b64encode(proof).decode()}


def check_ca_document(doc: Any, pin: str, where: str) -> Any:
    """The CA certificate of step 1, trusted only if its pin is the token's pin."""
    try:
        ca_cert = pki.load_cert_pem(doc["ca"], "ca") if isinstance(doc, dict) and isinstance(doc.get("ca"), str) \
            else None
    except pki.PkiError:
        ca_cert = None
    if ca_cert is None:
        raise JoinRefused("bad-response", f"{where}: did not send a CA certificate (not a crossnet join endpoint?)")
    got = pki.ca_pin(ca_cert)
    if got != pin:
        raise JoinRefused("ca-pin-mismatch", f"{where} belongs to another cluster: its CA pin is {got}, "
                                             f"the token pins {pin}; nothing was sent")
    return ca_cert


def check_join_response(doc: Any, pin: str, key: Any, name: str, address: str, where: str) -> JoinResult:
    """The issued certificate must come with the pinned CA, be signed by it, certify our
    own key and name our address and name; otherwise JoinRefused (nothing is saved)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("cert"), str) or not isinstance(doc.get("ca"), str):
        raise JoinRefused("bad-response", f"{where}: malformed join response")
    ca_cert = check_ca_document(doc, pin, where)
    try:
        cert = pki.load_cert_pem(doc["cert"], "cert")
        pki.check_member_cert(cert, ca_cert, key=key, address=address, name=name)
    except pki.PkiError as exc:
        raise JoinRefused("bad-response", f"{where}: issued certificate refused: {exc}") from None
    try:
        members = check_members(doc.get("members", []))
    except ConfigError as exc:
        raise JoinRefused("bad-response", f"{where}: malformed member list: {exc}") from None
    return JoinResult(key, cert, ca_cert, members)


def check_members(members: Any) -> list[dict]:
    """The member list a serving host returns (its etcd members: what the joiner's etcd
    client connects to and launch.json keeps), each entry checked and reduced to the
    fields crossnet reads; ConfigError naming the field."""
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise ConfigError(f"members: expected a list of at most {MAX_MEMBERS} members")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise ConfigError(f"members[{i}]: expected an object")
        name = m.get("name", "")  # "" or absent: a member added but not started yet
        if name != "":
            pki.validate_name(name, f"members[{i}].name")
        urls = {}
        for f in ("clientURLs", "peerURLs"):
            value = m.get(f) or []
            if not isinstance(value, list) or len(value) > MAX_URLS:
                raise ConfigError(f"members[{i}].{f}: expected a list of at most {MAX_URLS} URLs")
            for j, u in enumerate(value):
                if pki.member_url(u) is None:
                    raise ConfigError(f"members[{i}].{f}[{j}]: expected https://IP:PORT, got {str(u)[:64]!r}")
            urls[f] = list(value)
        learner = m.get("isLearner", False)
        if not isinstance(learner, bool):
            raise ConfigError(f"members[{i}].isLearner: expected true or false")
        out.append({"name": name, **urls, "isLearner": learner})
    return out


def _call(conn: http.client.HTTPConnection, method: str, path: str, where: str,
          doc: dict | None = None) -> tuple[int, Any]:
    body = json.dumps(doc).encode() if doc is not None else b""
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    raw = resp.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise JoinRefused("bad-response", f"{where}: response too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise JoinRefused("bad-response", f"{where}: answered HTTP {resp.status} without JSON "
                                          f"(not a crossnet join endpoint?)") from None
    return resp.status, data


def _refusal(status: int, data: Any, where: str) -> JoinRefused:
    """The server's refusal as one printable line: in step 1 nothing is verified yet, so
    whatever answers chooses this text (control characters escaped: no terminal escapes)
    and code (a lower-case word, else bad-response)."""
    msg = data.get("error") if isinstance(data, dict) else None
    code = data.get("code") if isinstance(data, dict) else None
    text = " ".join(str(msg).split())[:300] if msg else f"HTTP {status}"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if not (isinstance(code, str) and _CODE_RE.fullmatch(code)):
        code = "bad-response"
    return JoinRefused(code, f"join via {where} refused: {text}")


_CODE_RE = re.compile(r"[a-z][a-z-]{0,31}")


def request_join(server: str | tuple[str, int], join_token: JoinToken, name: str, address: str,
                 timeout: float = TIMEOUT, key: Any | None = None) -> JoinResult:
    """Run the handshake with a running host; returns the new key and certificate
    without writing anything (`join` saves them)."""
    host, port = parse_server(server) if isinstance(server, str) else server
    where = f"{host}:{port}"
    name = pki.validate_name(name)
    address = pki.validate_joiner_address(address)
    try:
        # 1: public data over unverified TLS; authenticated by the pin, nothing else
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=insecure)
        try:
            status, doc = _call(conn, "GET", "/v1/ca", where)
        finally:
            conn.close()
        if status != 200:
            raise _refusal(status, doc, where)
        ca_cert = check_ca_document(doc, join_token.pin, where)
        # 2-3: everything that depends on the token over TLS verified against the pinned CA
        verified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify + check_hostname on; no system CAs
        verified.minimum_version = ssl.TLSVersion.TLSv1_2
        verified.load_verify_locations(cadata=pki.cert_pem(ca_cert).decode())
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=verified)
        try:
            try:
                status, doc = _call(conn, "POST", "/v1/challenge", where, {})
            except ssl.SSLCertVerificationError as exc:
                raise JoinRefused("bad-server-cert", f"{where}: its TLS certificate is not valid for this address "
                                                     f"under the pinned CA ({exc.verify_message}); nothing was sent") \
                    from None
            if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("nonce"), str):
                raise _refusal(status, doc, where)
            key = key if key is not None else pki.generate_key()
            status, doc = _call(conn, "POST", "/v1/join", where,
                                make_join_request(join_token, doc["nonce"], name, address, key))
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise JoinRefused("bad-server-cert", f"{where}: TLS certificate refused ({exc.verify_message})") from None
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CrossnetError(f"cannot reach the join endpoint at {where}: {reason}") from None
    if status != 200:
        raise _refusal(status, doc, where)
    return check_join_response(doc, join_token.pin, key, name, address, where)


def join(server: str | tuple[str, int], join_token: JoinToken, name: str, address: str, directory: str,
         timeout: float = TIMEOUT) -> JoinResult:
    """Join and save ca.crt, member.key (0600) and member.crt in directory. Checks first
    that this host holds no member certificate yet; on refusal writes nothing."""
    from pathlib import Path

    d = Path(directory)
    if (d / pki.MEMBER_CERT).exists() or (d / pki.MEMBER_KEY).exists():
        raise pki.PkiError(f"{d}: this host already holds a member certificate; not joining again")
    result = request_join(server, join_token, name, address, timeout)
    pki.save_member(d, result.key, result.cert, result.ca_cert)
    return result
