"""Warm helper process of crossnet-cni (the plugin's fast path).

A CNI plugin is a fresh process per call; importing crossnet's netlink code (pyroute2,
asyncio, ...) costs ~0.2 s per call, which would make crossnet's ADD/DEL several times
slower than the reference Go plugins. So this helper is started — by systemd on the first
call (crossnet-cni-helper.socket runs `crossnet cni serve`, which hands over the listening
socket) for a conflist with ``"helper": "external"`` (what `crossnet cni install` writes), or,
with ``"helper": "spawn"``, by the first ADD/DEL/CHECK itself (detached, in the same network
namespace, from the same code: the lab, which has no systemd) — and that call runs its own
request in-process; later calls only send ``{environ, stdin}`` over
``<stateDir>/cni.sock`` and get ``{rc, stdout}`` back: the same :func:`plugin.run`, the
same state dir and IPAM, just already imported.

Safety rules:
- One helper per state dir (flock on ``cni.sock.lock``); requests run one at a time.
- The helper only serves clients in its own network namespace, for which CNI_NETNS names
  the namespace it names for the helper (``target``: its inode as the client sees it; a
  ``/proc/PID`` path resolves in the helper's own PID namespace), and running the same
  code (``code_id`` of the installed files; the native client sends ``"*"``, meaning
  "unchanged since you started"); otherwise it answers ``stale`` and the plugin runs the
  request itself. A stale-code helper exits.
- It exits after ``serverIdleSeconds`` (default 300) without requests, and a request
  that takes longer than REQUEST_TIMEOUT kills it (the next call starts a new one).
- Disable with ``"server": false`` in the network configuration.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time

from crossnet import unixsock
from crossnet.cni import (  # noqa: F401  (shared with the client; spawn: server.spawn)
    DEFAULT_IDLE,
    code_id,
    netns_id,
    socket_path,
    spawn,
    target_id,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REQUEST_TIMEOUT = 90
HEALTH_INTERVAL = 5.0  # how often an idle helper checks that its socket is still there
MAX_REQUEST = 4 << 20


# --------------------------------------------------------------------------- server


def _event(log_file: str | None, event: str, **kw: Any) -> None:
    if not log_file:
        return
    from crossnet.logjson import append_line, line

    text = line("crossnet.cni.server", f"warm helper {event}", server=event, pid=os.getpid(), **kw)
    try:
        append_line(log_file, text)  # the network's logFile: never through a link
    except (OSError, ValueError):
        pass


def serve(state_dir: str, idle: float = DEFAULT_IDLE, log_file: str | None = None,
          listen_fd: int | None = None) -> None:
    """Serve state_dir's CNI calls until idle seconds pass without one (idle <= 0: no
    limit). listen_fd: a listening socket on <state_dir>/cni.sock handed over by
    systemd (socket activation, `crossnet cni serve`): it is used as it is and never
    removed (systemd keeps it and starts the helper again on the next call)."""
    path = socket_path(state_dir)
    if idle <= 0:
        idle = float("inf")
    from crossnet.errors import ConfigError
    from crossnet.state import open_lock_file

    try:  # 0600, never through a link planted at the path (as every lock of crossnet)
        lock = open_lock_file(path + ".lock")
    except ConfigError as exc:
        _event(log_file, "stop", reason=str(exc))
        return
    deadline = time.monotonic() + 3.0  # a helper stepping down (code changed) may still hold it
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            # held: by a helper stepping down (it removed the socket first) -- wait for it; by
            # one that serves (its socket is there) -- leave at once: waiting, this helper
            # took over whenever that one stepped down, outliving it unasked
            if os.path.lexists(path) or time.monotonic() >= deadline:
                _event(log_file, "stop", reason="another helper serves this state dir")
                os.close(lock)
                return
            time.sleep(0.05)
    # import everything a request needs now, not during the first request
    import crossnet.backends  # noqa: F401
    import crossnet.containers  # noqa: F401
    from crossnet.cni import plugin

    try:
        from crossnet.state import read_json

        applied = read_json(os.path.join(state_dir, "applied.json")) or {}
        backend = (applied.get("context") or {}).get("backend")
        if backend:
            from crossnet.backends import get_backend

            get_backend(backend)
    except Exception:  # noqa: BLE001 - warming up only
        pass
    my_code, my_netns = code_id(), netns_id()
    if listen_fd is not None:
        srv = socket.socket(fileno=listen_fd)
        ident = None  # systemd's socket: never removed here
    else:
        try:  # never another listener's socket (systemd's, a helper's), nor a file that is not one
            srv, ident = unixsock.bind(path, 0o600, backlog=64)
        except unixsock.InUse as exc:  # a racing helper won, or systemd's socket: it serves the calls
            _event(log_file, "stop", reason=str(exc))
            os.close(lock)
            return
        except ConfigError as exc:  # the path is <state-dir>/cni.sock: name that option
            why = f"--state-dir: {exc}"
            _event(log_file, "stop", reason=why)
            os.close(lock)
            raise ConfigError(why) from None
    srv.settimeout(min(idle, HEALTH_INTERVAL))
    last = time.monotonic()

    _event(log_file, "start", state_dir=state_dir)
    server_pid = os.getpid()

    def on_signal(signum: int, frame: Any) -> None:
        if os.getpid() != server_pid:
            # a forked child (pyroute2's netns helper) inherited this handler: die as usual,
            # never touch the helper's socket
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _event(log_file, "stop", reason=signal.Signals(signum).name)
        _cleanup(srv, path, ident)
        os._exit(3 if signum == signal.SIGALRM else 0)

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    reason = "idle"
    while True:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            if time.monotonic() - last >= idle:
                break
            if ident is not None and not unixsock.still_ours(path, ident):
                reason = "socket gone"
                break
            if not os.path.exists(os.path.join(state_dir, "applied.json")):
                reason = "state removed"
                break
            continue
        except OSError as exc:
            reason = f"accept: {exc}"
            break
        last = time.monotonic()
        stop = False
        with conn:
            try:
                conn.settimeout(10)
                raw = _recv_limited(conn)
                reply: dict[str, Any]
                try:
                    req = plugin.load_request(raw, MAX_REQUEST)
                except ValueError as exc:  # a broken client: a CNI error, nothing run
                    req, reply = None, plugin.bad_request_reply(str(exc))
                if req is None:
                    pass
                elif not _same_code(req.get("code"), my_code):
                    reply = {"stale": True}
                    stop, reason = True, "code changed"
                    _cleanup(srv, path, ident, close=False)  # before the client starts a new helper
                elif req.get("netns") != my_netns:
                    reply = {"stale": True}
                else:
                    try:
                        environ, stdin = plugin.unpack_request(req)
                    except ValueError as exc:
                        reply = plugin.bad_request_reply(str(exc))
                    else:
                        if req.get("target") != target_id(environ):
                            # CNI_NETNS names another namespace here than for the client (a /proc/PID path in
                            # another PID namespace, a relative path...): the client runs the call itself
                            reply = {"stale": True}
                        else:
                            signal.alarm(REQUEST_TIMEOUT)
                            t0 = time.perf_counter()
                            rc, out = plugin.run(environ, stdin)
                            plugin._log(environ, stdin, rc, out, time.perf_counter() - t0, via="server")
                            signal.alarm(0)
                            reply = {"rc": rc, "stdout": plugin.output_text(out)}
                conn.settimeout(30)
                conn.sendall(json.dumps(reply).encode())
            except Exception:  # noqa: BLE001 - a broken client must not kill the helper
                signal.alarm(0)
        if not stop and not os.path.exists(os.path.join(state_dir, "applied.json")):
            stop, reason = True, "state removed"
        if stop:
            break
    _event(log_file, "stop", reason=reason)
    _cleanup(srv, path, ident)


def _same_code(client_code: Any, my_code: str) -> bool:
    """Does the client run the code this helper imported? The Python client sends its
    code_id(); the native client (shim.c) cannot compute it and sends "*": then the
    helper checks that its own files did not change since it started."""
    if client_code == "*":
        return code_id() == my_code
    return client_code == my_code


def _recv_limited(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        chunks.append(data)


def _cleanup(srv: socket.socket, path: str, ident: tuple[int, int] | None, close: bool = True) -> None:
    unixsock.release(path, ident)  # only if it is still ours; never systemd's (ident None)
    if close:
        try:
            srv.close()
        except OSError:
            pass
