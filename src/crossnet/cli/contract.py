"""The command line as a contract with scripts (docs/json.md).

- Global options anywhere: `--state-dir DIR` may follow the subcommand and `-o/--output
  FORMAT` may precede it (`crossnet -o json status` = `crossnet status -o json`);
  `normalize` moves them where click expects them.
- `-o json` means one JSON object on stdout, also when the command fails:
  `{"ok": false, "error": {"message", "kind", "exit_code"}}` (`error_object`), the
  one-line `crossnet: error: ...` still on stderr.

Pure functions of argv, and `CommaChoice` (a comma-separated list of choices)."""

from __future__ import annotations

import json

import click

# options of the top-level group that take a value (`--state-dir X`, `--state-dir=X`)
GROUP_VALUE_OPTS = ("--state-dir",)
OUTPUT_OPTS = ("-o", "--output")
# the rest of argv belongs to another program after `--` and after `lab exec`


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(crossnet's own arguments, the rest): the rest starts at `--` or after `lab exec`."""
    for i, tok in enumerate(argv):
        if tok == "--":
            return argv[:i], argv[i:]
        if tok == "exec" and i and argv[i - 1] == "lab":
            return argv[: i + 1], argv[i + 1:]
    return list(argv), []


def _take(tokens: list[str], i: int, names: tuple[str, ...]) -> int:
    """How many tokens the option at tokens[i] spans if it is one of `names` (0: not one)."""
    tok = tokens[i]
    for name in names:
        if tok == name:
            return 2 if i + 1 < len(tokens) else 1
        if name.startswith("--") and tok.startswith(name + "="):
            return 1
        if not name.startswith("--") and tok.startswith(name) and len(tok) > len(name):
            return 1  # -ojson
    return 0


def _command_index(head: list[str]) -> int:
    """Index of the first subcommand token in crossnet's own arguments (len(head): none)."""
    i = 0
    while i < len(head):
        n = _take(head, i, GROUP_VALUE_OPTS + OUTPUT_OPTS)
        if n:
            i += n
        elif head[i].startswith("-"):
            i += 1
        else:
            return i
    return len(head)


def normalize(argv: list[str]) -> list[str]:
    """argv with `--state-dir` moved before the subcommand and `-o/--output` given before
    the subcommand moved after it. Arguments of `lab exec`'s command are never touched."""
    head, rest = _split(list(argv))
    cmd = _command_index(head)
    if cmd == len(head):
        return list(argv)
    front, back, out = head[:cmd], head[cmd:], []
    i, moved_output = 0, []
    lab_exec = head[-2:] == ["lab", "exec"]
    while i < len(front) and not lab_exec:  # `lab exec` has no -o: left where it is
        n = _take(front, i, OUTPUT_OPTS)
        if _take(front, i, GROUP_VALUE_OPTS):  # `--state-dir VALUE` stays together
            n = _take(front, i, GROUP_VALUE_OPTS)
            out += front[i:i + n]
        elif n:
            moved_output += front[i:i + n]
        else:
            n = 1
            out.append(front[i])
        i += n
    front = out if not lab_exec else front
    out, moved_state = [], []
    i = 0
    while i < len(back):
        n = _take(back, i, GROUP_VALUE_OPTS)
        if n == 1 and back[i] in GROUP_VALUE_OPTS:  # a trailing `--state-dir` without its value
            return front + [back[i]]  # click: "option '--state-dir' requires an argument"
        if n:
            moved_state += back[i:i + n]
        elif _take(back, i, OUTPUT_OPTS):  # `-o VALUE` stays together
            n = _take(back, i, OUTPUT_OPTS)
            out += back[i:i + n]
        else:
            n = 1
            out.append(back[i])
        i += n
    return front + moved_state + out + moved_output + rest


def output_format(argv: list[str]) -> str | None:
    """The -o/--output value crossnet's own arguments ask for (the last one wins), or None."""
    head, _ = _split(list(argv))
    fmt = None
    for i in range(len(head)):
        n = _take(head, i, OUTPUT_OPTS)
        if not n:
            continue
        tok = head[i]
        if n == 2:
            fmt = head[i + 1]
        elif "=" in tok and tok.startswith("--"):
            fmt = tok.split("=", 1)[1]
        elif tok.startswith("-o") and not tok.startswith("--"):
            fmt = tok[2:]
    return fmt


def wants_json(argv: list[str]) -> bool:
    return output_format(argv) == "json"


KINDS = {2: "bad_input", 1: "failed", 70: "internal", 130: "aborted"}


def error_object(message: str, exit_code: int, option: str | None = None) -> dict:
    """The JSON a failed command prints with -o json: the same message as stderr's
    `crossnet: error:` line, its kind (from the exit code) and, for a rejected
    command-line option, which one."""
    err: dict = {"message": message, "kind": KINDS.get(exit_code, "failed"), "exit_code": exit_code}
    if option:
        err["option"] = option
    return {"ok": False, "error": err}


def error_json(message: str, exit_code: int, option: str | None = None) -> str:
    return json.dumps(error_object(message, exit_code, option), indent=2)


class CommaChoice(click.ParamType):
    """A comma-separated list of names from `choices` (`--backends vxlan,host-gw`). The
    value stays the string as given; every item is checked. `choices` is public like
    click.Choice's (the CLI's option test reads it)."""

    name = "list"

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "],..."

    def convert(self, value, param, ctx):
        items = [x.strip() for x in str(value).split(",") if x.strip()]
        if not items:
            self.fail("give at least one name", param, ctx)
        bad = [x for x in items if x not in self.choices]
        if bad:
            self.fail(f"{bad[0]!r} is not one of {', '.join(self.choices)}", param, ctx)
        return value


# fields that hold a point in time, in any command's JSON: printed as RFC 3339 UTC
# (`2026-12-03T15:56:13.123Z`) whatever the internal record keeps (epoch seconds, local time)
TIME_KEYS = frozenset({"synced_at", "measured_at", "path_mtu_measured_at", "since", "last_handshake",
                       "created_at", "created", "expires", "started_at", "time", "ts"})


def _rfc3339(value: object) -> object:
    import datetime

    from crossnet.logjson import rfc3339

    if isinstance(value, bool) or value is None:
        return value  # keygen's `created: true` is not a time
    if isinstance(value, (int, float)):
        return rfc3339(float(value)) if value > 0 else None  # 0: never (a WireGuard handshake)
    if isinstance(value, str):
        try:
            t = datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
        if t.tzinfo is None:
            return value  # no zone: which one is unknown, left as it is
        return rfc3339(t.timestamp())
    return value


def json_times(data: object) -> object:
    """`data` with every TIME_KEYS field (at any depth) in RFC 3339 UTC."""
    if isinstance(data, dict):
        return {k: _rfc3339(v) if k in TIME_KEYS and not isinstance(v, (dict, list)) else json_times(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [json_times(x) for x in data]
    return data


def emit(data: object) -> None:
    """Print a command's -o json result: one JSON document, times in RFC 3339 UTC."""
    click.echo(json.dumps(json_times(data), indent=2, sort_keys=False))
