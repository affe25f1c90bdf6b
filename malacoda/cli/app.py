"""``malacodactl``: the command line. It parses, calls the library and formats; nothing more.

Exit codes (the README's CLI reference lists them per command): 0 success, 1 the operation
failed (a start that failed, a remote exception), 2 bad input (usage, unit file, literal),
3 not running, 4 no answer (timeout, busy, lost connection). ``status`` follows LSB instead:
0 running, 1 stale, 3 not running, 4 unknown or hung.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from malacoda.cli.terminal import visible, visible_json
from malacoda.cli.values import ValueArgs
from malacoda.errors import (
    AccessDenied,
    CommunicationError,
    ConfigError,
    LookupFailed,
    MalacodaError,
    RemoteError,
)
from malacoda.version import __version__


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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--unit-path", envvar="MALACODA_UNIT_PATH", metavar="DIRS",
              help="Folders searched first for NAME.toml (':'-separated).")
@click.option("-v", "--verbose", is_flag=True, help="Show remote tracebacks and more detail.")
@click.version_option(__version__, "--version", prog_name="malacodactl")
@click.pass_context
def cli(ctx: click.Context, unit_path: Optional[str], verbose: bool) -> None:
    """Start, watch, stop and talk to Malacoda daemons."""
    ctx.obj = Context(unit_path, verbose)


# ---------------------------------------------------------------------- start / stop / status

def _selected(c: Context, names: Sequence[str], all_: bool) -> List[units.Unit]:
    if all_ == bool(names):
        raise click.UsageError("give unit NAMEs or --all (not both)")
    if all_:
        found = units.names(c.search)
        if not found:
            raise ConfigError("no unit files in " + ", ".join(str(f) for f in c.search))
        names = found
    return [c.unit(name) for name in names]


def _warn_secrets(unit: units.Unit) -> None:
    warning = units.secrets_warning(unit)
    if warning:
        complain(warning)


def _start_units(c: Context, order: List[units.Unit], verb: str) -> None:
    """Start ``order`` (from :func:`units.ordered`: requirements first) in the host supervisor,
    side by side; a unit whose requirement did not start is not started. Exits with the worst
    code."""
    for unit in order:
        _warn_secrets(unit)
    code = OK
    for row in supervise.start_many(order, c.paths):
        name, outcome = row["name"], row["outcome"]
        if outcome == "not started":
            complain(f"{name} not started: {row['detail']}")
            code = max(code, FAILED)
        elif outcome not in ("started", "already running"):
            complain(f"{name} did not start: {row['detail']}")
            code = max(code, FAILED)
        else:
            click.echo(f"{name} {verb if outcome == 'started' else outcome} "
                       f"(pid {row['pid']}, port {row['port']})")
    sys.exit(code)


@cli.command()
@NAMES
@ALL
@pass_ctx
def start(c: Context, names: Tuple[str, ...], all_: bool) -> None:
    """Start units (and what they require) under the host supervisor, side by side; returns
    once they serve (the supervisor is started first when it is not running).

    Exit 0 when all run, 1 when one failed to start (its error is printed), 2 bad unit.
    """
    chosen = _selected(c, names, all_)
    _start_units(c, units.ordered({u.name: u for u in chosen}, c.search), "started")


def _known_or_fail(c: Context, name: str, what: str = "") -> None:
    """A NAME that is neither a unit nor a daemon known here is a typo: say where we looked."""
    if name in supervise.known_names(c.paths):
        return
    try:
        units.find(name, c.search)
    except ConfigError:
        raise LookupFailed(f"{what}unknown name {name!r}: no unit file {name}.toml in "
                          f"{', '.join(str(f) for f in c.search)}, and no daemon of that name "
                          "runs or ran here") from None


def _stop_order(c: Context, names: List[str]) -> List[Tuple[str, float]]:
    loaded: Dict[str, units.Unit] = {}
    for name in names:
        try:
            loaded[name] = c.unit(name)
        except ConfigError:
            pass
    try:
        order = [u.name for u in reversed(units.ordered(loaded, c.search)) if u.name in names]
    except ConfigError:  # a broken 'requires' must not keep anything from stopping
        order = []
    order += [n for n in names if n not in order]
    return [(n, loaded[n].stop_timeout if n in loaded else supervise.DEFAULT_STOP_TIMEOUT)
            for n in order]


@cli.command()
@NAMES
@ALL
@pass_ctx
def stop(c: Context, names: Tuple[str, ...], all_: bool) -> None:
    """Stop daemons: ask them (pst saved), then SIGTERM, then SIGKILL after stop_timeout.

    Many stop side by side in the host supervisor (a unit after those that require it).

    NAME:HOST stops NAME on HOST (over SSH). Stopping what is not running succeeds. Exit 0, or
    1 when a daemon could not be stopped or stopped with its final pst save incomplete (an
    attribute that cannot be saved: the message names it; the others were saved).
    """
    if all_ == bool(names):
        raise click.UsageError("give unit NAMEs or --all (not both)")
    local, remote = cli_hosts.split_names(names)
    for name in local:
        _known_or_fail(c, name)
    chosen = local if names else sorted(
        set(units.names(c.search)) | set(supervise.known_names(c.paths)))
    failed = False
    for name, outcome in supervise.stop_many(_stop_order(c, chosen), c.paths,
                                             everything=all_) if chosen else []:
        if outcome.startswith("stopped, but "):  # its final pst save was incomplete
            complain(f"{name} {outcome}")
            failed = True
        elif outcome.startswith("error: "):
            complain(f"{name}: {outcome[len('error: '):]}")
            failed = True
        elif names or outcome == "stopped":
            click.echo(visible(f"{name} {outcome}"))
    code = max([cli_hosts.stop_there(host, there) for host, there in remote.items()], default=OK)
    sys.exit(max(code, FAILED if failed else OK))


@cli.command()
@NAMES
@ALL
@pass_ctx
def restart(c: Context, names: Tuple[str, ...], all_: bool) -> None:
    """Stop, then start units. Exit codes as for start."""
    chosen = _selected(c, names, all_)
    order = units.ordered({u.name: u for u in chosen}, c.search)  # a bad 'requires': none stop
    supervise.stop_many(_stop_order(c, [u.name for u in chosen]), c.paths)
    _start_units(c, order, "restarted")


@cli.command()
@pass_ctx
def reload(c: Context) -> None:
    """Re-read every unit file: automatic restarts run them as they are now (a running daemon
    goes on as it is; 'restart' applies a change at once). Exit 0, 2 when a file is invalid."""
    loaded, code = [], OK
    for name in units.names(c.search):
        try:
            loaded.append(c.unit(name))
        except ConfigError as exc:
            complain(str(exc))
            code = BAD_INPUT
    for row in supervise.reload(loaded, c.paths):
        click.echo(f"{row['name']} {row['outcome']}")
    sys.exit(code)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _exit_text(last: Optional[Dict[str, Any]]) -> str:
    if not last:
        return "-"
    return ", ".join(f"{k} {v}" if k == "code" else str(v) for k, v in last.items())


@cli.command()
@NAMES
@ALL
@JSON
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="Show HOST's daemons (over SSH) instead of this host's; repeatable.")
@click.option("--ping-timeout", type=float, default=2.0, metavar="S",
              help="A daemon that does not answer a ping in S seconds is 'hung'.")
@click.option("--cluster", is_flag=True,
              help="Every daemon in the cluster registry (etcd), with its host.")
@RAW
@pass_ctx
def status(c: Context, names: Tuple[str, ...], all_: bool, hosts: Tuple[str, ...],
           as_json: bool, ping_timeout: float, cluster: bool) -> None:
    """Show state, pid, port, uptime, cpu, memory, restarts and last exit of daemons.

    Without NAMEs, every unit and every daemon known on this host. NAME:HOST, or --host HOST
    (repeatable; with NAMEs, those NAMEs there), shows other hosts over SSH in the same table
    (or JSON list), with a host column; with --all --cluster, every daemon registered in the
    cluster, with its host (cpu, memory and restarts of other hosts' daemons are shown on those
    hosts only). Exit codes follow LSB: 0 running, 1 stale, 3 not running (stopped, failed,
    starting), 4 unknown or hung; with several units, the highest.
    """
    if cluster:
        if names or hosts:
            raise click.UsageError("--cluster lists every daemon of the cluster: give --all, no "
                                   "NAMEs nor --host")
        rows = supervise.cluster_statuses(c.paths, ping_timeout)
        if as_json:
            click.echo(supervise.cluster_to_json(rows))
        else:
            _status_table(c, [(r, host) for host, r in rows])
        sys.exit(max((r.code for _, r in rows), default=NOT_RUNNING))
    local, remote = cli_hosts.split_names(names, hosts)
    results: List[Tuple[str, supervise.UnitStatus]] = []
    code = OK
    if local or not (names or hosts):
        known = set(units.names(c.search)) | set(supervise.known_names(c.paths))
        unknown = [name for name in local if name not in known]
        for name in unknown:
            complain(f"unknown unit {name!r}: no unit file, no record, no daemon of that name")
        chosen = [n for n in local if n in known] if local else sorted(known)
        here, supervised = supervise.statuses_here_or_there(chosen, c.paths, ping_timeout)
        if not supervised and any(r.state in ("running", "hung", "stale") for r in here):
            complain("the host supervisor is not running: states from the registry and the "
                     "status records (the next start, stop or restart starts it)")
        found = _mark_units(c, here)
        results += [(host_paths.host_name(), r) for r in found]
        code = max([r.code for _, r in results] + [4] * bool(unknown), default=NOT_RUNNING)
    for host, there in remote.items():
        try:
            found, status_code = cli_hosts.remote_statuses(host, there, ping_timeout)
        except MalacodaError as exc:  # one host that cannot be asked is a row, not an abort
            complain(str(exc))
            found = [supervise.UnitStatus(name=n, state="unreachable", restarts=None,
                                          message=str(exc)) for n in (there or ["*"])]
            status_code = NO_ANSWER
        results += [(host, r) for r in found]
        code = max(code, status_code)
    if as_json:
        click.echo(supervise.cluster_to_json(results) if remote else
                   supervise.to_json([r for _, r in results]))
    else:
        _status_table(c, [(r, host if remote else None) for host, r in results])
    sys.exit(code if results or code else NOT_RUNNING)


def _mark_units(c: Context, found: List[supervise.UnitStatus]) -> List[supervise.UnitStatus]:
    """A unit whose file cannot be loaded is ``invalid`` (with the error) unless its daemon
    runs; one that runs from a file changed since it started says so."""
    for r in found:
        try:
            file = units.find(r.name, c.search)
        except ConfigError:
            continue  # no unit file: a daemon started otherwise
        if r.unit_digest and r.state in ("running", "hung", "starting"):
            try:  # the same text as the supervisor loaded (and checked): nothing to mark
                if units.digest(file.read_text(encoding="utf-8")) == r.unit_digest:
                    continue
            except (OSError, UnicodeDecodeError):
                pass
        try:
            unit = units.load_file(file)
        except ConfigError as exc:
            if r.state in ("stopped", "failed"):
                r.state, r.message = "invalid", str(exc)
            else:
                r.changed = True
                r.message = f"the unit file changed since it started and no longer loads: {exc}"
            continue
        if r.state in ("running", "hung", "starting") and r.unit_digest \
                and r.unit_digest != units.digest(unit.text):
            r.changed = True
            r.message = r.message or "the unit file changed since it started: 'restart' applies it"
    return found


def _status_table(c: Context, results: List[Tuple[supervise.UnitStatus, Optional[str]]]) -> None:
    """The status table; a HOST column when the rows carry hosts (``--cluster``). Names, hosts
    and messages may come from etcd or another host: each cell is shown on one line."""
    hosts = any(host is not None for _, host in results)
    rows = [("NAME", *(("HOST",) if hosts else ()), "STATE", "PID", "PORT", "UPTIME", "CPU%", "RSS",
             "RESTARTS", "LAST EXIT")]
    for r, host in results:
        rows.append(tuple(c.shown(str(cell), newlines=False) for cell in (
            r.name, *((host or "-",) if hosts else ()), r.state, str(r.pid or "-"),
            str(r.port or "-"), _duration(r.uptime), "-" if r.cpu is None else f"{r.cpu:.1f}",
            _size(r.rss), "-" if r.restarts is None else str(r.restarts),
            _exit_text(r.last_exit))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        c.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), newlines=False)
    for r, host in results:
        if r.message and (c.verbose or r.state in ("invalid", "unreachable") or r.changed):
            c.echo(f"{r.name}{':' + host if host else ''}: {r.message}", False)
        if r.pst:  # always: state that a restart would lose
            c.echo(f"{r.name}{':' + host if host else ''}: {r.pst}", False)


# ---------------------------------------------------------------------- talking to a daemon

def _remote(c: Context, action: Callable[[], Any]) -> Any:
    """Run ``action``; an exception the daemon raised exits 1 with its type and message."""
    try:
        return action()
    except MalacodaError as exc:
        if not isinstance(exc, RemoteError):
            raise
        detail = exc.remote_traceback
        message = f"{exc.remote_type}: {exc.remote_message}"
    except Exception as exc:  # the remote method's own built-in exception, re-raised here
        detail = getattr(exc, "remote_traceback", "")
        message = f"{type(exc).__name__}: {exc}"
    complain(f"remote {visible(message)}")  # one line, whatever the message holds
    if c.verbose and detail:
        click.echo(visible(detail.rstrip(), newlines=True), err=True)
    sys.exit(FAILED)


def public_name(name: str) -> str:
    """METHOD or ATTR of call/get/set: a public name of the daemon's, checked before anything
    is sent (``__class__`` would otherwise be the local proxy's own)."""
    if name.startswith("_") or not name.isidentifier():
        raise ConfigError(f"{name!r} is private or not a name: only public names (no leading "
                          "'_', no dots) are reachable; see 'malacodactl describe NAME'")
    return name


def _proxy(name: str, timeout: Optional[float]) -> Any:
    from malacoda.client.proxy import Proxy

    return Proxy(str(target(name)), timeout=timeout)


@cli.command(cls=ValueArgs)
@NAME
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--kw", "kwargs", multiple=True, metavar="K=V", help="A keyword argument (repeat).")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def call(c: Context, name: str, method: str, args: Tuple[str, ...], kwargs: Tuple[str, ...],
         timeout: Optional[float], as_json: bool) -> None:
    """Call METHOD of the daemon NAME with ARGs (Python literals, else strings); print the result.

    Exit 0, 1 the method raised (type and message printed), 2 bad input, 3 not running,
    4 no answer in time.
    """
    public_name(method)
    values = [control.parse_value(a) for a in args]
    keywords: Dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--kw {item!r}: write it as NAME=VALUE")
        keywords[key] = control.parse_value(value)
    with _proxy(name, timeout) as proxy:
        try:
            result = _remote(c, lambda: getattr(proxy, method)(*values, **keywords))
        except KeyboardInterrupt:
            sys.exit(cli_streams.INTERRUPTED)
        if isinstance(result, cli_streams.RemoteIterator):  # a generator: items as they come
            cli_streams.follow(result, as_json, c.raw, lambda loop: _remote(c, loop))
            return
    _print_value(c, result, as_json)


