"""crossnet-cni: what its client, plugin and warm helper share (the protocol between
them): the request a client sends to the helper or the agent (packing, the
``netns``/``target``/``code`` identities), the socket paths, a json.loads without the
json module, the hand-off of a call to the agent or helper (:func:`call`, :func:`entry`)
and starting the helper (:func:`spawn`).

It lives in the package's ``__init__`` because every call's fast path
(crossnet.cni.client) loads the package anyway: one module file fewer to find and load
per call. Imports nothing but builtin C modules (``_json``, ``_socket``) besides
``os``/``sys``, and no other crossnet module, so the client, the plugin and the helper
all depend on it and not on each other in a circle.
"""

from __future__ import annotations

import os
import sys

import _json
import _socket

SERVER_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
DEFAULT_STATE_DIR = "/var/lib/crossnet"
SOCKET_NAME = "cni.sock"
AGENT_SOCKET = "agent.sock"  # crossnet agent's local API (crossnet.agent.api)
CLIENT_TIMEOUT = 120.0
MAX_STDIN = 1 << 20  # largest network configuration accepted (crossnet.cni.plugin refuses more: code 6)
# files whose change makes a running helper step down (it would run old code)
_CODE_FILES = ("cni/client.py", "cni/__init__.py", "cni/plugin.py", "cni/server.py", "containers.py", "ipam.py",
               "netlink/iproute.py", "plan/env.py", "plan/resources.py", "plan/nic.py", "plan/reconciler.py",
               "state.py", "backends/__init__.py", "backends/base.py")


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


def target_id(environ) -> list[int] | None:
    """[st_dev, st_ino] of CNI_NETNS as this process resolves it (a name: /run/netns/NAME),
    or None. A helper or agent serves the call only if CNI_NETNS names the same namespace
    for it (a /proc/PID path resolves in its own PID namespace, a relative path against
    its own working directory); otherwise the caller runs the call itself."""
    netns = environ.get("CNI_NETNS") or ""
    if not netns:
        return None
    try:
        st = os.stat(netns if "/" in netns else "/run/netns/" + netns)
    except (OSError, ValueError):
        return None
    return [st.st_dev, st.st_ino]


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def server_target(environ, stdin: bytes) -> tuple[str | None, dict | None]:
    """(state dir whose helper should serve this call, parsed config) or (None, conf)."""
    if environ.get("CNI_COMMAND") not in SERVER_COMMANDS or len(stdin) > MAX_STDIN:
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
    tg = target_id(environ)
    target = f"[{int(tg[0])},{int(tg[1])}]" if tg else "null"
    text = (f'{{"environ":{{{env}}},"stdin":{_enc(stdin.decode("utf-8", "surrogateescape"))},'
            f'"netns":[{int(st[0])},{int(st[1])}],"target":{target},"code":{_enc(code_id())}}}')
    return text.encode("ascii")


def peer_is_us(sock) -> bool:
    """The process listening on the connected unix socket runs as this process's user
    (SO_PEERCRED: the credentials of its ``listen``). A call and the container's network
    are handed only to such a server: a socket another user made in ``stateDir`` (a
    misconfigured, writable directory) is never asked, the call runs in this process."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
    return int.from_bytes(cred[4:8], sys.byteorder) == os.geteuid()


def _exchange(path: str, payload: bytes) -> bytes | None:
    """Send payload on the unix socket at path, read until the peer closes; None if nobody
    listens there or the listener is another user (:func:`peer_is_us`)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CLIENT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None
        if not peer_is_us(sock):
            return None
        sock.sendall(payload)
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
    return b"".join(chunks)


def _via_agent(state_dir: str, body: bytes) -> bytes | None:
    """POST the call to a running `crossnet agent`'s local API (/v1/cni); None if
    there is no agent or it did not answer 200."""
    path = os.path.join(state_dir, AGENT_SOCKET)
    if not os.path.exists(path):
        return None
    head = (f"POST /v1/cni HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
    raw = _exchange(path, head + body)
    if not raw or b"\r\n\r\n" not in raw:
        return None
    header, _, payload = raw.partition(b"\r\n\r\n")
    parts = header.split(b" ", 2)
    return payload if len(parts) > 1 and parts[1] == b"200" else None


def call(state_dir: str, environ, stdin: bytes) -> tuple[int, str | None] | None:
    """Send the call to the agent (when one runs) or the warm helper: (exit status,
    stdout text) or None (nobody usable: run it in this process)."""
    body = request_bytes(environ, stdin)
    raw = _via_agent(state_dir, body)
    if raw is None:
        raw = _exchange(socket_path(state_dir), body)
    if raw is None:
        return None
    try:
        reply = loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(reply, dict) or reply.get("stale") or not isinstance(reply.get("rc"), int):
        return None
    stdout = reply.get("stdout")
    return reply["rc"], stdout if isinstance(stdout, str) else None


DEFAULT_IDLE = 300.0  # seconds the warm helper stays without requests (serverIdleSeconds)


def spawn(state_dir: str, idle: float = DEFAULT_IDLE, log_file: str | None = None) -> None:
    """Start a detached helper for state_dir (returns at once; never raises)."""
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        try:
            os.waitpid(pid, 0)  # the intermediate child exits at once
        except ChildProcessError:
            pass
        return
    try:  # intermediate child: new session, fork again, exec the helper
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 1024)
        os.chdir("/")
        code = ("import sys; sys.path[:0] = %r; from crossnet.cni.server import serve; serve(%r, %r, %r)"
                % ([p for p in sys.path if p], state_dir, float(idle), log_file))
        os.execv(sys.executable, [sys.executable, "-S", "-c", code])
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


def entry(version_text, run_local) -> None:
    """The crossnet-cni process: VERSION is answered with ``version_text(stdin)``; other
    calls go to the agent or the warm helper when one serves them, else to
    ``run_local(environ, stdin, spawn_for=..., conf=...)`` (crossnet.cni.plugin's,
    passed in by the caller so this package never imports the plugin)."""
    environ = os.environ
    version = environ.get("CNI_COMMAND") == "VERSION"
    try:  # more than MAX_STDIN is refused: reading one byte more tells (VERSION reads it all, like the wrapper)
        stdin = sys.stdin.buffer.read(-1 if version else MAX_STDIN + 1) if not (version and sys.stdin.isatty()) else b""
    except (OSError, AttributeError, ValueError):
        stdin = b""
    if version:  # the same bytes as the wrapper and the native client
        sys.stdout.write(version_text(stdin) + "\n")
        sys.stdout.flush()
        sys.exit(0)
    state_dir, conf = server_target(environ, stdin)
    if state_dir is not None:
        result = call(state_dir, environ, stdin)
        if result is not None:
            rc, out = result
            if out:
                sys.stdout.write(out + "\n")
                sys.stdout.flush()
            sys.exit(rc)
    run_local(dict(environ), stdin, spawn_for=state_dir, conf=conf)
