"""``malacodactl``: the command line. It parses, calls the library and formats; nothing more.

Exit codes (the README's CLI reference lists them per command): 0 success, 1 the operation
failed (a start that failed, a remote exception), 2 bad input (usage, unit file, literal),
3 not running, 4 no answer (timeout, busy, lost connection). ``status`` follows LSB instead:
0 running, 1 stale, 3 not running, 4 unknown or hung.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import click

from malacoda.cli.terminal import visible
from malacoda.errors import (
    AccessDenied,
    CommunicationError,
    ConfigError,
    LookupFailed,
)


class _Later:
    """A module imported when it is first used: ``malacodactl --version`` (and every command)
    pays only for the modules it uses (``psutil``, ``zmq`` and the rest are not imported to
    print a version or a usage error)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from malacoda import address
    from malacoda.cli import hosts as cli_hosts
    from malacoda.cli import keys as cli_keys
    from malacoda.cli import streams as cli_streams
    from malacoda.client import control
    from malacoda.host import paths as host_paths
    from malacoda.supervisor import logfile, supervise, units
else:
    address = _Later("malacoda.address")
    cli_hosts = _Later("malacoda.cli.hosts")
    cli_keys = _Later("malacoda.cli.keys")
    cli_streams = _Later("malacoda.cli.streams")
    control = _Later("malacoda.client.control")
    host_paths = _Later("malacoda.host.paths")
    logfile = _Later("malacoda.supervisor.logfile")
    supervise = _Later("malacoda.supervisor.supervise")
    units = _Later("malacoda.supervisor.units")

OK, FAILED, BAD_INPUT, NOT_RUNNING, NO_ANSWER = 0, 1, 2, 3, 4


class Context:
    """What every command shares: the unit search path, verbosity and the folders."""

    def __init__(self, unit_path: Optional[str], verbose: bool) -> None:
        self.unit_path = unit_path
        self.verbose = verbose
        self.raw = False  # --raw: print what came from daemons, logs and etcd as it is
        self._paths: Optional[host_paths.Paths] = None

    @property
    def paths(self) -> host_paths.Paths:
        if self._paths is None:
            self._paths = host_paths.Paths.default()
        return self._paths

    def shown(self, text: str, newlines: bool = True) -> str:
        """``text`` from a daemon, a log or etcd as it is printed: control characters made
        visible (:func:`~.terminal.visible`) unless ``--raw``."""
        return text if self.raw else visible(text, newlines)

    def echo(self, text: str, newlines: bool = True) -> None:
        """Print :meth:`shown` ``text`` (with ``--raw`` exactly as it is: click would strip
        ANSI sequences from it when stdout is not a terminal)."""
        click.echo(self.shown(text, newlines), color=True if self.raw else None)

    @property
    def search(self) -> List[Path]:
        return units.search_path(self.unit_path, self.paths)

    def unit(self, name: str) -> units.Unit:
        return units.load(local_name(name), self.search)


pass_ctx = click.make_pass_decorator(Context)


def target(text: str) -> address.Spec:
    """Every command's NAME goes through here: ``NAME[:HOST][:PORT]`` → a :class:`Spec`."""
    return address.parse(text)


def local_name(text: str) -> str:
    """The NAME of a command that acts on this host's processes and files."""
    spec = target(text)
    if spec.host is not None or spec.port is not None:
        raise ConfigError(f"{text!r}: this command works on units of this host; give NAME only")
    return spec.name


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, LookupFailed):
        return NOT_RUNNING
    if isinstance(exc, (ConfigError, AccessDenied)):
        return BAD_INPUT
    if isinstance(exc, CommunicationError):
        return NO_ANSWER
    return FAILED


def complain(message: str) -> None:
    """One error line on stderr; control characters made visible, even with ``--raw``: an
    error message may quote a daemon, a log or etcd."""
    click.echo(f"malacodactl: {visible(message, newlines=True)}", err=True)


def fail(message: str, code: int) -> None:
    complain(message)
    sys.exit(code)


def complete_units(ctx: click.Context, param: click.Parameter, incomplete: str) -> List[str]:
    unit_path = ctx.find_root().params.get("unit_path")
    names = set(units.names(units.search_path(unit_path))) | set(supervise.known_names())
    return sorted(n for n in names if n.startswith(incomplete))


NAME = click.argument("name", shell_complete=complete_units)
NAMES = click.argument("names", nargs=-1, shell_complete=complete_units)
ALL = click.option("--all", "all_", is_flag=True, help="Every unit in the unit search path.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def _set_raw(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, Context):
        ctx.obj.raw = True


RAW = click.option("--raw", is_flag=True, expose_value=False, callback=_set_raw,
                   help="Print what came from the daemon, its log or etcd as it is (control "
                        "characters not made visible).")
TIMEOUT = click.option("--timeout", type=float, default=None, metavar="S",
                       help="Give up after S seconds (exit 4).")
