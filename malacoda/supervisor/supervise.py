"""Starting, stopping and inspecting supervised units: what ``malacodactl`` calls.

:func:`start` / :func:`start_many` ask the host supervisor (:mod:`malacoda.supervisor.host`, started by
:func:`ensure_supervisor` when none runs) to start units, and return once the daemons serve or
with the daemon's own error. :func:`stop` / :func:`stop_many` ask it to run the stop sequence
(a daemon no supervisor runs is stopped here: :func:`stop_here`). :func:`status` combines the
supervisor's record of a unit, the registry and a ping into one state; the supervisor answers
:func:`statuses_here_or_there` in one call, and without it the files are read here:

The states and their LSB codes are :class:`~.states.UnitState`.

Start and stop are idempotent, and two starts racing leave one daemon: the supervisor holds one
start per unit.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import psutil

from malacoda.errors import ProcessError
from malacoda.host.files import private_dir
from malacoda.host.launch import python_command
from malacoda.host.paths import Paths, host_name, known_fields
from malacoda.host.process import same_process
from malacoda.host.registry import EntryState, Registry
from malacoda.supervisor.monitor import (
    SUPERVISOR_MODULE,
    SUPERVISOR_NAME,
    package_env,
    read_record,
    read_word,
    status_dir,
    stop_sequence,
    write_record,
)
from malacoda.supervisor.states import LSB, UnitState
from malacoda.supervisor.units import DEFAULT_STOP_TIMEOUT, Unit

#: A record in one of these states means its supervisor runs (or ran) the daemon.
ACTIVE = (UnitState.RUNNING, UnitState.STARTING)


@dataclass
class UnitStatus:
    """One unit's state as ``status`` shows it (``--json`` prints these fields)."""

    name: str
    state: str
    pid: Optional[int] = None
    port: Optional[int] = None
    uptime: Optional[float] = None
    cpu: Optional[float] = None
    rss: Optional[int] = None
    restarts: Optional[int] = 0  # None: not known here (another host's daemon)
    last_exit: Optional[Dict[str, Any]] = None
    monitor_pid: Optional[int] = None
    message: str = ""
    changed: bool = False  # the unit file changed since the daemon started (restart applies it)
    unit_digest: str = ""  # units.digest() of the unit as the monitor loaded it
    pst: str = ""  # the pst attributes the daemon's last save could not save ("" when none)

    @property
    def code(self) -> int:
        """The LSB ``status`` exit code of this state."""
        return LSB.get(self.state, 4)  # type: ignore[call-overload]  # (a state from another host may be one we do not know)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def ping(name: str, timeout: float) -> bool:
    """True when the daemon ``name`` answers a ping within ``timeout`` seconds."""
    from malacoda.client.control import ping as ping_daemon

    return ping_daemon(name, timeout)


def status(name: str, paths: Optional[Paths] = None, ping_timeout: float = 2.0,
           pinger: Optional[Callable[[str, float], bool]] = None) -> UnitStatus:
    """The state of ``name`` on this host (see the module docstring). ``pinger(name, timeout)``
    pings the daemon (default: :func:`ping`, through a new connection)."""
    paths = paths or Paths.default()
    record = read_record(paths, name)
    monitor_alive = record is not None and record.monitor_alive()
    entry, registered = Registry(paths).read(name)
    result = UnitStatus(name=name, state=UnitState.STOPPED)
    if record is not None:
        result.restarts = record.restarts
        result.last_exit = record.last_exit
        result.message = record.message
        result.pid = record.pid
        result.port = record.port
        if monitor_alive:
            result.monitor_pid = record.monitor_pid
            result.unit_digest = record.unit_digest
    if registered == EntryState.RUNNING and entry is not None:
        result.pid, result.port = entry.pid, entry.port
        result.pst = str(entry.extra.get("pst") or "")
        result.state = UnitState.RUNNING if (pinger or ping)(name, ping_timeout) else UnitState.HUNG
        if not monitor_alive:
            result.message = result.message or "not supervised (no supervisor runs it)"
    elif monitor_alive and record is not None and record.state in ACTIVE:
        result.state = UnitState.STARTING
    elif registered == EntryState.STALE or (record is not None and record.state in ACTIVE):
        result.state = UnitState.STALE
        if entry is not None:
            result.pid, result.port = entry.pid, entry.port
    elif record is not None and record.state == UnitState.FAILED:
        result.state = UnitState.FAILED
    if result.state not in (UnitState.RUNNING, UnitState.HUNG, UnitState.STALE):
        result.pid = result.port = None
    if result.state in (UnitState.RUNNING, UnitState.HUNG) and result.pid is not None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(result.pid)
            result.uptime = round(time.time() - proc.create_time(), 1)
            result.rss = proc.memory_info().rss
    return result


