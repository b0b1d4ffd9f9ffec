"""Bad requests to the agent's local API (crossnet.agent.api): each must be answered with
an HTTP 4xx and {"error": "<one line>"} (never 500, never a hang) and change nothing.
Used by tests/unit/test_agentapi_limits.py (a stand-in agent) and
tests/e2e/test_bad_input.py (a real agent in a lab host, kernel state and state dir
compared). ``{NETNS}``, ``{FILE}``, ``{DIR}`` stand for a network namespace, a regular
file and a directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class ApiCase:
    id: str
    raw: bytes  # the whole request as sent (Content-Length is computed for post())
    status: tuple[int, ...] = (400,)  # acceptable answers (all 4xx)

    def request(self, netns: str, file: str, directory: str) -> bytes:
        return (self.raw.replace(b"{NETNS}", netns.encode()).replace(b"{FILE}", file.encode())
                .replace(b"{DIR}", directory.encode()))


def post(path: str, body: bytes | dict | list | str | int | None, headers: str = "") -> bytes:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def post_raw_length(path: str, length: str, body: bytes = b"{}") -> bytes:
    return f"POST {path} HTTP/1.0\r\nHost: agent\r\nContent-Length: {length}\r\n\r\n".encode() + body


A, D, C = "/v1/attach", "/v1/detach", "/v1/cni"
NS = [1, 2]  # a wrong but well-formed [dev, inode]

CASES = [
    # the request line and headers (http.server's own refusals, as one JSON line)
    ApiCase("line-garbage", b"garbage\r\n\r\n"),
    ApiCase("line-empty-method", b" /v1/status HTTP/1.0\r\n\r\n"),
    ApiCase("line-bad-version", b"GET /v1/status HTTP/9.9\r\n\r\n"),
    ApiCase("line-version-garbage", b"GET /v1/status HTTX/1.0\r\n\r\n"),
    ApiCase("line-too-long", b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", (414,)),
    ApiCase("header-line-too-long", b"GET /v1/status HTTP/1.0\r\nX: " + b"a" * 70000 + b"\r\n\r\n", (400, 431)),
    ApiCase("headers-too-many", b"GET /v1/status HTTP/1.0\r\n" + b"X: 1\r\n" * 150 + b"\r\n", (431,)),
    ApiCase("method-put", b"PUT /v1/attach HTTP/1.0\r\nContent-Length: 0\r\n\r\n", (405,)),
    ApiCase("method-delete", b"DELETE /v1/attach HTTP/1.0\r\n\r\n", (405,)),
    ApiCase("method-unknown", b"FROB /v1/status HTTP/1.0\r\n\r\n", (405,)),
    ApiCase("method-lowercase", b"get /v1/status HTTP/1.0\r\n\r\n", (405,)),
    ApiCase("get-on-post-endpoint", b"GET /v1/attach HTTP/1.0\r\n\r\n", (405,)),
    ApiCase("post-on-get-endpoint", post("/v1/status", {}), (405,)),
    ApiCase("unknown-endpoint", b"GET /v2/nothing HTTP/1.0\r\n\r\n", (404,)),
    ApiCase("dotdot-endpoint", b"GET /v1/../../etc/passwd HTTP/1.0\r\n\r\n", (404,)),
    # Content-Length and the body's framing
    ApiCase("length-abc", post_raw_length(A, "abc")),
    ApiCase("length-negative", post_raw_length(A, "-1")),
    ApiCase("length-float", post_raw_length(A, "2.0")),
    ApiCase("length-exponent", post_raw_length(A, "1e3")),
    ApiCase("length-hex", post_raw_length(A, "0x2")),
    ApiCase("length-empty", post_raw_length(A, "")),
    ApiCase("length-unicode-digit", "POST /v1/attach HTTP/1.0\r\nContent-Length: \u0662\r\n\r\n{}".encode()),
    ApiCase("length-huge", post_raw_length(A, "99999999999999999999999"), (413,)),
    ApiCase("length-over-limit", post_raw_length(A, str((1 << 20) + 1)), (413,)),
    ApiCase("length-twice-different", b"POST /v1/attach HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ApiCase("length-longer-than-body", post_raw_length(A, "50"), (400, 408)),
    ApiCase("chunked", b"POST /v1/attach HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
    ApiCase("get-length-abc", b"GET /v1/status HTTP/1.0\r\nContent-Length: abc\r\n\r\n"),
    # the JSON body
    ApiCase("body-not-json", post(A, b"{not json")),
    ApiCase("body-list", post(A, [])),
    ApiCase("body-string", post(A, "container")),
    ApiCase("body-number", post(A, 5)),
    ApiCase("body-null", post(A, None)),
    ApiCase("body-binary", post(A, b"\xff\xfe\x00")),
    ApiCase("body-utf16", post(A, '{"id":"a"}'.encode("utf-16"))),
    ApiCase("body-nested-100000", post(A, b"[" * 100_000)),
    ApiCase("body-nested-17", post(A, b'{"id":' + b"[" * 17 + b"]" * 17 + b"}")),
    ApiCase("body-nan", post(A, b'{"id": NaN}')),
    ApiCase("body-duplicate-key", post(A, b'{"id": "a", "id": "b"}')),
    ApiCase("body-trailing", post(A, b'{"id": "a"} x')),
    # fields of /v1/attach
    ApiCase("attach-empty", post(A, {})),
    ApiCase("attach-unknown-field", post(A, {"id": "a", "netns": "{NETNS}", "colour": "red"})),
    ApiCase("attach-container-number", post(A, {"container": 5})),
    ApiCase("attach-container-empty", post(A, {"container": ""})),
    ApiCase("attach-container-list", post(A, {"container": ["web"]})),
    ApiCase("attach-container-and-id", post(A, {"container": "web", "id": "web"})),
    ApiCase("attach-container-control-char", post(A, {"container": "web\u001b[2J"})),
    ApiCase("attach-container-nul", post(A, {"container": "web\u0000"})),
    ApiCase("attach-container-too-long", post(A, {"container": "w" * 5000})),
    ApiCase("attach-container-regular-file", post(A, {"container": "{FILE}"})),
    ApiCase("attach-container-directory", post(A, {"container": "{DIR}"})),
    ApiCase("attach-container-dev-null", post(A, {"container": "/dev/null"})),
    ApiCase("attach-container-missing-path", post(A, {"container": "/nonexistent/netns"})),
    ApiCase("attach-container-missing-name", post(A, {"container": "no-such-netns-xyz"})),
    ApiCase("attach-container-pid-garbage", post(A, {"container": "pid:abc"})),
    ApiCase("attach-container-pid-missing", post(A, {"container": "pid:999999999"})),
    ApiCase("attach-id-number", post(A, {"id": 5, "netns": "{NETNS}"})),
    ApiCase("attach-id-bool", post(A, {"id": True, "netns": "{NETNS}"})),
    ApiCase("attach-netns-number", post(A, {"id": "a", "netns": 5})),
    ApiCase("attach-netns-without-id", post(A, {"container": "web", "netns": "{NETNS}"})),
    ApiCase("attach-netns-regular-file", post(A, {"id": "a", "netns": "{FILE}"})),
    ApiCase("attach-netns-directory", post(A, {"id": "a", "netns": "{DIR}"})),
    ApiCase("attach-netns-dev-null", post(A, {"id": "a", "netns": "/dev/null"})),
    ApiCase("attach-netns-uts", post(A, {"id": "a", "netns": "/proc/self/ns/uts"})),
    ApiCase("attach-netns-missing", post(A, {"id": "a", "netns": "/nonexistent/netns"})),
    ApiCase("attach-ifname-slash", post(A, {"id": "a", "netns": "{NETNS}", "ifname": "a/b"})),
    ApiCase("attach-ifname-too-long", post(A, {"id": "a", "netns": "{NETNS}", "ifname": "a" * 16})),
    ApiCase("attach-ifname-space", post(A, {"id": "a", "netns": "{NETNS}", "ifname": "eth 0"})),
    ApiCase("attach-ifname-number", post(A, {"id": "a", "netns": "{NETNS}", "ifname": 0})),
    ApiCase("attach-ip-number", post(A, {"id": "a", "netns": "{NETNS}", "ip": 5})),
    ApiCase("attach-ip-garbage", post(A, {"id": "a", "netns": "{NETNS}", "ip": "10.0.0.300"}), (400, 409)),
    ApiCase("attach-ip-ipv6", post(A, {"id": "a", "netns": "{NETNS}", "ip": "fd00::1"}), (400, 409)),
    ApiCase("attach-ip-outside", post(A, {"id": "a", "netns": "{NETNS}", "ip": "192.0.2.1"}), (400, 409)),
    # fields of /v1/detach
    ApiCase("detach-empty", post(D, {})),
    ApiCase("detach-unknown-field", post(D, {"id": "a", "force": True})),
    ApiCase("detach-id-number", post(D, {"id": 5})),
    ApiCase("detach-id-empty", post(D, {"id": ""})),
    ApiCase("detach-both", post(D, {"id": "a", "container": "a"})),
    ApiCase("detach-netns-without-id", post(D, {"container": "a", "netns": "{NETNS}"})),
    # the namespace identity `crossnet attach/detach` send, and /v1/gc (crossnet gc)
    ApiCase("attach-netns-id-string", post(A, {"id": "a", "netns": "{NETNS}", "netns_id": "x"})),
    ApiCase("attach-netns-id-short", post(A, {"id": "a", "netns": "{NETNS}", "netns_id": [1]})),
    ApiCase("attach-netns-id-bools", post(A, {"id": "a", "netns": "{NETNS}", "netns_id": [True, False]})),
    ApiCase("attach-netns-id-negative", post(A, {"id": "a", "netns": "{NETNS}", "netns_id": [-1, 2]})),
    ApiCase("detach-netns-id-string", post(D, {"id": "a", "netns": "{NETNS}", "netns_id": "x"})),
    ApiCase("detach-netns-id-alone", post(D, {"id": "a", "netns_id": [1, 2]})),
    ApiCase("gc-dry-run-string", post("/v1/gc", {"dry_run": "yes"})),
    ApiCase("gc-dry-run-number", post("/v1/gc", {"dry_run": 1})),
    ApiCase("gc-unknown-field", post("/v1/gc", {"all": True})),
    # fields of /v1/cni (what the CNI clients send)
    ApiCase("cni-empty", post(C, {})),
    ApiCase("cni-netns-string", post(C, {"netns": "x", "environ": {}, "stdin": ""})),
    ApiCase("cni-netns-short", post(C, {"netns": [1], "environ": {}, "stdin": ""})),
    ApiCase("cni-netns-bools", post(C, {"netns": [True, False], "environ": {}, "stdin": ""})),
    ApiCase("cni-netns-negative", post(C, {"netns": [-1, 2], "environ": {}, "stdin": ""})),
    ApiCase("cni-environ-number", post(C, {"netns": NS, "environ": 5, "stdin": ""})),
    ApiCase("cni-environ-value-number", post(C, {"netns": NS, "environ": {"CNI_COMMAND": 5}, "stdin": ""})),
    ApiCase("cni-stdin-object", post(C, {"netns": NS, "environ": {}, "stdin": {}})),
    ApiCase("cni-stdin-lone-surrogate", post(C, b'{"netns": [1, 2], "environ": {}, "stdin": "\\ud800"}')),
    ApiCase("cni-code-number", post(C, {"netns": NS, "environ": {}, "stdin": "", "code": 5})),
    ApiCase("cni-unknown-field", post(C, {"netns": NS, "environ": {}, "stdin": "", "x": 1})),
    ApiCase("cni-target-string", post(C, {"netns": NS, "environ": {}, "stdin": "", "target": "x"})),
    ApiCase("cni-target-bools", post(C, {"netns": NS, "environ": {}, "stdin": "", "target": [True, 1]})),
]
assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
