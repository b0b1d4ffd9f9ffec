"""Short-lived helper processes of the long-running ones: work that needs a heavy
library (``cryptography`` for signing: crossnet.mesh.signer; pydantic for validating
a network config: crossnet.netconfig) runs in ``python -S -m MODULE``, so the process
that stays (``crossnet launch``: etcd member + agent ≤ 80 MB, issue 13) never loads it.

Protocol: one JSON object on the helper's stdin (never on a command line: it may hold
a CA key), one on its stdout: the answer, or ``{"error": text, "kind": KIND}``, which
the caller raises as the exception class of that kind (exit 0 either way).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from crossnet.errors import ConfigError, CrossnetError

WARM_MAX_AGE = 30.0  # a started helper unused this long is replaced (it gives up waiting at WARM_WAIT)
WARM_WAIT = 120  # seconds a started helper waits for its request, then exits
_warm: dict[str, tuple[subprocess.Popen, float]] = {}


def _spawn(module: str) -> subprocess.Popen:
    # -S with this process's sys.path: the same modules, without site's .pth processing
    # at every start (part of each join's latency)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-S", "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def prestart(module: str) -> None:
    """Start the helper of ``module`` now, for a request that comes soon (an agent's start:
    the helper imports its library while the agent connects; the next :func:`run` of
    that module takes it). Once: after that request, helpers start per request."""
    if module not in _warm:
        try:
            _warm[module] = (_spawn(module), time.monotonic())
        except OSError:
            pass  # run() starts one (and says why it cannot)


def _take(module: str) -> subprocess.Popen:
    proc, started = _warm.pop(module, (None, 0.0))
    if proc is not None and proc.poll() is None and time.monotonic() - started < WARM_MAX_AGE:
        return proc
    if proc is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.communicate(timeout=5)
    return _spawn(module)


def run(module: str, request: dict, what: str, timeout: float,
        kinds: dict[str, type[Exception]] | None = None) -> dict:
    """Run ``python -S -m module`` with ``request`` (or give it to the one :func:`prestart`
    started); its answer, or the error it names raised here (``kinds``: kind -> exception
    class; "config" is a ConfigError)."""
    try:
        proc = _take(module)
        try:
            stdout, stderr = proc.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CrossnetError(f"{what}: {exc}") from None
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        tail = " ".join(stderr.decode(errors="replace").split())[-300:]
        raise CrossnetError(f"{what} failed (exit {proc.returncode}): {tail}")
    if "error" in doc:
        exc_type = {"config": ConfigError, **(kinds or {})}.get(doc.get("kind"), CrossnetError)
        raise exc_type(str(doc["error"]))
    return doc


def serve_stdin(serve: Callable[[dict], dict], kinds: dict[type[Exception], str]) -> int:
    """The helper's side: ``serve`` the request on stdin, its answer (or the error, its
    kind from ``kinds``: exception class -> kind) on stdout. A helper started ahead
    (:func:`prestart`) that gets no request within WARM_WAIT seconds exits."""
    import signal

    signal.alarm(WARM_WAIT)
    request = sys.stdin.buffer.read()
    signal.alarm(0)
    try:
        out = serve(json.loads(request))
    except Exception as exc:  # noqa: BLE001 - one line back to the caller, which raises it
        kind = next((k for cls, k in kinds.items() if isinstance(exc, cls)), None)
        out = {"error": str(exc) if kind else f"{type(exc).__name__}: {exc}", "kind": kind or "error"}
    sys.stdout.write(json.dumps(out))
    return 0