def statuses(names: List[str], paths: Optional[Paths] = None,
             ping_timeout: float = 2.0) -> List[UnitStatus]:
    """:func:`status` of each name, with cpu % measured over one short common interval.

    Up to :data:`SIDE_BY_SIDE` names are looked at at once, so hung daemons cost about one
    ``ping_timeout`` together rather than one each.
    """
    paths = paths or Paths.default()
    results = _side_by_side(lambda name: status(name, paths, ping_timeout), names)
    procs: Dict[int, psutil.Process] = {}
    for result in results:
        if result.pid is not None and result.state in (UnitState.RUNNING, UnitState.HUNG):
            with contextlib.suppress(psutil.Error):
                procs[result.pid] = psutil.Process(result.pid)
                procs[result.pid].cpu_percent(None)
    if procs:
        time.sleep(0.1)
        for result in results:
            if result.pid in procs:
                with contextlib.suppress(psutil.Error):
                    result.cpu = round(procs[result.pid].cpu_percent(None), 1)
    return results


SIDE_BY_SIDE = 4  # statuses found at once (each mostly waits for its daemon's ping reply)

_T = TypeVar("_T")


def _side_by_side(fn: Callable[[str], _T], names: List[str]) -> List[_T]:
    """``[fn(name) for name in names]``, up to :data:`SIDE_BY_SIDE` calls at once; the first
    exception any of them raised is raised here."""
    if len(names) < 2:
        return [fn(name) for name in names]
    results: Dict[int, _T] = {}
    errors: List[BaseException] = []
    todo = iter(enumerate(names))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            try:
                results[item[0]] = fn(item[1])
            except BaseException as exc:  # re-raised by the caller's thread below
                errors.append(exc)

    threads = [threading.Thread(target=work, name="malacoda-status", daemon=True)
               for _ in range(min(SIDE_BY_SIDE, len(names)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(names))]


def known_names(paths: Optional[Paths] = None) -> List[str]:
    """Names with a status record or a registry entry on this host."""
    paths = paths or Paths.default()
    names = set(Registry(paths).names())
    folder = status_dir(paths)
    if folder.is_dir():
        names.update(p.stem for p in folder.glob("*.json"))
    names.discard(SUPERVISOR_NAME)
    return sorted(names)


def clean_stale(name: str, paths: Optional[Paths] = None) -> bool:
    """Forget a dead daemon's registry entry and a dead supervisor's record; True if any."""
    paths = paths or Paths.default()
    cleaned = Registry(paths).clean_stale(name)
    record = read_record(paths, name)
    if record is not None and record.state in ACTIVE and not record.monitor_alive():
        record.state, record.pid, record.port = UnitState.STOPPED, None, None
        record.message = "cleaned up after a supervisor that died"
        write_record(paths, record)
        cleaned = True
    return cleaned


# ---------------------------------------------------------------------- the host supervisor

def supervisor_running(paths: Optional[Paths] = None) -> bool:
    """True when this host's (this ``MALACODA_HOME``'s) supervisor is registered and alive."""
    _, state = Registry(paths or Paths.default()).read(SUPERVISOR_NAME)
    return state == EntryState.RUNNING


def ensure_supervisor(paths: Optional[Paths] = None, timeout: float = 60.0) -> None:
    """Start the host supervisor, detached, unless it runs; return once it serves."""
    paths = paths or Paths.default()
    if supervisor_running(paths):
        return
    private_dir(paths.log)
    read_fd, write_fd = os.pipe()
    env = package_env(dict(os.environ))
    try:
        log_fd = os.open(paths.log_file(SUPERVISOR_NAME),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log_file:
            starter = subprocess.Popen(
                python_command(SUPERVISOR_MODULE, [str(write_fd)]), pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                start_new_session=True)
    finally:
        os.close(write_fd)
    try:
        starter.wait(timeout=30)
        word, detail = read_word(read_fd, timeout)
    finally:
        os.close(read_fd)
    if word == "READY":
        return
    if word == "ALREADY":  # another command started it at the same time: wait for it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if supervisor_running(paths):
                return
            time.sleep(0.02)
    said = detail or ("did not answer in time" if word is None else "exited without a word")
    raise ProcessError(f"the host supervisor did not start: {said}; see "
                       f"{paths.log_file(SUPERVISOR_NAME)}")


def end_supervisor(paths: Optional[Paths] = None, timeout: float = 10.0) -> None:
    """End the host supervisor, if one runs (its daemons go on: stop them first)."""
    paths = paths or Paths.default()
    entry, state = Registry(paths).read(SUPERVISOR_NAME)
    if state != EntryState.RUNNING or entry is None:
        return
    with _supervisor(timeout=timeout) as sup:
        sup.stop()
    _wait_gone(entry.pid, entry.start_time, entry.uid, timeout)


def _supervisor(timeout: Optional[float] = None) -> Any:
    from malacoda.client.proxy import Proxy

    return Proxy(SUPERVISOR_NAME, timeout=timeout)


def _given(unit: Unit) -> Dict[str, str]:
    return {"file": str(unit.file), "text": unit.text}


def start_many(order: List[Unit], paths: Optional[Paths] = None) -> List[Dict[str, Any]]:
    """Start ``order`` (requirements first) in the host supervisor (started if need be), side
    by side; one result per unit (see :meth:`~malacoda.supervisor.host.HostSupervisor.start_units`)."""
    from malacoda.supervisor.host import start_wait

    paths = paths or Paths.default()
    ensure_supervisor(paths)
    with _supervisor(timeout=sum(start_wait(u) for u in order) + 30) as sup:
        return list(sup.start_units([_given(u) for u in order], dict(os.environ)))


def start(unit: Unit, paths: Optional[Paths] = None) -> Tuple[str, UnitStatus]:
    """Start ``unit`` under the host supervisor; ``("started" | "already running", status)``.

    Returns once the daemon is ready; raises :class:`ProcessError` with the daemon's own error
    when it cannot start. Requirements (``requires``) are the caller's to start first.
    """
    paths = paths or Paths.default()
    [row] = start_many([unit], paths)
    if row["outcome"] in ("started", "already running"):
        return row["outcome"], status(unit.name, paths)
    raise ProcessError(f"{unit.name} did not start: {row['detail']}")


def reload(loaded: List[Unit], paths: Optional[Paths] = None) -> List[Dict[str, Any]]:
    """Hand the units as loaded now to the supervisor: automatic restarts run them."""
    if not supervisor_running(paths):
        return [{"name": u.name, "outcome": "not supervised"} for u in loaded]
    with _supervisor() as sup:
        return list(sup.reload_units([_given(u) for u in loaded]))


def stop_many(order: List[Tuple[str, float]], paths: Optional[Paths] = None,
              everything: bool = False) -> List[Tuple[str, str]]:
    """Stop the daemons ``order`` names (``(name, stop_timeout)``, dependents first) side by
    side in the supervisor; ``(name, outcome)`` each, outcomes as :func:`stop` returns them.

    Without a supervisor running, one is started only when one of them is alive (it adopts
    it first); the rest needs none.
    """
    paths = paths or Paths.default()
    if not supervisor_running(paths):
        registry = Registry(paths)
        if not any(registry.read(name)[1] == EntryState.RUNNING for name, _ in order):
            return [(name, stop_here(name, paths, timeout)) for name, timeout in order]
        ensure_supervisor(paths)
    with _supervisor(timeout=sum(2 * t + 20 for _, t in order) + 30) as sup:
        rows = sup.stop_units([n for n, _ in order], {n: t for n, t in order}, everything)
    if everything:  # an on-demand supervisor left with nothing ends: wait for it
        deadline = time.monotonic() + 10
        while supervisor_running(paths) and time.monotonic() < deadline:
            time.sleep(0.02)
    return [(row["name"], row["outcome"]) for row in rows]


def stop(name: str, paths: Optional[Paths] = None,
         stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> str:
    """Stop ``name``: ``"stopped"``, or ``"not running"`` when there was nothing to stop, or
    ``"stopped, but …"`` when the daemon's final pst save was incomplete (its supervisor saw
    the exit code :data:`~malacoda.host.process.PST_INCOMPLETE`; the text names the attribute)."""
    [(_, outcome)] = stop_many([(name, stop_timeout)], paths)
    if outcome.startswith("error: "):
        raise ProcessError(outcome[len("error: "):])
    return outcome


def stop_here(name: str, paths: Paths, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> str:
    """Stop a daemon no supervisor thread runs (started otherwise, e.g. library-style) through
    its registry entry, and tidy its records: ``"stopped"`` or ``"not running"``."""
    did = False
    entry, registered = Registry(paths).read(name)
    if registered == EntryState.RUNNING and entry is not None:
        did = True
        pid, started, uid = entry.pid, entry.start_time, entry.uid
        stop_sequence(name, pid, stop_timeout, lambda s: _wait_gone(pid, started, uid, s))
        if not _wait_gone(pid, started, uid, 1):
            raise ProcessError(f"{name} (pid {pid}) is still alive after SIGKILL")
    clean_stale(name, paths)
    record = read_record(paths, name)
    if did and record is not None and record.state != UnitState.STOPPED:
        record.state, record.pid, record.port, record.message = UnitState.STOPPED, None, None, "stopped"
        write_record(paths, record)
    if record is not None and record.state == UnitState.FAILED:
        record.state, record.message = UnitState.STOPPED, "reset by stop"
        write_record(paths, record)
    return "stopped" if did else "not running"


def statuses_here_or_there(names: List[str], paths: Optional[Paths] = None,
                           ping_timeout: float = 2.0) -> Tuple[List[UnitStatus], bool]:
    """The status of ``names``: from the supervisor in one call when it runs, else from the
    records, the registry and pings here. ``(rows, supervised)``."""
    paths = paths or Paths.default()
    if supervisor_running(paths):
        from malacoda.errors import MalacodaError

        try:
            with _supervisor(timeout=ping_timeout + 30) as sup:
                rows = sup.status_units(list(names), ping_timeout)
            return [UnitStatus(**known_fields(UnitStatus, row)) for row in rows], True
        except MalacodaError:
            pass  # gone since: answer from the files
    return statuses(names, paths, ping_timeout), False


def _wait_gone(pid: int, started: float, uid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the process ``(pid, started, uid)`` to end; True if it has."""
    deadline = time.monotonic() + timeout
    while True:
        if not same_process(pid, started, uid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def to_json(results: List[UnitStatus]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=2)


def cluster_statuses(paths: Optional[Paths] = None,
                     ping_timeout: float = 2.0) -> List[Tuple[str, UnitStatus]]:
    """``(host, status)`` of every daemon in the cluster registry, sorted by name and host.

    This host's daemons get their full status, as ``status`` shows it. Another host's are shown
    as they registered: ``running`` (their lease is alive) with pid, port and uptime; cpu, memory,
    restarts and last exit are known on that host only and left empty (None).
    """
    from malacoda import cluster

    here = host_name()
    members = cluster.list_daemons()
    mine = statuses(sorted({m.name for m in members if m.host == here}), paths, ping_timeout)
    local = {s.name: s for s in mine}
    now = time.time()
    rows: List[Tuple[str, UnitStatus]] = []
    for m in members:
        if m.host == here:
            rows.append((m.host, local[m.name]))
            continue
        rows.append((m.host, UnitStatus(
            name=m.name, state=UnitState.RUNNING, pid=m.pid, port=m.port, restarts=None,
            uptime=max(0.0, now - m.start_time),
            message=f"registered from {m.host} by user {m.user}, malacoda {m.version}")))
    return rows


def cluster_to_json(rows: List[Tuple[str, UnitStatus]]) -> str:
    return json.dumps([{"name": s.name, "host": host, **s.as_dict()} for host, s in rows], indent=2)
