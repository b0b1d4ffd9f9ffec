"""Interface names that come from input (cluster file, CLI, store, kernel), checked
before they reach the kernel, OVSDB or a generated script.

The kernel's own rule (net/core/dev.c dev_valid_name): 1..15 bytes, not "." or "..",
no '/', ':' or white space (and no NUL). Names pasted into an nftables script must
also be free of the characters nft's quoted strings cannot hold (`"` and `\\`):
nft_ifname() refuses those and returns the quoted form.
"""

from __future__ import annotations

from crossnet.errors import ConfigError

IFNAMSIZ = 16  # including the terminating NUL
_NFT_UNSAFE = frozenset('"\\')


def _problem(name: object) -> str | None:
    if not isinstance(name, str):
        return "must be a string"
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if not 1 <= len(raw) < IFNAMSIZ:
        return f"must be 1..{IFNAMSIZ - 1} bytes long (is {len(raw)})"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if "/" in name or ":" in name:
        return "must not contain '/' or ':'"
    if "\0" in name or any(c.isspace() for c in name):
        return "must not contain white space or NUL"
    return None


def valid_ifname(name: object) -> bool:
    """True when the kernel would accept ``name`` as a network interface name."""
    return _problem(name) is None


def check_ifname(name: object, field: str) -> str:
    """``name`` if valid, else ConfigError naming ``field`` (one line)."""
    why = _problem(name)
    if why is not None:
        raise ConfigError(f"{field}: invalid interface name {_short(name)}: {why}")
    return name  # type: ignore[return-value]


def nft_ifname(name: object, field: str) -> str:
    """``name`` as a double-quoted nftables string, after check_ifname; names nft cannot
    quote (holding `"` or `\\`) are refused rather than pasted into the script."""
    name = check_ifname(name, field)
    if any(c in _NFT_UNSAFE for c in name) or not name.isprintable():
        raise ConfigError(f"{field}: interface name {_short(name)} cannot be used in an nftables rule "
                          "(no quotes, backslashes or control characters)")
    return f'"{name}"'


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
