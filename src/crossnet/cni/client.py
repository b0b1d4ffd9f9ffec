"""Entry point of crossnet-cni: hand the call to the warm helper when there is one.

Imports nothing but builtin C modules (``_json``, ``_socket``) besides ``os``/``sys``, so a
call served by the helper (crossnet.cni.server) costs a bare interpreter start plus one
unix-socket round trip. Everything else (VERSION, no helper, helper disabled, malformed
input) falls through to :func:`crossnet.cni.plugin.run_local`, which also starts a helper
for the next call.
"""

from __future__ import annotations

import os
import sys

import _json
import _socket

SERVER_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
DEFAULT_STATE_DIR = "/var/lib/crossnet"
SOCKET_NAME = "cni.sock"
CLIENT_TIMEOUT = 120.0
# files whose change makes a running helper step down (it would run old code)
_CODE_FILES = ("cni/client.py", "cni/plugin.py", "cni/server.py", "containers.py", "ipam.py", "netlink.py",
               "plan.py", "state.py", "backends/__init__.py", "backends/base.py")


class _Ctx:  # what the C JSON scanner reads from json.JSONDecoder
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


_scan = _json.make_scanner(_Ctx())
_enc = _json.encode_basestring_ascii
_WS = " \t\r\n"


def loads(text: str):
    """json.loads without importing json (which pulls in re): ValueError on bad input."""
    i, n = 0, len(text)
    while i < n and text[i] in _WS:
        i += 1
    try:
        value, end = _scan(text, i)
    except Exception:  # StopIteration, JSONDecodeError, or SystemError from the bare C scanner
        raise ValueError("not JSON") from None
    while end < n and text[end] in _WS:
        end += 1
    if end != n:
        raise ValueError("extra data after JSON")
    return value


def code_id() -> str:
    """Identity of the installed crossnet code (mtimes and sizes of the files on the path)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = []
    for rel in _CODE_FILES:
        try:
            st = os.stat(os.path.join(root, rel))
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "/".join(parts)


def netns_id() -> list[int]:
    st = os.stat("/proc/self/ns/net")
    return [st.st_dev, st.st_ino]


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def server_target(environ, stdin: bytes) -> tuple[str | None, dict | None]:
    """(state dir whose helper should serve this call, parsed config) or (None, conf)."""
    if environ.get("CNI_COMMAND") not in SERVER_COMMANDS:
        return None, None
    try:
        conf = loads(stdin.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(conf, dict) or conf.get("server", True) is False:
        return None, conf if isinstance(conf, dict) else None
    state_dir = conf.get("stateDir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str) or not state_dir or not os.path.exists(os.path.join(state_dir, "applied.json")):
        return None, conf
    return state_dir, conf


def request_bytes(environ, stdin: bytes) -> bytes:
    env = ",".join(f"{_enc(k)}:{_enc(v)}" for k, v in environ.items() if k.startswith("CNI_"))
    st = netns_id()
    text = (f'{{"environ":{{{env}}},"stdin":{_enc(stdin.decode("utf-8", "surrogateescape"))},'
            f'"netns":[{int(st[0])},{int(st[1])}],"code":{_enc(code_id())}}}')
    return text.encode("ascii")


def call(state_dir: str, environ, stdin: bytes) -> tuple[int, str | None] | None:
    """Send the call to the helper: (exit status, stdout text) or None (no usable helper)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CLIENT_TIMEOUT)
        try:
            sock.connect(socket_path(state_dir))
        except OSError:
            return None
        sock.sendall(request_bytes(environ, stdin))
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError:
        return None
    finally:
        sock.close()
    try:
        reply = loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(reply, dict) or reply.get("stale") or not isinstance(reply.get("rc"), int):
        return None
    stdout = reply.get("stdout")
    return reply["rc"], stdout if isinstance(stdout, str) else None


def main() -> None:
    environ = os.environ
    try:
        stdin = sys.stdin.buffer.read() if not (environ.get("CNI_COMMAND") == "VERSION" and sys.stdin.isatty()) else b""
    except (OSError, AttributeError, ValueError):
        stdin = b""
    state_dir, conf = server_target(environ, stdin)
    if state_dir is not None:
        result = call(state_dir, environ, stdin)
        if result is not None:
            rc, out = result
            if out:
                sys.stdout.write(out + "\n")
                sys.stdout.flush()
            sys.exit(rc)
    from crossnet.cni.plugin import run_local

    run_local(dict(environ), stdin, spawn_for=state_dir, conf=conf)