@cli.command()
@NAME
@click.argument("what", metavar="TOPIC|ATTR")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def watch(c: Context, name: str, what: str, timeout: Optional[float], as_json: bool) -> None:
    """Print the events of the daemon NAME as they come: the new value of its attribute ATTR
    at each change (its value now first), or else the events published under TOPIC (a prefix:
    each as a map of topic, value and missed). Ctrl-C ends it (exit 130)."""
    if what.startswith("_"):
        raise ConfigError(f"{what!r} is private: topics and attributes starting with '_' are "
                          "not reachable")
    with _proxy(name, timeout) as proxy:
        try:
            attributes = proxy._describe().get("attributes", [])
            if what.isidentifier() and what in attributes:
                stream = _remote(c, lambda: proxy.watch(what))
            else:
                stream = _remote(c, lambda: proxy.subscribe(what))
        except KeyboardInterrupt:
            sys.exit(cli_streams.INTERRUPTED)
        cli_streams.follow(stream, as_json, c.raw, lambda loop: _remote(c, loop))


def _print_value(c: Context, value: Any, as_json: bool) -> None:
    text = control.as_text(value, as_json)
    if as_json and not c.raw:
        text = visible_json(text)  # then nothing is left for visible() to change
    c.echo(text)


@cli.command()
@NAME
@click.argument("attr")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def get(c: Context, name: str, attr: str, timeout: Optional[float], as_json: bool) -> None:
    """Print the attribute ATTR of the daemon NAME. Exit codes as for call."""
    from malacoda.client.proxy import request
    from malacoda.wire import protocol as p

    public_name(attr)
    with _proxy(name, timeout) as proxy:
        result = _remote(c, lambda: request(proxy, p.GET, attr, None, timeout))
    _print_value(c, result, as_json)


