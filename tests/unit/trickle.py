"""A slow client for the servers' deadline tests (metrics, join endpoint): one byte at a
time, each well within the socket timeout, never a whole request."""

from __future__ import annotations

import socket
import time


def trickle(s: socket.socket, data: bytes, t0: float, stop_after: float) -> float:
    """Send ``data`` on the connected ``s`` one byte every 50 ms, reading after each:
    seconds since ``t0`` until the server closed the connection (or ``stop_after``)."""
    s.settimeout(0.05)
    for b in data:
        if time.monotonic() - t0 > stop_after:
            break
        try:
            s.send(bytes([b]))
            if s.recv(1) == b"":
                break  # closed by the server
        except socket.timeout:
            continue
        except OSError:
            break
    return time.monotonic() - t0
