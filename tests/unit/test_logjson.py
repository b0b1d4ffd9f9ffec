"""`--log-format json`: one JSON object per line (ts RFC 3339 UTC, level, logger, msg,
extra fields, exc), credentials masked in the message, the fields and the traceback;
text stays the default."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest

from crossnet.agent.core import setup_logging
from crossnet.logjson import env_format, line, rfc3339


class Captured:
    def __init__(self, capsys):
        self.capsys = capsys

    def getvalue(self) -> str:  # what the handler (made on pytest's sys.stderr) wrote
        return self.capsys.readouterr().err


@pytest.fixture
def captured(capsys):
    root = logging.getLogger("crossnet")
    saved = (root.handlers[:], root.level, root.propagate)
    yield Captured(capsys)
    root.handlers[:], root.level, root.propagate = saved


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_one_object_per_line_with_fields(captured):
    setup_logging(False, "json")
    log = logging.getLogger("crossnet.agent")
    log.info("peer %s added", "h2", extra={"peer": "h2", "changes": 3})
    log.debug("not shown at info")
    log.warning("multi\nline")
    out = lines(captured.getvalue())
    assert len(out) == 2
    first = out[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert (first["level"], first["logger"], first["msg"], first["peer"], first["changes"]) == \
        ("info", "crossnet.agent", "peer h2 added", "h2", 3)
    assert out[1]["msg"] == "multi\nline" and out[1]["level"] == "warning"


def test_credentials_are_masked_in_message_fields_and_traceback(captured):
    setup_logging(True, "json")
    log = logging.getLogger("crossnet.agent")
    log.error("store %s down", "http://root:s3cret@10.0.0.1:2379", extra={"endpoint": "http://u:hunter2@h:1"})
    try:
        raise RuntimeError("connect http://admin:pa55@etcd:2379?token=abc failed")
    except RuntimeError:
        log.exception("watch")
    text = captured.getvalue()
    assert "s3cret" not in text and "hunter2" not in text and "pa55" not in text and "abc" not in text
    out = lines(text)
    assert out[0]["msg"] == "store http://root:***@10.0.0.1:2379 down" and out[0]["endpoint"] == "http://u:***@h:1"
    assert "RuntimeError" in out[1]["exc"] and "admin:***@etcd" in out[1]["exc"]


def test_text_stays_the_default(captured):
    setup_logging()
    logging.getLogger("crossnet.agent").info("hello http://a:b@c")
    line = captured.getvalue().strip()
    assert line.endswith("crossnet-agent INFO hello http://a:***@c") and not line.startswith("{")


def test_cli_accepts_only_text_or_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "s"), "agent",
                           "-f", "x.yaml", "--log-format", "xml"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--log-format" in proc.stderr


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_text_log_times_are_rfc3339_utc(captured):
    """One time format in every log: the text log's first word is the same RFC 3339 UTC
    time as the JSON log's ``ts`` (was asctime: local time, comma before the ms)."""
    setup_logging()
    logging.getLogger("crossnet.agent").info("hello")
    stamp, rest = captured.getvalue().strip().split(" ", 1)
    assert RFC3339.match(stamp), stamp
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 60
    assert rest == "crossnet-agent INFO hello"


def test_rfc3339_is_utc_with_milliseconds():
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1796313373.1239) == "2026-12-03T15:56:13.123Z"


def test_line_has_the_formatter_shape_and_masks(captured):
    out = json.loads(line("crossnet.cni", "ADD ok", ts=0, command="ADD", rc=0, url="http://u:pw@h"))
    assert out == {"ts": "1970-01-01T00:00:00.000Z", "level": "info", "logger": "crossnet.cni", "msg": "ADD ok",
                   "command": "ADD", "rc": 0, "url": "http://u:***@h"}


def test_env_format(monkeypatch):
    monkeypatch.setenv("CROSSNET_LOG_FORMAT", "json")
    assert env_format() == "json"
    monkeypatch.setenv("CROSSNET_LOG_FORMAT", "xml")
    assert env_format() == "text"
    monkeypatch.delenv("CROSSNET_LOG_FORMAT")
    assert env_format("json") == "json"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_launch_supervisor_log_follows_log_format(captured, monkeypatch, tmp_path, fmt):
    """`crossnet launch --log-format json` reaches the supervisor (`launch --foreground`,
    started detached: through CROSSNET_LOG_FORMAT) and the agent it runs: one JSON object
    per line; text names crossnet-launch. (The supervisor is replaced by one that logs.)"""
    from crossnet.mesh import launch as ml

    class Supervisor:
        def __init__(self, state_dir):
            self.state_dir = state_dir

        def run(self):
            logging.getLogger("crossnet.mesh").info("etcd member started")
            logging.getLogger("crossnet.agent").warning("peer h2 down")
            return 0

    monkeypatch.setattr(ml, "Supervisor", Supervisor)
    monkeypatch.setenv("CROSSNET_LOG_FORMAT", fmt)
    assert ml.run_foreground(str(tmp_path)) == 0
    out = captured.getvalue().strip().splitlines()
    if fmt == "json":
        recs = [json.loads(x) for x in out]
        assert [(r["level"], r["logger"], r["msg"]) for r in recs] == [
            ("info", "crossnet.mesh", "etcd member started"), ("warning", "crossnet.agent", "peer h2 down")]
        assert all(RFC3339.match(r["ts"]) for r in recs)
    else:
        assert out[0].split(" ", 1)[1] == "crossnet-launch INFO etcd member started"


def test_launch_refuses_an_unknown_log_format(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path / "s"), "launch",
                           "--log-format", "xml"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--log-format" in proc.stderr
