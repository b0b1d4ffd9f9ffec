"""`crossnet completion bash|zsh|fish` and `crossnet man` are generated from the CLI: every
command and subcommand is in the man page (and groff reads it without a warning), `man
--dir` writes a page per command, and completion offers every subcommand of every group,
the options and the choices of an option."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click
import pytest
from click.shell_completion import BashComplete

from crossnet.cli.completion import walk
from crossnet.cli.main import COMMAND_MODULES, cli


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossnet", *args], capture_output=True, text=True, timeout=60,
                          check=False, **kw)


def every_command() -> list[str]:
    """Every command path, found by asking each group for its commands."""
    out = []

    def visit(cmd: click.Command, ctx: click.Context) -> None:
        out.append(ctx.command_path)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                visit(sub, click.Context(sub, info_name=name, parent=ctx))

    visit(cli, click.Context(cli, info_name="crossnet"))
    return out


@pytest.fixture(scope="module")
def page() -> str:
    proc = run("man")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_man_page_has_every_command(page):
    commands = every_command()
    assert {c.split()[1] for c in commands[1:]} >= {n for names in COMMAND_MODULES.values() for n in names}
    assert len(commands) > 40  # groups' subcommands included (lab up, etcd init, token create, ...)
    sections = [line[4:] for line in page.splitlines() if line.startswith(".SS ")]
    assert sections == commands[1:]
    assert page.startswith('.TH "CROSSNET" "1" ')
    assert "\\fB--log-format [text|json]\\fR" in page  # options with their choices


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_groff_reads_the_page_without_a_warning(page, tmp_path):
    (tmp_path / "crossnet.1").write_text(page)
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(tmp_path / "crossnet.1")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_man_dir_writes_one_page_per_command(tmp_path):
    proc = run("man", "--dir", str(tmp_path / "man1"))
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(tmp_path / "man1"))
    assert names == sorted(["crossnet.1"] + [c.replace(" ", "-") + ".1" for c in every_command()[1:]])
    text = (tmp_path / "man1" / "crossnet-lab-up.1").read_text()
    assert text.startswith('.TH "CROSSNET-LAB-UP" "1" ') and "\\fBcrossnet lab up\\fR" in text


def complete(words: list[str], incomplete: str) -> list[str]:
    return [c.value for c in BashComplete(cli, {}, "crossnet", "_CROSSNET_COMPLETE").get_completions(words,
                                                                                                      incomplete)]


def test_completion_offers_every_subcommand_of_every_group():
    ctx = click.Context(cli, info_name="crossnet")
    groups = [(c, x) for c, x in walk(cli, ctx) if isinstance(c, click.Group)]
    assert len(groups) > 3
    for group, gctx in groups:
        words = gctx.command_path.split()[1:]
        assert sorted(complete(words, "")) == sorted(group.list_commands(gctx)), gctx.command_path


def test_completion_of_options_and_choices():
    assert "--log-format" in complete(["agent"], "--log")
    assert complete(["agent", "--log-format"], "") == ["text", "json"]
    assert complete(["completion"], "") == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F _crossnet_completion crossnet"),
                                          ("zsh", "#compdef crossnet"), ("fish", "complete --no-files --command crossnet")])
def test_completion_scripts(shell, marker):
    proc = run("completion", shell)
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout and "_CROSSNET_COMPLETE" in proc.stdout


def test_completion_script_round_trip():
    """What the bash script runs: `crossnet` with the completion variables answers the
    top-level commands (the real entry point, not only click's API)."""
    env = {**os.environ, "_CROSSNET_COMPLETE": "bash_complete", "COMP_WORDS": "crossnet sys", "COMP_CWORD": "1"}
    proc = run(env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ["plain,systemd"], (proc.stdout, proc.stderr)


def test_bad_shell_is_one_line():
    proc = run("completion", "tcsh")
    assert proc.returncode == 2 and proc.stderr.startswith("crossnet: error: completion: ") and "tcsh" in proc.stderr
