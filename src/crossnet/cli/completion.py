"""`crossnet completion bash|zsh|fish` and `crossnet man`: shell completion and the man
page, both generated from the CLI itself (the click command tree), so they never miss a
command or an option.

- completion: click's own shell completion (the script calls `crossnet` back with
  ``_CROSSNET_COMPLETE=<shell>_complete``; every command, subcommand, option and
  choice completes). Install: ``crossnet completion bash >
  /etc/bash_completion.d/crossnet``; zsh: ``crossnet completion zsh >
  "${fpath[1]}/_crossnet"``.
- man: one roff page, crossnet(1), with every command (groups' subcommands included),
  its usage, help text and options. ``crossnet man > /usr/local/share/man/man1/crossnet.1``;
  ``--dir DIR`` writes crossnet.1 and one crossnet-CMD.1 per command there.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import click

PROG = "crossnet"
COMPLETE_VAR = "_CROSSNET_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command of the tree, depth first, with its context (names as typed)."""
    yield cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))


def _roff(text: str) -> str:
    """Plain text for roff: backslashes escaped, non-ASCII as \\[uXXXX], no line starting
    with a dot or quote."""
    text = text.replace("\\", "\\e")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    return "\n".join(("\\&" + line if line[:1] in (".", "'") else line) for line in text.splitlines())


def _paragraphs(cmd: click.Command) -> list[tuple[bool, str]]:
    """(verbatim, text) paragraphs of a command's help; click's ``\\b`` marks a verbatim one."""
    import inspect

    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(cmd.help or cmd.short_help or "")):
        verbatim = para.startswith("\b")
        text = para.lstrip("\b").strip("\n")
        if text.strip():
            out.append((verbatim, text if verbatim else " ".join(text.split())))
    return out


def _help(cmd: click.Command) -> str:
    return "\n\n".join(text for _, text in _paragraphs(cmd))


def _section(cmd: click.Command, ctx: click.Context, heading: str) -> list[str]:
    out = [heading]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out += [".PP", f"\\fB{_roff(ctx.command_path)}\\fR {_roff(usage)}"]
    for verbatim, para in _paragraphs(cmd):
        out += [".PP", ".nf", _roff(para), ".fi"] if verbatim else [".PP", _roff(para)]
    opts = [p.get_help_record(ctx) for p in cmd.get_params(ctx)]
    for rec in [r for r in opts if r]:
        out += [".TP", f"\\fB{_roff(rec[0])}\\fR", _roff(rec[1] or "")]
    if isinstance(cmd, click.Group):
        subs = [n for n in cmd.list_commands(ctx) if (c := cmd.get_command(ctx, n)) is not None and not c.hidden]
        out += [".PP", "Commands: " + ", ".join(f"\\fB{_roff(ctx.command_path)} {n}\\fR" for n in subs) + "."]
    return out


def _header(name: str, summary: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("crossnet")
    except PackageNotFoundError:
        ver = ""
    day = datetime.date.today().isoformat()
    return [f'.TH "{name.upper()}" "1" "{day}" "crossnet {ver}" "crossnet manual"',
            ".SH NAME", f"{_roff(name)} \\- {_roff(summary)}"]


def man_page(root: click.Command, ctx: click.Context) -> str:
    """crossnet(1): the top command, then every command as a subsection."""
    out = _header(PROG, "connect containers on different hosts into one network")
    items = list(walk(root, ctx))
    out += _section(root, ctx, ".SH SYNOPSIS AND OPTIONS")
    out.append(".SH COMMANDS")
    for cmd, sub in items[1:]:
        out += _section(cmd, sub, f".SS {_roff(sub.command_path)}")
    out += [".SH SEE ALSO", "The documentation in docs/ of the crossnet sources (docs/operations.md)."]
    return "\n".join(out) + "\n"


def command_pages(root: click.Command, ctx: click.Context) -> dict[str, str]:
    """crossnet-CMD(1) per command ("crossnet lab up" -> crossnet-lab-up.1)."""
    pages = {}
    for cmd, sub in list(walk(root, ctx))[1:]:
        name = sub.command_path.replace(" ", "-")
        first = (_help(cmd).split("\n", 1)[0] or name).rstrip(".")
        lines = _header(name, first) + _section(cmd, sub, ".SH SYNOPSIS AND OPTIONS")
        lines += [".SH SEE ALSO", f"\\fB{PROG}\\fR(1)"]
        pages[f"{name}.1"] = "\n".join(lines) + "\n"
    return pages


def completion_script(root: click.Command, shell: str) -> str:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None, shell
    return cls(root, {}, PROG, COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh, fish).

    \b
    bash: crossnet completion bash > /etc/bash_completion.d/crossnet
    zsh:  crossnet completion zsh > "${fpath[1]}/_crossnet"
    fish: crossnet completion fish > ~/.config/fish/completions/crossnet.fish
    """
    click.echo(completion_script(ctx.find_root().command, shell), nl=False)


@click.command("man")
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write crossnet.1 and one crossnet-CMD.1 per command into this directory "
                   "instead of printing crossnet.1.")
@click.pass_context
def man(ctx: click.Context, out_dir: str | None) -> None:
    """Print the crossnet(1) man page (roff), generated from the commands themselves.

    \b
    crossnet man > /usr/local/share/man/man1/crossnet.1 && man crossnet
    """
    root_ctx = ctx.find_root()
    top = click.Context(root_ctx.command, info_name=PROG)
    page = man_page(root_ctx.command, top)
    if out_dir is None:
        click.echo(page, nl=False)
        return
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    pages = {f"{PROG}.1": page, **command_pages(root_ctx.command, top)}
    for name, text in pages.items():
        (d / name).write_text(text)
    click.echo(f"wrote {len(pages)} man page(s) to {d}")


def register(group: click.Group) -> None:
    group.add_command(completion)
    group.add_command(man)
