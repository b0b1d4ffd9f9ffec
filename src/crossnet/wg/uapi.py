"""The WireGuard cross-platform UAPI text protocol (what wireguard-go serves on
``/var/run/wireguard/<if>.sock``; https://www.wireguard.com/xplatform/).

Messages are ``key=value`` lines ended by an empty line. Keys travel as lowercase hex.
This module builds and parses them (pure) and talks to a socket; it never logs a message
(a `set` carries the private key).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from crossnet.errors import CrossnetError
from crossnet.wg import keys


@dataclass
class PeerConfig:
    """What crossnet sets for one peer (keys as base64)."""

    public_key: str
    endpoint: str | None = None  # "10.0.0.2:51820"
    allowed_ips: list[str] = field(default_factory=list)
    keepalive: int = 0
    remove: bool = False


@dataclass
class PeerState:
    public_key: str  # base64
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    keepalive: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float = 0.0  # unix time, 0 = never

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DeviceState:
    public_key: str | None = None  # derived from the private key (never kept here)
    listen_port: int = 0
    peers: dict[str, PeerState] = field(default_factory=dict)  # by public key (base64)


def set_message(private_key: str | None = None, listen_port: int | None = None,
                peers: list[PeerConfig] = (), replace_peers: bool = False) -> bytes:
    """A `set=1` request. private_key: base64 (sent as hex)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={keys.b64_to_hex(private_key)}")
    if listen_port is not None:
        lines.append(f"listen_port={int(listen_port)}")
    if replace_peers:
        lines.append("replace_peers=true")
    for p in peers:
        lines.append(f"public_key={keys.b64_to_hex(p.public_key)}")
        if p.remove:
            lines.append("remove=true")
            continue
        if p.endpoint:
            lines.append(f"endpoint={p.endpoint}")
        lines.append(f"persistent_keepalive_interval={int(p.keepalive)}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={cidr}" for cidr in p.allowed_ips]
    for line in lines:
        if "\n" in line or not line.isprintable():
            raise ValueError("UAPI values must be single printable lines")
    return ("\n".join(lines) + "\n\n").encode()


GET_MESSAGE = b"get=1\n\n"


def parse_errno(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("errno="):
            return int(line[6:])
    raise CrossnetError("wireguard UAPI: reply without errno")


def parse_get(text: str) -> DeviceState:
    """Parse a `get=1` reply. The private key is turned into its public key at once."""
    dev = DeviceState()
    peer: PeerState | None = None
    hs_sec = 0
    for line in text.splitlines():
        if not line:
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise CrossnetError(f"wireguard UAPI: malformed line {k[:40]!r}")
        if k == "errno":
            if int(v) != 0:
                raise CrossnetError(f"wireguard UAPI: get failed with errno {int(v)}")
        elif k == "public_key":
            peer = PeerState(keys.hex_to_b64(v))
            dev.peers[peer.public_key] = peer
        elif peer is None:
            if k == "private_key":
                dev.public_key = keys.public_of(keys.hex_to_b64(v))
            elif k == "listen_port":
                dev.listen_port = int(v)
        elif k == "endpoint":
            peer.endpoint = v
        elif k == "allowed_ip":
            peer.allowed_ips.append(v)
        elif k == "persistent_keepalive_interval":
            peer.keepalive = int(v)
        elif k == "rx_bytes":
            peer.rx_bytes = int(v)
        elif k == "tx_bytes":
            peer.tx_bytes = int(v)
        elif k == "last_handshake_time_sec":
            hs_sec = int(v)
            peer.last_handshake = float(hs_sec)
        elif k == "last_handshake_time_nsec":
            peer.last_handshake = hs_sec + int(v) / 1e9 if hs_sec else 0.0
    return dev


def request(path: str, message: bytes, timeout: float = 5.0) -> str:
    """Send one UAPI message on the unix socket `path`, return the reply (up to the empty line)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as exc:
            raise CrossnetError(f"wireguard UAPI socket {path}: {exc.strerror or exc}") from None
        s.sendall(message)
        buf = b""
        while not (buf.endswith(b"\n\n") or buf == b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def get(path: str) -> DeviceState:
    return parse_get(request(path, GET_MESSAGE))


def set_(path: str, message: bytes) -> None:
    err = parse_errno(request(path, message))
    if err:
        raise CrossnetError(f"wireguard UAPI: set failed with errno {err}")