@cli.command(name="set", cls=ValueArgs)
@NAME
@click.argument("attr")
@click.argument("value")
@TIMEOUT
@pass_ctx
def set_(c: Context, name: str, attr: str, value: str, timeout: Optional[float]) -> None:
    """Set the attribute ATTR of the daemon NAME to VALUE (a literal, else a string).

    Exit codes as for call.
    """
    public_name(attr)
    parsed = control.parse_value(value)
    with _proxy(name, timeout) as proxy:
        _remote(c, lambda: setattr(proxy, attr, parsed))


@cli.command()
@NAME
@TIMEOUT
@JSON
@RAW
@pass_ctx
def describe(c: Context, name: str, timeout: Optional[float], as_json: bool) -> None:
    """List the methods (signatures, docstrings) and attributes of the daemon NAME.

    Exit codes as for call.
    """
    import inspect

    with _proxy(name, timeout) as proxy:
        info = control.describe(proxy)
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        c.echo(f"{info['name']}  ({info['class']}, malacoda {info['version']})", False)
        if info.get("doc"):
            c.echo("    " + str(info["doc"]).replace("\n", "\n    "))
        click.echo("\nmethods:")
        for method in info["methods"]:
            signature = inspect.signature(getattr(proxy, method))
            doc = info["methods"][method].get("doc") or ""
            c.echo(f"  {method}{signature}", False)
            if doc:
                c.echo("      " + str(doc).replace("\n", "\n      "))
        click.echo("\nattributes:")
        for attr in info["attributes"]:
            c.echo(f"  {attr}", False)


@cli.command()
@NAME
@click.option("-n", "lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the last N lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (across rotation).")
@click.option("--host", metavar="HOST", help="The log on HOST (over SSH); or name NAME:HOST.")
@RAW
@pass_ctx
def logs(c: Context, name: str, lines: int, follow: bool, host: Optional[str]) -> None:
    """Print the daemon's log: its stdout, stderr and logging, timestamped.

    Exit 0, 3 when NAME has no log on this host (or HOST). With -f, until interrupted (exit 0).
    """
    local, remote = cli_hosts.split_names((name,), (host,) if host else ())
    if len(remote) > 1:
        raise ConfigError(f"{name!r} names a host already: drop --host {host}, or name NAME only")
    for where, [there] in remote.items():
        sys.exit(cli_hosts.logs_there(where, there, lines, follow, c.raw))
    name = local[0]
    path = c.paths.log_file(name)
    if not path.exists():
        _known_or_fail(c, name, f"no log for {name!r}: ")
        raise LookupFailed(f"no log for {name!r} on this host (expected {path})")
    _note_unsupervised(c, name)
    for line in logfile.tail(path, lines):
        c.echo(line, newlines=False)
    if follow:
        try:
            for line in logfile.follow(path, stop=_reader_gone):
                c.echo(line, newlines=False)
        except KeyboardInterrupt:
            pass


