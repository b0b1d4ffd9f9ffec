"""Underlay captures for the end-to-end tests: tcpdump -w on one interface of a lab
namespace, and the frames of the file it wrote. Not collected by pytest.

`--immediate-mode -U`: without it libpcap hands packets over in blocks (up to 1 s
late) and a SIGINT before that lost the whole capture (2 runs in 5)."""

from __future__ import annotations

import signal
import socket
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


def ipv4(frame: bytes) -> tuple[int, str, str, int, int] | None:
    """(proto, src, dst, sport, dport) of an IPv4 frame (ports 0 unless UDP/TCP)."""
    off, etype = 14, struct.unpack("!H", frame[12:14])[0]
    if etype == 0x8100:
        off, etype = 18, struct.unpack("!H", frame[16:18])[0]
    if etype != 0x0800:
        return None
    ihl = (frame[off] & 0x0F) * 4
    proto = frame[off + 9]
    src, dst = socket.inet_ntoa(frame[off + 12:off + 16]), socket.inet_ntoa(frame[off + 16:off + 20])
    sport = dport = 0
    if proto in (6, 17):
        sport, dport = struct.unpack("!HH", frame[off + ihl:off + ihl + 4])
    return proto, src, dst, sport, dport


def assert_nothing_in_clear(frames: list[bytes], container_addrs: set[str], marker: bytes, port: int = 51820,
                            min_datagrams: int = 12) -> None:
    """Encrypted container traffic on an underlay capture: at least `min_datagrams`
    WireGuard datagrams (UDP `port`), no other UDP, no container address in an IPv4 header
    and no payload `marker` (nor its first 16 bytes, what `ping -p` repeats) anywhere."""
    wg = [f for f in frames if (ip := ipv4(f)) and ip[0] == 17 and port in (ip[3], ip[4])]
    assert len(wg) >= min_datagrams, f"only {len(wg)} WireGuard datagrams captured"
    for f in frames:
        ip = ipv4(f)
        if ip is not None:
            proto, src, dst, sport, dport = ip
            assert not {src, dst} & container_addrs, f"container address in clear on the underlay: {ip}"
            assert proto != 17 or port in (sport, dport), f"UDP other than WireGuard on the underlay: {ip}"
        assert marker not in f and marker[:16] not in f, "payload marker in clear on the underlay"


def captured_while(netns: str, ifname: str, path: Path, action) -> list[bytes]:
    """The frames on `ifname` of `netns` while `action()` runs (the capture stops even
    when it fails)."""
    cap = Capture(netns, ifname, path)
    try:
        action()
    finally:
        frames = cap.stop()
    return frames
