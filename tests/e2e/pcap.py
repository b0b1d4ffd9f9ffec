"""Underlay captures for the end-to-end tests: tcpdump -w on one interface of a lab
namespace, and the frames of the file it wrote. Not collected by pytest.

`--immediate-mode -U`: without it libpcap hands packets over in blocks (up to 1 s
late) and a SIGINT before that lost the whole capture (2 runs in 5)."""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from pathlib import Path


class Capture:
    """tcpdump -w PATH on ``ifname`` in ``netns`` (optional filter words); frames after stop()."""

    def __init__(self, netns: str, ifname: str, path: Path, *expr: str):
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", ifname, "-nn", "--immediate-mode", "-U", "-s", "0",
             "-w", str(path), *expr],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = ""
        deadline = time.monotonic() + 10
        while "listening on" not in line and time.monotonic() < deadline:  # once the capture runs
            line = self.proc.stderr.readline()
            if not line:
                break
        assert "listening on" in line and self.proc.poll() is None, f"tcpdump did not start: {line!r}"

    def stop(self) -> list[bytes]:
        time.sleep(0.3)  # the last packets reach the file
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return read_pcap(self.path)


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a classic pcap file (tcpdump -w) of an Ethernet link, either byte order."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    assert struct.unpack(endian + "I", data[20:24])[0] == 1, "not an Ethernet capture"
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[off:off + 16])[2]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames
