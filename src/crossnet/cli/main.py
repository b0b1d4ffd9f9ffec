"""Top-level `crossnet` command. Each command group lives in its own module under
crossnet.cli and is registered in COMMAND_MODULES; a module exposes `register(main)`."""

from __future__ import annotations

import importlib
import os
import sys

import click

from crossnet.errors import ConfigError, CrossnetError

# module path -> the top-level commands its register(group) adds. Modules are imported
# only when one of their commands runs (or for --help), so `crossnet attach` does not pay
# for the lab, bench or rich imports.
COMMAND_MODULES = {
    "crossnet.cli.host": ("apply", "reset", "attach", "detach", "status", "check", "gc"),
    "crossnet.cli.lab": ("lab",),  # lab up/down/exec/demo/check/list
    "crossnet.cli.trace": ("trace",),  # trace SRC DST [--verify] (`lab trace` is in crossnet.cli.lab)
    "crossnet.cli.cni": ("cni", "docker-config", "docker-plugin"),
    "crossnet.cli.agent": ("agent", "etcd"),
    "crossnet.cli.bench": ("bench",),
    "crossnet.cli.wg": ("keygen",),  # WireGuard key of this host (backend wireguard)
    "crossnet.cli.mesh": ("launch", "stop", "forget", "token"),
    "crossnet.cli.dns": ("dns",),  # dns serve (no agent: this host's containers' names)
    "crossnet.cli.systemd": ("systemd",),  # systemd install|uninstall (crossnet.units)
    "crossnet.cli.completion": ("completion", "man"),  # generated from this command tree
    "crossnet.cli.expose": ("expose", "hide"),  # this host's address in the network (crossnet.expose)
    "crossnet.cli.uninstall": ("uninstall",),  # remove what scripts/install added (crossnet.uninstall)
    "crossnet.cli.validate": ("validate",),  # validate -f FILE: offline (crossnet.validate)
}


class LazyGroup(click.Group):
    """A click group that imports a command's module the first time it is needed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def _load(self, modname: str) -> None:
        if modname in self._loaded:
            return
        self._loaded.add(modname)
        importlib.import_module(modname).register(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for modname, names in COMMAND_MODULES.items():
            if cmd_name in names:
                self._load(modname)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for modname in COMMAND_MODULES:
            self._load(modname)
        return super().list_commands(ctx)


DEFAULT_STATE_DIR = "/var/lib/crossnet"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--state-dir",
    envvar="CROSSNET_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where crossnet keeps this host's state (applied config, IPAM). Env: CROSSNET_STATE_DIR.",
)
@click.version_option(package_name="crossnet")
@click.pass_context
def cli(ctx: click.Context, state_dir: str) -> None:
    """crossnet connects containers on different hosts into one network.

    \b
    Typical use on each host:
      crossnet apply -f cluster.yaml          configure this host (idempotent)
      crossnet attach mycontainer             give a container (netns) an address
      crossnet status / crossnet check        see what is programmed, test reachability
    Try it on one machine with simulated hosts:
      crossnet lab demo --hosts 3 --backend vxlan
    """
    from crossnet.state import root_problem

    why = root_problem(state_dir)
    if why is not None:
        raise ConfigError(f"--state-dir (env CROSSNET_STATE_DIR): {why}")
    ctx.ensure_object(dict)
    ctx.obj["state_dir"] = state_dir


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def usage_line(exc: click.UsageError) -> str:
    """Click's 3-4 line usage error as one line: `attach: missing argument 'CONTAINER'
    (see crossnet attach --help)`."""
    msg = _one_line(exc.format_message()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    path = exc.ctx.command_path if exc.ctx is not None else "crossnet"
    sub = path.partition(" ")[2]
    return f"{sub + ': ' if sub else ''}{msg} (see {path} --help)"


def _fail(message: str, code: int, as_json: bool, option: str | None = None) -> None:
    """The one error line on stderr, and with -o json the error object on stdout (docs/json.md)."""
    if as_json:
        from crossnet.cli.contract import error_json

        click.echo(error_json(message, code, option))
    click.echo(f"crossnet: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    from crossnet.cli.contract import normalize, wants_json

    argv = normalize(sys.argv[1:] if argv is None else list(argv))
    as_json = wants_json(argv)
    try:
        cli.main(args=argv, prog_name="crossnet", standalone_mode=False)
    except click.exceptions.Abort:
        if as_json:
            from crossnet.cli.contract import error_json

            click.echo(error_json("aborted", 130))
        click.echo("crossnet: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `crossnet` / `crossnet lab`: the help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # bad arguments/options: one line, exit 2 (--help is unchanged)
        param = getattr(exc, "param", None)
        _fail(usage_line(exc), 2, as_json, (param.opts[0] if getattr(param, "opts", None) else None))
    except click.ClickException as exc:
        _fail(_one_line(exc.format_message()), exc.exit_code, as_json)
    except CrossnetError as exc:
        _fail(str(exc), exc.exit_code, as_json)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # a bug: one line by default, the traceback on request
        from crossnet.optdeps import missing

        err = missing(exc) if isinstance(exc, ModuleNotFoundError) else None
        if err is not None:  # an optional package not installed: say which (crossnet.optdeps)
            _fail(str(err), err.exit_code, as_json)
        if os.environ.get("CROSSNET_DEBUG"):
            raise
        if as_json:
            from crossnet.cli.contract import error_json

            click.echo(error_json(f"internal error: {type(exc).__name__}: {exc}", 70))
        click.echo(f"crossnet: internal error: {type(exc).__name__}: {exc} (set CROSSNET_DEBUG=1 for a traceback)", err=True)
        sys.exit(70)
