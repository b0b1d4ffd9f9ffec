"""HTTP over unix sockets (stdlib only): the Docker/podman Engine API, etcd's
unix listener and crossnet's own agent API all use this one connection class."""

from __future__ import annotations

import http.client
import socket

from crossnet.unixsock import short_path


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
