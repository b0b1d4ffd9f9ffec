"""The CLI as a contract (docs/json.md): global options anywhere, -o json prints one JSON
object also on errors, every option has help, every backend option has choices."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.cli.contract import (
    CommaChoice,
    error_object,
    normalize,
    output_format,
    wants_json,
)
from crossnet.cli.main import cli


def crossnet(*argv: str, state_dir: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    e = dict(os.environ, CROSSNET_STATE_DIR=state_dir, **(env or {}))
    return subprocess.run([sys.executable, "-m", "crossnet", *argv], capture_output=True, text=True, env=e, check=False,
                          timeout=60)


@pytest.mark.parametrize("argv, expected", [
    (["status", "--state-dir", "/x"], ["--state-dir", "/x", "status"]),
    (["status", "--state-dir=/x", "-o", "json"], ["--state-dir=/x", "status", "-o", "json"]),
    (["-o", "json", "status"], ["status", "-o", "json"]),
    (["--output=json", "--state-dir", "/s", "lab", "check"], ["--state-dir", "/s", "lab", "check", "--output=json"]),
    (["-ojson", "lab", "list"], ["lab", "list", "-ojson"]),
    (["lab", "exec", "h1", "--", "crossnet", "status", "--state-dir", "/y"],
     ["lab", "exec", "h1", "--", "crossnet", "status", "--state-dir", "/y"]),
    (["lab", "exec", "h1", "crossnet", "status", "--state-dir", "/y", "-o", "json"],
     ["lab", "exec", "h1", "crossnet", "status", "--state-dir", "/y", "-o", "json"]),
    (["--state-dir", "/s", "status"], ["--state-dir", "/s", "status"]),
    (["--version"], ["--version"]),
    (["status", "--state-dir"], ["--state-dir"]),  # no value: click says "requires an argument"
    ([], []),
])
def test_normalize(argv, expected):
    assert normalize(argv) == expected


def test_output_format():
    assert wants_json(["status", "-o", "json"]) and wants_json(["-ojson", "status"])
    assert wants_json(["status", "--output=json"]) and not wants_json(["status", "-o", "text"])
    assert output_format(["status", "-o", "json", "-o", "text"]) == "text"  # the last wins, as in click
    # the command `lab exec` runs is not crossnet's: its -o is not ours
    assert not wants_json(["lab", "exec", "h1", "--", "crossnet", "status", "-o", "json"])
    assert not wants_json(["lab", "exec", "h1", "crossnet", "status", "-o", "json"])


@given(st.lists(st.sampled_from(["status", "lab", "check", "-o", "json", "--state-dir", "/d", "--", "exec", "x",
                                 "--state-dir=/e", "-ojson", "--output"]), max_size=10))
def test_normalize_keeps_every_token(argv):
    """Normalizing only reorders crossnet's own arguments: same tokens, what follows `--`
    or `lab exec` untouched, idempotent."""
    out = normalize(argv)
    own = argv[:next((i for i, t in enumerate(argv) if t == "--"), len(argv))]
    if own and own[-1] in ("--state-dir", "-o", "--output"):
        return  # a trailing option without its value: click's error is all that matters (see above)
    assert sorted(out) == sorted(argv)
    stops = [i for i, t in enumerate(argv) if t == "--" or t == "exec" and i and argv[i - 1] == "lab"]
    if stops:
        tail = argv[stops[0] + 1:]
        assert out[len(out) - len(tail):] == tail
    assert normalize(out) == out


def test_error_object():
    assert error_object("--count: must be between 1 and 100, got 0", 2, "--count") == {
        "ok": False, "error": {"message": "--count: must be between 1 and 100, got 0", "kind": "bad_input",
                               "exit_code": 2, "option": "--count"}}
    assert error_object("x", 1)["error"]["kind"] == "failed"


def test_comma_choice():
    t = CommaChoice(("vxlan", "host-gw"))
    assert t.convert("vxlan, host-gw", None, None) == "vxlan, host-gw"
    with pytest.raises(click.BadParameter, match="'geneve' is not one of vxlan, host-gw"):
        t.convert("vxlan,geneve", None, None)
    with pytest.raises(click.BadParameter):
        t.convert(",", None, None)


def _walk(cmd: click.Command, path: tuple[str, ...]):
    ctx = click.Context(cli)
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), path + (name,))


COMMANDS = list(_walk(cli, ("crossnet",)))


def test_every_option_has_help_and_every_backend_option_choices():
    missing, free = [], []
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            if not (p.help or "").strip():
                missing.append((" ".join(path), p.opts))
            if any("backend" in o for o in p.opts) and not getattr(p.type, "choices", None):
                free.append((" ".join(path), p.opts))
    assert len(COMMANDS) > 40
    assert missing == []
    assert free == []


def test_every_output_option_is_text_or_json():
    outs = [(path, p) for path, cmd in COMMANDS for p in cmd.params if "--output" in getattr(p, "opts", ())]
    assert len(outs) > 15
    for path, p in outs:
        assert "-o" in p.opts and list(getattr(p.type, "choices", [])) in (["text", "json"],), path


def test_host_is_chosen_with_host_everywhere():
    """apply, agent and launch name this host with --host (agent/launch keep --name as an alias)."""
    by_path = {" ".join(path): cmd for path, cmd in COMMANDS}
    for name in ("crossnet apply", "crossnet agent", "crossnet launch"):
        opts = [o for p in by_path[name].params for o in getattr(p, "opts", ())]
        assert "--host" in opts, name
    names = {p.name for p in by_path["crossnet agent"].params if "--host" in getattr(p, "opts", ())}
    assert names == {p.name for p in by_path["crossnet agent"].params if "--name" in getattr(p, "opts", ())}


@pytest.mark.parametrize("argv", [
    ["status", "-o", "json"],
    ["-o", "json", "status"],
    ["attach", "nosuch-netns-xyz", "-o", "json"],
    ["apply", "-f", "/nonexistent/cluster.yaml", "-o", "json"],
    ["lab", "check", "--name", "nosuch", "-o", "json"],
    ["lab", "demo", "--backend", "foo", "-o", "json"],
    ["lab", "up", "--hosts", "0", "-o", "json"],
    ["check", "--count", "0", "-o", "json"],
    ["status", "extra", "-o", "json"],
])
def test_json_on_errors(tmp_path, argv):
    """-o json: stdout is exactly one JSON object {ok: false, error: {...}} carrying the same
    message as the one stderr line, whatever failed (usage, bad input, runtime)."""
    res = crossnet(*argv, state_dir=str(tmp_path / "state"))
    assert res.returncode in (1, 2), res
    data = json.loads(res.stdout)
    assert data["ok"] is False and set(data["error"]) >= {"message", "kind", "exit_code"}
    assert data["error"]["exit_code"] == res.returncode
    lines = res.stderr.strip().splitlines()
    assert lines == [f"crossnet: error: {data['error']['message']}"]
    assert not (tmp_path / "state").exists()


def test_text_errors_print_nothing_on_stdout(tmp_path):
    res = crossnet("status", state_dir=str(tmp_path))
    assert res.returncode == 1 and res.stdout == ""


def test_state_dir_after_the_subcommand(tmp_path):
    """--state-dir after the subcommand is the global option (not an unknown option)."""
    res = crossnet("status", "--state-dir", str(tmp_path / "s"), "-o", "json", state_dir="/nonexistent-dir")
    data = json.loads(res.stdout)
    assert str(tmp_path / "s") in data["error"]["message"] and "not configured" in data["error"]["message"]
