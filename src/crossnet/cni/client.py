"""Entry point of crossnet-cni: hand the call to the warm helper when there is one.

Imports nothing but builtin C modules (``_json``, ``_socket``) besides ``os``/``sys``
(through the package crossnet.cni, which holds the request a client sends and the hand-off),
so a call served by the helper (crossnet.cni.server) costs a bare interpreter start plus
one unix-socket round trip. VERSION is answered here
(:func:`crossnet.cni.plugin.version_text`, the bytes the wrapper and the native client
print). Everything else (no helper, helper disabled, malformed input) falls through to
:func:`crossnet.cni.plugin.run_local`, which also starts a helper for the next call.
"""

from __future__ import annotations

from crossnet.cni import (  # noqa: F401  (crossnet.cni.client.X: install, the tests, older callers)
    _CODE_FILES,
    AGENT_SOCKET,
    CLIENT_TIMEOUT,
    DEFAULT_STATE_DIR,
    MAX_STDIN,
    SERVER_COMMANDS,
    SOCKET_NAME,
    _exchange,
    _via_agent,
    call,
    code_id,
    entry,
    loads,
    netns_id,
    request_bytes,
    server_target,
    socket_path,
    target_id,
)


def _version_text(stdin: bytes) -> str:
    from crossnet.cni.plugin import version_text

    return version_text(stdin)


def _run_local(environ: dict[str, str], stdin: bytes, spawn_for: str | None = None,
               conf: dict | None = None) -> None:
    from crossnet.cni.plugin import run_local

    run_local(environ, stdin, spawn_for=spawn_for, conf=conf)


def main() -> None:
    entry(_version_text, _run_local)
