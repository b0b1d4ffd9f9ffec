"""`crossnet lab exec HOST -- CMD`: the argv it execs. CMD `crossnet` is the crossnet
that runs the command (this interpreter), as the lab's own commands are: another
installation first on PATH (an older /opt/crossnet next to a development venv) read the
lab's records written by this one and failed on what it did not know."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from crossnet.cli.main import cli
from crossnet.lab import manager


class _Lab:
    def argv(self, host, cmd):
        return ["ip", "netns", "exec", f"t-{host}", *cmd]


@pytest.fixture
def execs(monkeypatch):
    seen = []

    def fake_execvp(path, argv):
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(manager, "require_root", lambda: None)
    monkeypatch.setattr(manager.Lab, "open", classmethod(lambda cls, name: _Lab()))
    monkeypatch.setattr("os.execvp", fake_execvp)
    return seen


def run(*args):
    return CliRunner().invoke(cli, ["lab", "exec", "--name", "t", *args])


def test_crossnet_is_this_interpreters_crossnet(execs):
    assert run("h1", "--", "crossnet", "status", "-o", "json").exit_code == 0
    assert execs == [["ip", "netns", "exec", "t-h1", sys.executable, "-m", "crossnet", "status", "-o", "json"]]


def test_other_commands_are_run_as_given(execs):
    assert run("h1", "--", "ip", "route").exit_code == 0
    assert run("h1", "/usr/local/bin/crossnet", "status").exit_code == 0  # a path: the user chose it
    assert execs == [["ip", "netns", "exec", "t-h1", "ip", "route"],
                     ["ip", "netns", "exec", "t-h1", "/usr/local/bin/crossnet", "status"]]