def _note_unsupervised(c: Context, name: str) -> None:
    """Say so when ``name``'s record says it runs under a supervisor that is gone (killed): its
    log is still written (by the daemon itself), but nobody restarts it until one is started."""
    from malacoda.supervisor.monitor import read_record

    record = read_record(c.paths, name)
    if record is not None and record.state in ("running", "starting") \
            and not supervise.supervisor_running(c.paths):
        complain("the host supervisor is not running: the next start, stop or restart starts "
                 "it (and it adopts the daemons left running)")


def _reader_gone() -> bool:
    """True when nobody reads our stdout any more (``logs -f`` run over SSH whose client left)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
        return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------- systemd, checks, paths

@cli.command()
@NAME
@pass_ctx
def run(c: Context, name: str) -> None:
    """Run the unit NAME in the foreground (for systemd: Type=notify, SIGTERM stops it).

    Exit 0 after a stop, 1 when the daemon failed, 2 bad unit, 74 stopped but its final pst
    save was incomplete (the error names the attribute).
    """
    from malacoda.supervisor import runner as runner
    from malacoda.supervisor import systemd as systemd

    unit = c.unit(name)
    units.check_class(unit)
    state = {"ready": False}

    def ready(entry: Any) -> None:
        state["ready"] = True
        systemd.notify(f"READY=1\nMAINPID={entry.pid}\n"
                       f"STATUS=serving on {entry.address}:{entry.port}")

    try:
        instance = runner.run_unit(unit, [ready])
    except MalacodaError:
        raise
    except Exception as exc:
        if state["ready"] or c.verbose:
            traceback.print_exc()
        fail(f"{unit.name} failed: {runner.describe_error(exc)}", FAILED)
    incomplete = getattr(instance, "_malacoda_pst_incomplete", "")
    if incomplete:
        fail(f"{unit.name} stopped, but {incomplete}", runner.PST_INCOMPLETE)


@cli.command(name="systemd")
@click.argument("name", required=False, shell_complete=complete_units)
@click.option("--supervisor", "host_supervisor", is_flag=True,
              help="The host supervisor's service instead of one unit's.")
@pass_ctx
def systemd_unit(c: Context, name: Optional[str], host_supervisor: bool) -> None:
    """Print a systemd service (Type=notify) that runs the unit NAME, or with --supervisor the
    host supervisor. Exit 0, or 2 bad unit."""
    from malacoda.supervisor import systemd as systemd

    if host_supervisor == bool(name):
        raise click.UsageError("give a unit NAME or --supervisor (not both)")
    if host_supervisor:
        click.echo(systemd.supervisor_unit(), nl=False)
        return
    assert name is not None
    click.echo(systemd.service_unit(c.unit(name)), nl=False)


@cli.command(name="supervisor")
def host_supervisor() -> None:
    """Run the host supervisor in the foreground (systemd: Type=notify; SIGTERM ends it and
    leaves the daemons running). Exit 0, 1 when one runs already or it failed."""
    import os

    from malacoda.host.launch import python_command
    from malacoda.supervisor.monitor import SUPERVISOR_MODULE

    argv = python_command(SUPERVISOR_MODULE, ["--foreground"])
    os.execv(argv[0], argv)  # the same pid (systemd's MAINPID), its module in the command line


@cli.command()
@NAMES
@pass_ctx
def check(c: Context, names: Tuple[str, ...]) -> None:
    """Validate unit files (all, without NAMEs) and import their classes; start nothing.

    Exit 0 when all are valid, 2 otherwise (each problem printed on one line).
    """
    chosen = [local_name(n) for n in names] or units.names(c.search)
    if not chosen:
        fail("no unit files in " + ", ".join(str(f) for f in c.search), BAD_INPUT)
    code = OK
    for name in chosen:
        try:
            unit = c.unit(name)
            units.check_class(unit)
            units.ordered({unit.name: unit}, c.search)
        except ConfigError as exc:
            complain(str(exc))
            code = BAD_INPUT
            continue
        _warn_secrets(unit)
        click.echo(f"{name}: ok ({unit.file})")
    sys.exit(code)


@cli.command()
@JSON
@pass_ctx
def paths(c: Context, as_json: bool) -> None:
    """Print the folders Malacoda uses here and the unit search path. Exit 0."""
    data: Dict[str, Any] = c.paths.as_dict()
    data["unit_search_path"] = [str(p) for p in c.search]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ":".join(value)
        click.echo(f"{key:<17} {value}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(malacodactl completion bash)". Exit 0."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "malacodactl", "_MALACODACTL_COMPLETE").source())




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
