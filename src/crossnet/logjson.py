"""``--log-format json``: one JSON object per log line — ``ts`` (RFC 3339 UTC, ms),
``level``, ``logger``, ``msg``, then the record's extra fields (``log.info(..., extra={"peer": "h2"})``)
and ``exc`` for a traceback. Credentials are masked (crossnet.redact): the handler's
MaskingFilter masks the message and traceback, this formatter the extra fields.

One time format everywhere (docs/operations.md "Log fields"): :func:`rfc3339` is the one
formatter of wall-clock times for the logs (JSON and text: :class:`TextFormatter`), the
CNI plugin's and warm helper's log lines (:func:`line`) and every ``-o json``.
The log format of `crossnet agent` and `crossnet launch` is ``--log-format``;
``CROSSNET_LOG_FORMAT`` carries it to the processes they start (:func:`env_format`).
"""

from __future__ import annotations

import json
import logging
import time

from crossnet.redact import mask_credentials

# attributes every LogRecord has: not "extra" fields
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


ENV = "CROSSNET_LOG_FORMAT"
FORMATS = ("text", "json")


def rfc3339(ts: float) -> str:
    """``2026-12-03T15:56:13.123Z`` (UTC, milliseconds)."""
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def env_format(default: str = "text") -> str:
    """The log format a parent process asked for in CROSSNET_LOG_FORMAT (else `default`)."""
    import os

    value = os.environ.get(ENV, "")
    return value if value in FORMATS else default


def line(logger: str, msg: str, level: str = "info", ts: float | None = None, **fields: object) -> str:
    """One JSON log line of the same shape as :class:`JsonFormatter`'s, for code that
    does not use the logging module (the CNI plugin's ``logFile``: one short process)."""
    out: dict[str, object] = {"ts": rfc3339(time.time() if ts is None else ts), "level": level,
                              "logger": logger, "msg": mask_credentials(msg)}
    for key, value in fields.items():
        if key not in out:
            out[key] = _field(value)
    return json.dumps(out, ensure_ascii=False, default=str)


def append_line(path: str, text: str) -> None:
    """Append one line to the log file ``path`` (a CNI network's ``logFile``: configuration
    a runtime hands the plugin, so never trusted): created 0600 if absent, never through a
    symbolic link (O_NOFOLLOW), never into anything but a regular file (a FIFO or device
    there is left alone, O_NONBLOCK: never waited on). OSError when it cannot be written."""
    import os
    import stat

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _field(value: object) -> object:
    if isinstance(value, str):
        return mask_credentials(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _field(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_field(v) for v in value]
    return mask_credentials(str(value))


class TextFormatter(logging.Formatter):
    """The text log: ``<RFC 3339 UTC time> <name> <LEVEL> <message>``."""

    def __init__(self, name: str):
        super().__init__(f"%(asctime)s {name} %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created)


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
