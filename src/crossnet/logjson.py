"""``--log-format json``: one JSON object per log line — ``ts`` (RFC 3339 UTC, ms),
``level``, ``logger``, ``msg``, then the record's extra fields (``log.info(..., extra={"peer": "h2"})``)
and ``exc`` for a traceback. Credentials are masked (crossnet.redact): the handler's
MaskingFilter masks the message and traceback, this formatter the extra fields."""

from __future__ import annotations

import json
import logging
import time

from crossnet.redact import mask_credentials

# attributes every LogRecord has: not "extra" fields
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


def rfc3339(ts: float) -> str:
    """``2026-12-03T15:56:13.123Z``"""
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def _field(value: object) -> object:
    if isinstance(value, str):
        return mask_credentials(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_credentials(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"ts": rfc3339(record.created), "level": record.levelname.lower(),
                                  "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = _field(value)
        if record.exc_info:
            out["exc"] = record.exc_text or mask_credentials(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)
