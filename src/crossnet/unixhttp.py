"""HTTP over unix sockets (stdlib only): the Docker/podman Engine API, etcd's
unix listener and crossnet's own agent API all use this one connection class."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """AF_UNIX paths are limited to 107 bytes; go through /proc/self/fd/N/ for longer ones."""
    if len(path.encode()) < 100:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = 10.0, host: str = "localhost"):
        super().__init__(host, timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with short_path(self.unix_path) as p:
                sock.connect(p)
        except OSError:
            sock.close()
            raise
        self.sock = sock
