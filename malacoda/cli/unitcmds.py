"""``malacodactl start``, ``stop``, ``restart``, ``reload``, ``status``, ``logs``, ``run``,
``systemd``, ``supervisor``, ``check`` and ``paths``: units and the processes that run them.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from malacoda.cli.common import (
    ALL,
    BAD_INPUT,
    FAILED,
    JSON,
    NAME,
    NAMES,
    NO_ANSWER,
    NOT_RUNNING,
    OK,
    RAW,
    Context,
    cli_hosts,
    complain,
    complete_units,
    fail,
    host_paths,
    local_name,
    logfile,
    pass_ctx,
    supervise,
    units,
)
from malacoda.cli.table import status_table
from malacoda.cli.terminal import visible
from malacoda.errors import (
    ConfigError,
    LookupFailed,
    MalacodaError,
)
from malacoda.supervisor.states import UnitState

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


@click.command()
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


@click.command()
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


@click.command()
@NAMES
@ALL
@pass_ctx
def restart(c: Context, names: Tuple[str, ...], all_: bool) -> None:
    """Stop, then start units. Exit codes as for start."""
    chosen = _selected(c, names, all_)
    order = units.ordered({u.name: u for u in chosen}, c.search)  # a bad 'requires': none stop
    supervise.stop_many(_stop_order(c, [u.name for u in chosen]), c.paths)
    _start_units(c, order, "restarted")


@click.command()
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


@click.command()
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
            status_table(c, [(r, host) for host, r in rows])
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
        alive = (UnitState.RUNNING, UnitState.HUNG, UnitState.STALE)
        if not supervised and any(r.state in alive for r in here):
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
            found = [supervise.UnitStatus(name=n, state=UnitState.UNREACHABLE, restarts=None,
                                          message=str(exc)) for n in (there or ["*"])]
            status_code = NO_ANSWER
        results += [(host, r) for r in found]
        code = max(code, status_code)
    if as_json:
        click.echo(supervise.cluster_to_json(results) if remote else
                   supervise.to_json([r for _, r in results]))
    else:
        status_table(c, [(r, host if remote else None) for host, r in results])
    sys.exit(code if results or code else NOT_RUNNING)


def _mark_units(c: Context, found: List[supervise.UnitStatus]) -> List[supervise.UnitStatus]:
    """A unit whose file cannot be loaded is ``invalid`` (with the error) unless its daemon
    runs; one that runs from a file changed since it started says so."""
    for r in found:
        try:
            file = units.find(r.name, c.search)
        except ConfigError:
            continue  # no unit file: a daemon started otherwise
        if r.unit_digest and r.state in (UnitState.RUNNING, UnitState.HUNG, UnitState.STARTING):
            try:  # the same text as the supervisor loaded (and checked): nothing to mark
                if units.digest(file.read_text(encoding="utf-8")) == r.unit_digest:
                    continue
            except (OSError, UnicodeDecodeError):
                pass
        try:
            unit = units.load_file(file)
        except ConfigError as exc:
            if r.state in (UnitState.STOPPED, UnitState.FAILED):
                r.state, r.message = UnitState.INVALID, str(exc)
            else:
                r.changed = True
                r.message = f"the unit file changed since it started and no longer loads: {exc}"
            continue
        if r.state in (UnitState.RUNNING, UnitState.HUNG, UnitState.STARTING) and r.unit_digest \
                and r.unit_digest != units.digest(unit.text):
            r.changed = True
            r.message = r.message or "the unit file changed since it started: 'restart' applies it"
    return found


@click.command()
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
    if record is not None and record.state in (UnitState.RUNNING, UnitState.STARTING) \
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

@click.command()
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


@click.command(name="systemd")
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


@click.command(name="supervisor")
def host_supervisor() -> None:
    """Run the host supervisor in the foreground (systemd: Type=notify; SIGTERM ends it and
    leaves the daemons running). Exit 0, 1 when one runs already or it failed."""
    import os

    from malacoda.host.launch import python_command
    from malacoda.supervisor.monitor import SUPERVISOR_MODULE

    argv = python_command(SUPERVISOR_MODULE, ["--foreground"])
    os.execv(argv[0], argv)  # the same pid (systemd's MAINPID), its module in the command line


@click.command()
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


@click.command()
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
