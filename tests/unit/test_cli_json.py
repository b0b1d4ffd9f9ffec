"""docs/json.md shows the shape of every command's -o json (crossnet.cli.shapes), every
command with -o json has one, and the shape checker itself is right."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from crossnet.cli.contract import error_object, json_times
from crossnet.cli.main import cli
from crossnet.cli.shapes import (
    ERROR,
    OWN_FORMAT,
    SHAPES,
    check_output,
    problems,
    render,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "json.md").read_text()


def _json_commands() -> list[str]:
    ctx = click.Context(cli)
    out = []

    def walk(cmd, path):
        if any("--output" in getattr(p, "opts", ()) for p in cmd.params):
            out.append(" ".join(path))
        if isinstance(cmd, click.Group):
            for n in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, n), path + [n])

    walk(cli, [])
    return out


def test_every_json_command_has_a_shape():
    cmds = _json_commands()
    assert len(cmds) >= 20
    assert [c for c in cmds if c not in SHAPES and c not in OWN_FORMAT] == []
    assert [c for c in SHAPES if c not in cmds] == []  # no shape of a command that is gone


@pytest.mark.parametrize("command", [*SHAPES, "error"])
def test_doc_shows_every_shape(command):
    if command != "error":
        assert f"### `crossnet {command}`" in DOC
    assert f"```json\n{render(command)}\n```" in DOC, f"docs/json.md is out of date for {command}"


def test_error_object_has_the_error_shape():
    assert problems(ERROR, error_object("x", 2, "--count")) == []
    assert check_output("status", '{"ok": false, "error": {"message": "m", "kind": "failed", "exit_code": 1}}') == []


def test_checker_finds_what_is_wrong():
    shape = {"a": "int", "b?": "str", "c": ["time?"], "d": ({"x": "bool"}, "str")}
    assert problems(shape, {"a": 1, "c": ["2026-12-03T15:56:13.123Z", None], "d": "s"}) == []
    assert problems(shape, {"a": True, "c": [], "d": {"x": True}}) == ["$.a: bool True, expected int"]
    assert problems(shape, {"a": 1, "b": None, "c": ["12:00"], "d": 3}) == [
        "$.b: null, expected str", "$.c[0]: '12:00' is not RFC 3339 UTC", "$.d: expected an object, got int"]
    assert problems(shape, {"c": []}) == ["$.a: missing", "$.d: missing"]
    assert check_output("keygen", "[1]") == ["not a JSON object: list"]
    assert check_output("keygen", "{} {}")[0].startswith("not one JSON document")


def test_times_are_rfc3339_utc():
    data = {"since": 1764777373.5, "peers": [{"last_handshake": 0}], "created": True,
            "lab": {"created_at": "2026-12-03T16:56:13+0100"}, "other": 5, "ts": None}
    assert json_times(data) == {"since": "2025-12-03T15:56:13.500Z", "peers": [{"last_handshake": None}],
                                "created": True, "lab": {"created_at": "2026-12-03T15:56:13.000Z"},
                                "other": 5, "ts": None}
