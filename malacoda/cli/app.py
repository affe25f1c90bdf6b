"""``malacodactl``: the click group, how a library error becomes one line and an exit code
(:mod:`.common` lists the codes), and the entry point. The commands are in :mod:`.unitcmds`
(units and their processes) and :mod:`.calls` (a daemon's methods and attributes); ``keys`` is
imported when used.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, List, Optional

import click

from malacoda.cli import calls, unitcmds
from malacoda.cli.common import FAILED, Context, cli_keys, exit_code, fail
from malacoda.cli.terminal import visible
from malacoda.errors import MalacodaError
from malacoda.version import __version__


def _set_unit_path(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    if value is not None:
        ctx.find_object(Context).unit_path = value  # type: ignore[union-attr]


def _unit_path_option() -> click.Option:
    """``--unit-path`` after the subcommand too: ``malacodactl check X --unit-path DIRS``."""
    return click.Option(["--unit-path"], expose_value=False, callback=_set_unit_path,
                        metavar="DIRS", help="Folders searched first for NAME.toml (':'-separated).")


def _reader_left() -> None:
    """stdout's reader is gone (``status --all | head -1``): end as other tools do, quietly,
    by SIGPIPE; nothing more is written to the closed pipe."""
    import os
    import signal

    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


class Group(click.Group):
    """Library errors become one line on stderr and an exit code, never a traceback."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | {"keys"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name == "keys" and "keys" not in self.commands:  # imported when used
            self.add_command(cli_keys.keys)
        return super().get_command(ctx, cmd_name)

    def add_command(self, cmd: click.Command, name: Optional[str] = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(_unit_path_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _reader_left()
        except MalacodaError as exc:
            fail(str(exc), exit_code(exc))
        except OSError as exc:
            fail(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", FAILED)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--unit-path", envvar="MALACODA_UNIT_PATH", metavar="DIRS",
              help="Folders searched first for NAME.toml (':'-separated).")
@click.option("-v", "--verbose", is_flag=True, help="Show remote tracebacks and more detail.")
@click.version_option(__version__, "--version", prog_name="malacodactl")
@click.pass_context
def cli(ctx: click.Context, unit_path: Optional[str], verbose: bool) -> None:
    """Start, watch, stop and talk to Malacoda daemons."""
    ctx.obj = Context(unit_path, verbose)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(malacodactl completion bash)". Exit 0."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "malacodactl", "_MALACODACTL_COMPLETE").source())




for _command in (unitcmds.start, unitcmds.stop, unitcmds.restart, unitcmds.reload,
                 unitcmds.status, unitcmds.logs, unitcmds.run, unitcmds.systemd_unit,
                 unitcmds.host_supervisor, unitcmds.check, unitcmds.paths,
                 calls.call, calls.watch, calls.get, calls.set_, calls.describe):
    cli.add_command(_command)


class _VisibleFormatter(logging.Formatter):
    """Log records on stderr with control characters made visible: a warning may quote etcd."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), newlines=True)


def main(argv: Optional[List[str]] = None) -> None:
    """The ``malacodactl`` entry point."""
    handler = logging.StreamHandler()
    handler.setFormatter(_VisibleFormatter("malacodactl: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    cli.main(args=argv, prog_name="malacodactl")
