"""Evidence that the probe went the traced way: the bounded probe (`send_probe`), AF_PACKET
taps on the underlay NICs that count probe packets by encapsulation (`NicTap`,
`classify_frame`), counter deltas per hop (`apply_deltas`, `settle`), WireGuard byte
counters."""

from __future__ import annotations

import math
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Iterable

from crossnet.check import netns_prefix as _netns_prefix
from crossnet.trace.model import MAX_COUNT, PROBE_INTERVAL, Hop, HostSide, link_by
from crossnet.trace.views import wireguard_device, wireguard_peer


def wireguard_counters(host: HostSide) -> dict[str, tuple[int, int]]:
    """{peer public key: (tx_bytes, rx_bytes)} of the host's WireGuard device."""
    name = wireguard_device(host)
    dev = link_by(host.view, name=name) if name else None
    if dev is None:
        return {}
    _peer, st = wireguard_peer(host, dev, "0.0.0.0")
    return {k: (p.tx_bytes, p.rx_bytes) for k, p in st.peers.items()} if st else {}


def wireguard_deltas(hops: list[Hop], before: dict, after: dict) -> None:
    """The probe's share of each WireGuard peer's byte counters (from `get=1`)."""
    for h in hops:
        key = (h.extra or {}).get("public_key") if h.kind == "wireguard" else None
        b = before.get(f"wg:{h.host}", {}).get(key) if key else None
        a = after.get(f"wg:{h.host}", {}).get(key) if key else None
        if a is not None and b is not None:
            h.extra["tx_bytes_delta"], h.extra["rx_bytes_delta"] = a[0] - b[0], a[1] - b[1]


# ---- probe packets on the underlay (AF_PACKET) ------------------------------------------------
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_TEB = 0x6558
PACKET_OUTGOING = 4


def _ipv4(frame: bytes, off: int) -> tuple[int, str, str, int] | None:
    """(proto, src, dst, payload offset) of the IPv4 header at `off`."""
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0x0F) * 4
    return frame[off + 9], socket.inet_ntoa(frame[off + 12:off + 16]), socket.inet_ntoa(frame[off + 16:off + 20]), off + ihl


def _eth(frame: bytes, off: int) -> int | None:
    """Offset of the L3 header of the Ethernet frame at `off` when it carries IPv4."""
    if len(frame) < off + 14:
        return None
    etype = struct.unpack("!H", frame[off + 12:off + 14])[0]
    off += 14
    if etype == ETH_P_8021Q and len(frame) >= off + 4:
        etype = struct.unpack("!H", frame[off + 2:off + 4])[0]
        off += 4
    return off if etype == ETH_P_IP else None


def _is_probe(frame: bytes, off: int, src: str, dst: str) -> bool:
    ip = _ipv4(frame, off)
    if ip is None:
        return False
    proto, s, d, pl = ip
    return proto == 1 and s == src and d == dst and len(frame) > pl and frame[pl] == 8  # ICMP echo request


def classify_frame(frame: bytes, src: str, dst: str, vxlan_ports: Iterable[int] = (4789, 8472),
                   wireguard_ports: Iterable[int] = ()) -> str | None:
    """What an underlay frame is with respect to a probe src → dst (ICMP echo request):
    "vxlan" / "gre" (the probe encapsulated), "plain" (the probe itself), "wireguard" (a
    WireGuard transport-data datagram to one of `wireguard_ports`: encrypted, so it may
    be the probe or other traffic of the same tunnel), None (unrelated)."""
    off = _eth(frame, 0)
    if off is None:
        return None
    if _is_probe(frame, off, src, dst):
        return "plain"
    ip = _ipv4(frame, off)
    if ip is None:
        return None
    proto, _s, _d, pl = ip
    if proto == 17 and len(frame) >= pl + 16:
        dport = struct.unpack("!H", frame[pl + 2:pl + 4])[0]
        if dport in set(wireguard_ports) and frame[pl + 8] == 4:  # message type 4: transport data
            return "wireguard"
        if dport in set(vxlan_ports):
            inner = _eth(frame, pl + 16)
            if inner is not None and _is_probe(frame, inner, src, dst):
                return "vxlan"
        return None
    if proto == 47 and len(frame) >= pl + 4:
        flags, gproto = struct.unpack("!HH", frame[pl:pl + 4])
        hlen = 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
        if gproto == ETH_P_TEB:
            inner = _eth(frame, pl + hlen)
        elif gproto == ETH_P_IP:
            inner = pl + hlen
        else:
            return None
        if inner is not None and _is_probe(frame, inner, src, dst):
            return "gre"
    return None


