"""Mask credentials in text that may contain URLs (store endpoints), before it is
printed or logged: ``scheme://user:password@host`` becomes ``scheme://user:***@host``
(``scheme://token@host`` becomes ``scheme://***@host``) and the values of query
parameters that carry secrets (``?token=…``, ``password=…``) become ``***``.

Used for every message and log line that may contain an endpoint (``--etcd`` errors,
the agent's log handler). Over-masking is accepted: a URL's user part is cut at its
last ``@``, so a password holding ``@``, ``/`` or ``:`` is masked whole.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_SCHEME = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://")
# where a URL ends in running text: white space, quotes, angle brackets, or the start of
# the next URL of a comma-separated list
_END = re.compile(r"""[\s'"<>`]|,(?=[a-z][a-z0-9+.-]*://)""", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|token|access_token|auth|authorization|secret|api_?key|key)=)"
    r"[^&#;]*"
)


def mask_credentials(text: str) -> str:
    """``text`` with every URL's user info and secret query values replaced by ***."""
    if "://" not in text:
        return _SECRET_PARAM.sub(lambda p: p.group(1) + MASK, text) if "=" in text else text
    out: list[str] = []
    pos = 0
    for m in _SCHEME.finditer(text):
        if m.start() < pos:
            continue  # inside a URL already masked
        out.append(_SECRET_PARAM.sub(lambda p: p.group(1) + MASK, text[pos:m.end()]))
        end_m = _END.search(text, m.end())
        end = end_m.start() if end_m else len(text)
        # secret query values first: one holding '@' must not pass for the end of user info
        url = _SECRET_PARAM.sub(lambda p: p.group(1) + MASK, text[m.end():end])
        at = url.rfind("@")
        if at >= 0:
            user = url[:at]
            colon = user.find(":")
            url = (user[:colon] + ":" + MASK if colon >= 0 else MASK) + url[at:]
        out.append(url)
        pos = end
    out.append(_SECRET_PARAM.sub(lambda p: p.group(1) + MASK, text[pos:]))  # also outside URLs
    return "".join(out)


class MaskingFilter(logging.Filter):
    """Log filter: the formatted message with credentials masked (agent log handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: let logging report it
            return True
        masked = mask_credentials(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask_credentials(logging.Formatter().formatException(record.exc_info))
        return True
