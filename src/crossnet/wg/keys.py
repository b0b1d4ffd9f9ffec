"""WireGuard keys: X25519 via the `cryptography` library.

The private key lives in ``<state-dir>/wireguard/private.key`` (base64, like `wg genkey`,
mode 0600 in a 0700 directory). It never leaves the host, is never printed or logged and
never appears on a command line: the kernel gets it over netlink, wireguard-go over its
UAPI socket. Public keys travel through the store / the cluster file.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from crossnet.errors import ConfigError, CrossnetError

KEY_LEN = 32
KEY_DIR = "wireguard"
KEY_FILE = "private.key"


def key_dir(state_root: str | os.PathLike[str]) -> Path:
    return Path(state_root) / KEY_DIR


def key_path(state_root: str | os.PathLike[str]) -> Path:
    return key_dir(state_root) / KEY_FILE


def check_key(value: object) -> str | None:
    """None when `value` is a base64 WireGuard key (32 bytes), else why not."""
    if not isinstance(value, str):
        return f"must be a base64 string, not {type(value).__name__}"
    if len(value) != 44 or not value.endswith("="):
        return "must be 44 characters of base64 (a 32-byte key, as `crossnet keygen` prints)"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64"
    if len(raw) != KEY_LEN:
        return "does not decode to 32 bytes"
    if base64.b64encode(raw).decode() != value:  # the last character's 2 low bits are ignored by b64decode:
        # 4 spellings of one key, which the kernel reports as 1 and keeps as 1 peer
        return "is not the canonical base64 of its 32 bytes (as `crossnet keygen` prints it)"
    return None


def decode(value: str) -> bytes:
    problem = check_key(value)
    if problem:
        raise ValueError(f"WireGuard key {problem}")
    return base64.b64decode(value)


def b64_to_hex(value: str) -> str:
    return decode(value).hex()


def hex_to_b64(value: str) -> str:
    raw = bytes.fromhex(value)
    if len(raw) != KEY_LEN:
        raise ValueError("WireGuard key must be 32 bytes")
    return base64.b64encode(raw).decode()


def generate_private() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_of(private_b64: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    priv = X25519PrivateKey.from_private_bytes(decode(private_b64))
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def read_private(path: str | os.PathLike[str]) -> str:
    """The private key in `path` (base64). Refuses a file others can read."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text().strip()
    except FileNotFoundError:
        raise CrossnetError(f"no WireGuard private key at {p}; run `crossnet keygen`") from None
    if st.st_mode & 0o077:
        raise CrossnetError(f"WireGuard private key {p} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    if check_key(text):
        raise CrossnetError(f"WireGuard private key {p} is damaged (not a base64 32-byte key)")
    return text


def _write_private(path: Path, private_b64: str) -> None:
    from crossnet.state import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    write_text_atomic(path, private_b64 + "\n")  # 0600 from the first byte, fsync'd


def ensure_key(state_root: str | os.PathLike[str], rotate: bool = False) -> tuple[str, bool]:
    """(public key, created): create this host's private key when missing (or a new one
    with `rotate`); return its public key."""
    path = key_path(state_root)
    if path.exists() and not rotate:
        return public_of(read_private(path)), False
    _write_private(path, generate_private())
    return public_of(read_private(path)), True


def local_public(state_root: str | os.PathLike[str]) -> str | None:
    """This host's public key, None when it has no private key yet."""
    path = key_path(state_root)
    if not path.exists():
        return None
    return public_of(read_private(path))


def validate_host_data(data: object) -> str | None:
    """For store record validation: None when a host record's `data` carries a valid
    `wireguard_key` (or none at all), else a one-line reason."""
    if not isinstance(data, dict) or "wireguard_key" not in data:
        return None
    problem = check_key(data["wireguard_key"])
    return f"data.wireguard_key {problem}" if problem else None


__all__ = ["ConfigError", "check_key", "ensure_key", "public_of", "read_private", "validate_host_data"]