class NicTap:
    """Counts probe packets by encapsulation on one interface of one namespace while
    the probe runs (a thread reading an AF_PACKET socket; stopped by `stop()`)."""

    def __init__(self, netns: str | None, ifname: str, direction: str, src: str, dst: str,
                 vxlan_ports: Iterable[int] = (4789, 8472), wireguard_ports: Iterable[int] = ()):
        self.netns, self.ifname, self.direction = netns, ifname, direction
        self.src, self.dst = src, dst
        self.ports = tuple(vxlan_ports)
        self.wg_ports = tuple(wireguard_ports)
        self.counts = {"vxlan": 0, "gre": 0, "plain": 0}
        if self.wg_ports:
            self.counts["wireguard"] = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from crossnet.netlink.ns import socket_in_netns

        try:
            self._sock = socket_in_netns(self.netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self._sock.bind((self.ifname, ETH_P_ALL))
            self._sock.setblocking(False)
        except OSError as exc:
            self.error = f"cannot capture on {self.ifname}: {exc.strerror or exc}"
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            return
        self._thread = threading.Thread(target=self._run, name=f"crossnet-tap-{self.ifname}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while True:
            r, _, _ = select.select([self._sock], [], [], 0.05)
            if not r:
                if self._stop.is_set():
                    return
                continue
            while True:
                try:
                    data, addr = self._sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:
                    return
                outgoing = addr[2] == PACKET_OUTGOING
                if outgoing != (self.direction == "tx"):
                    continue
                kind = classify_frame(data, self.src, self.dst, self.ports, self.wg_ports)
                if kind:
                    self.counts[kind] += 1

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        return dict(self.counts)


# ---- the probe -------------------------------------------------------------------------------
def send_probe(netns: str | None, dst: str, count: int, interval: float = PROBE_INTERVAL,
               timeout: float = 1.0) -> dict:
    """COUNT echo requests from `netns` to `dst`, bounded in number and time."""
    count = max(1, min(int(count), MAX_COUNT))
    deadline = math.ceil(count * interval + timeout + 1)
    if shutil.which("ping"):
        # no -w: with -w, -c counts replies and ping keeps sending until the deadline
        argv = [*_netns_prefix(netns), "ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}",
                "-W", f"{timeout:g}", dst]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=deadline + 5, check=False)
        except subprocess.TimeoutExpired:
            return {"sent": count, "received": 0, "error": "ping timed out"}
        import re

        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", proc.stdout)
        if m:
            return {"sent": int(m.group(1)), "received": int(m.group(2)), "method": "ping"}
        return {"sent": 0, "received": 0, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or None}
    from crossnet.check import Endpoint as CEndpoint
    from crossnet.check import probe

    received = 0
    for _ in range(count):
        ok, _rtt, _err = probe(CEndpoint("src", netns or "", dst), dst, count=1, timeout=timeout, method="icmp")
        received += int(ok)
    return {"sent": count, "received": received, "method": "icmp"}


# ---- verification ----------------------------------------------------------------------------
CounterSource = Callable[[], dict[str, tuple[int, int]]]


def apply_deltas(hops: list[Hop], before: dict[str, dict[str, tuple[int, int]]],
                 after: dict[str, dict[str, tuple[int, int]]], sent: int) -> None:
    """Fill tx/rx deltas and `moved` of every hop with a counter (pure)."""
    for h in hops:
        if h.counter is None:
            continue
        src, name = h.counter
        b = before.get(src, {}).get(name)
        a = after.get(src, {}).get(name)
        if a is None or b is None:
            h.note = h.note or f"no counters for {name}"
            continue
        h.tx_delta, h.rx_delta = a[0] - b[0], a[1] - b[1]
        if h.expect is None:
            continue
        got = h.tx_delta if h.expect == "tx" else h.rx_delta
        h.moved = sent > 0 and got >= sent
        if not h.moved:
            h.note = (f"{h.expect} moved by {got} only, {sent} requests sent" if got > 0
                      else f"{h.expect} counter did not move: the probe did not pass here")


OVS_STATS_LAG = 1.0  # s: OVS userspace tunnel port counters trail the packets by up to ~1 s
SETTLE_MAX = 3.0


def settle(sources: dict[str, CounterSource], first_wait: float = OVS_STATS_LAG, step: float = 0.5,
           limit: float = SETTLE_MAX) -> dict[str, dict[str, tuple[int, int]]]:
    """Read counters that are updated lazily (OVS port stats) until two reads `step`
    apart agree, starting `first_wait` after the probe, for at most `limit` seconds."""
    deadline = time.monotonic() + limit
    time.sleep(first_wait)
    prev = {k: fn() for k, fn in sources.items()}
    while time.monotonic() + step <= deadline:
        time.sleep(step)
        cur = {k: fn() for k, fn in sources.items()}
        if cur == prev:
            break
        prev = cur
    return prev


def attach_captures(hops: list[Hop], taps: dict[tuple[str, str], dict]) -> None:
    for h in hops:
        if h.kind == "nic" and h.counter is not None and h.counter in taps:
            h.capture = taps[h.counter]
