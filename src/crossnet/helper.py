"""Short-lived helper processes of the long-running ones: work that needs a heavy
library (``cryptography`` for signing: crossnet.mesh.signer; pydantic for validating
a network config: crossnet.netview) runs in ``python -S -m MODULE``, so the process
that stays (``crossnet launch``: etcd member + agent ≤ 80 MB, issue 13) never loads it.

Protocol: one JSON object on the helper's stdin (never on a command line: it may hold
a CA key), one on its stdout: the answer, or ``{"error": text, "kind": KIND}``, which
the caller raises as the exception class of that kind (exit 0 either way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from crossnet.errors import ConfigError, CrossnetError


def run(module: str, request: dict, what: str, timeout: float,
        kinds: dict[str, type[Exception]] | None = None) -> dict:
    """Run ``python -S -m module`` with ``request``; its answer, or the error it names
    raised here (``kinds``: kind -> exception class; "config" is a ConfigError)."""
    # -S with this process's sys.path: the same modules, without site's .pth processing
    # at every start (part of each join's latency)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run([sys.executable, "-S", "-m", module], input=json.dumps(request).encode(),
                              capture_output=True, timeout=timeout, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CrossnetError(f"{what}: {exc}") from None
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        tail = " ".join(proc.stderr.decode(errors="replace").split())[-300:]
        raise CrossnetError(f"{what} failed (exit {proc.returncode}): {tail}")
    if "error" in doc:
        exc_type = {"config": ConfigError, **(kinds or {})}.get(doc.get("kind"), CrossnetError)
        raise exc_type(str(doc["error"]))
    return doc


def serve_stdin(serve: Callable[[dict], dict], kinds: dict[type[Exception], str]) -> int:
    """The helper's side: ``serve`` the request on stdin, its answer (or the error, its
    kind from ``kinds``: exception class -> kind) on stdout."""
    try:
        out = serve(json.loads(sys.stdin.buffer.read()))
    except Exception as exc:  # noqa: BLE001 - one line back to the caller, which raises it
        kind = next((k for cls, k in kinds.items() if isinstance(exc, cls)), None)
        out = {"error": str(exc) if kind else f"{type(exc).__name__}: {exc}", "kind": kind or "error"}
    sys.stdout.write(json.dumps(out))
    return 0
