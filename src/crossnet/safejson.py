"""Bounded JSON decoding for input crossnet does not write itself: CNI stdin, the warm
CNI helper's requests, the agent's local API.

``json.loads`` recurses once per nesting level: 100,000 nested ``[`` raise RecursionError
(a crash, not a decoding error), and a huge document costs memory. :func:`loads` checks
the size and the nesting depth on the raw text first, with a scan that never recurses
(strings removed by one regular expression, then the brackets counted), and refuses
what JSON allows but no sender of ours produces: ``NaN``/``Infinity`` and an object key
given twice (which of the two would a reader take?). Every refusal is a
:class:`JsonInputError` (a ValueError) with a one-line message. Standard library only:
the CNI plugin imports this on every call.
"""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_STR_B = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_STR_S = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BR_B = re.compile(rb"[\[\]{}]")
_BR_S = re.compile(r"[\[\]{}]")


class JsonInputError(ValueError):
    """The input is not acceptable JSON (too large, too deep, malformed, ...)."""


def too_deep(data: bytes | str, limit: int) -> bool:
    """Is any ``[``/``{`` (outside strings) nested deeper than ``limit``? Iterative;
    stops at the first level over the limit."""
    is_bytes = isinstance(data, (bytes, bytearray))
    opens = data.count(b"[") + data.count(b"{") if is_bytes else data.count("[") + data.count("{")
    if opens <= limit:
        return False
    stripped = (_STR_B if is_bytes else _STR_S).sub(b"" if is_bytes else "", data)
    openers = (ord("["), ord("{")) if is_bytes else ("[", "{")
    depth = 0
    for m in (_BR_B if is_bytes else _BR_S).finditer(stripped):
        ch = stripped[m.start()]
        if ch in openers:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonInputError(f"key {key!r} is given twice")
        out[key] = value
    return out


def loads(data: bytes | str, what: str, max_size: int, max_depth: int) -> Any:
    """Decode ``data`` (``what`` names it in messages) or raise JsonInputError."""
    if len(data) > max_size:
        raise JsonInputError(f"{what} is larger than {max_size} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")  # only UTF-8 (json.loads would also guess UTF-16/32)
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"{what} is not UTF-8 text (byte {exc.start})") from None
    if too_deep(data, max_depth):
        raise JsonInputError(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(data, parse_constant=_no_constant, object_pairs_hook=_pairs)
    except JsonInputError as exc:
        raise JsonInputError(f"{what}: {exc}") from None
    except RecursionError:  # cannot happen below max_depth; never let it escape
        raise JsonInputError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise JsonInputError(f"{what} is not valid JSON: {reason}") from None
