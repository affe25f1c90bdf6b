"""Starting, stopping and inspecting supervised units: what ``malacodactl`` calls.

:func:`start` launches the unit's monitor (:mod:`malacoda.supervisor.monitor`) and returns once the daemon
serves, or raises :class:`~malacoda.errors.ProcessError` carrying the daemon's own error.
:func:`stop` asks the monitor to run the stop sequence (or runs it itself on an unsupervised
daemon). :func:`status` combines the monitor's record, the registry and a ping into one state:

==========  =====================================================  ==========
state       meaning                                                LSB code
==========  =====================================================  ==========
running     registered, alive, answers a ping                      0
hung        registered and alive, but the ping timed out           4
starting    the monitor is starting or restarting it (backoff)     3
stale       records of a daemon or monitor that died (kill -9)     1
failed      the monitor gave up (start failed, start_limit hit)    3
stopped     not running                                            3
==========  =====================================================  ==========

Start and stop are idempotent, and two starts racing leave one daemon: the monitor lock decides.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import psutil

from malacoda.errors import ProcessError
from malacoda.host.files import private_dir, text_pipe
from malacoda.host.launch import python_command
from malacoda.host.paths import Paths, host_name
from malacoda.host.process import PST_INCOMPLETE, same_process
from malacoda.host.registry import Registry
from malacoda.supervisor.monitor import (
    package_env,
    read_record,
    read_word,
    status_dir,
    stop_sequence,
    write_record,
)
from malacoda.supervisor.units import Unit

LSB = {"running": 0, "stale": 1, "starting": 3, "failed": 3, "stopped": 3, "invalid": 3,
       "hung": 4}
DEFAULT_STOP_TIMEOUT = 10.0


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
        return LSB.get(self.state, 4)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def ping(name: str, timeout: float) -> bool:
    """True when the daemon ``name`` answers a ping within ``timeout`` seconds."""
    from malacoda.client.control import ping as ping_daemon

    return ping_daemon(name, timeout)


def status(name: str, paths: Optional[Paths] = None, ping_timeout: float = 2.0) -> UnitStatus:
    """The state of ``name`` on this host (see the module docstring)."""
    paths = paths or Paths.default()
    record = read_record(paths, name)
    monitor_alive = record is not None and record.monitor_alive()
    entry, registered = Registry(paths).read(name)
    result = UnitStatus(name=name, state="stopped")
    if record is not None:
        result.restarts = record.restarts
        result.last_exit = record.last_exit
        result.message = record.message
        result.pid = record.pid
        result.port = record.port
        if monitor_alive:
            result.monitor_pid = record.monitor_pid
            result.unit_digest = record.unit_digest
    if registered == "running" and entry is not None:
        result.pid, result.port = entry.pid, entry.port
        result.pst = str(entry.extra.get("pst") or "")
        result.state = "running" if ping(name, ping_timeout) else "hung"
        if not monitor_alive:
            result.message = result.message or "not supervised (no monitor)"
    elif monitor_alive:
        result.state = "starting"
    elif registered == "stale" or (record is not None and record.state in ("running", "starting")):
        result.state = "stale"
        if entry is not None:
            result.pid, result.port = entry.pid, entry.port
    elif record is not None and record.state == "failed":
        result.state = "failed"
    if result.state not in ("running", "hung", "stale"):
        result.pid = result.port = None
    if result.state in ("running", "hung") and result.pid is not None:
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
        if result.pid is not None and result.state in ("running", "hung"):
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
    return sorted(names)


def clean_stale(name: str, paths: Optional[Paths] = None) -> bool:
    """Forget a dead daemon's registry entry and a dead monitor's record; True if any."""
    paths = paths or Paths.default()
    cleaned = Registry(paths).clean_stale(name)
    record = read_record(paths, name)
    if record is not None and record.state in ("running", "starting") and not record.monitor_alive():
        record.state, record.pid, record.port = "stopped", None, None
        record.message = "cleaned up after a monitor that died"
        write_record(paths, record)
        cleaned = True
    return cleaned


def start(unit: Unit, paths: Optional[Paths] = None) -> Tuple[str, UnitStatus]:
    """Start ``unit`` under a monitor; ``("started" | "already running", status)``.

    Returns once the daemon is ready; raises :class:`ProcessError` with the daemon's own error
    when it cannot start. Requirements (``requires``) are the caller's to start first.
    """
    paths = paths or Paths.default()
    current = status(unit.name, paths)
    if current.state in ("running", "hung"):
        return "already running", current
    if current.state == "starting":
        return "already running", _wait_started(unit, paths)
    clean_stale(unit.name, paths)
    private_dir(paths.log)
    read_fd, write_fd = os.pipe()
    unit_fd = text_pipe(unit.text)  # the unit as loaded here (a hand-over: as it ran)
    env = package_env(dict(os.environ))
    try:
        log_fd = os.open(paths.log_file(unit.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log_file:
            starter = subprocess.Popen(
                python_command("malacoda.monitor", [str(unit.file), str(write_fd), str(unit_fd)]),
                pass_fds=(write_fd, unit_fd), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=log_file, env=env, start_new_session=True,
            )
    finally:
        os.close(write_fd)
        os.close(unit_fd)
    try:
        starter.wait(timeout=30)
        word, detail = read_word(read_fd, _start_wait(unit))
    finally:
        os.close(read_fd)
    if word == "READY":
        return "started", status(unit.name, paths)
    if word == "ALREADY":
        return "already running", _wait_started(unit, paths)
    if word == "FAILED":
        raise ProcessError(f"{unit.name} did not start: {detail}")
    said = "did not answer in time" if word is None else "exited without a word"
    raise ProcessError(f"{unit.name} did not start: its monitor {said}; "
                       f"see 'malacodactl logs {unit.name}'")


def _start_wait(unit: Unit) -> float:
    """How long a start may take to end, either way: a daemon not ready in ``start_timeout`` is
    then stopped, which may take ``stop_timeout``; plus a margin for the monitor itself."""
    return unit.start_timeout + unit.stop_timeout + 10


def _wait_started(unit: Unit, paths: Paths) -> UnitStatus:
    """Wait for a start someone else began; its outcome is ours."""
    began = time.time()
    deadline = time.monotonic() + _start_wait(unit)
    while True:
        current = status(unit.name, paths)
        if current.state in ("running", "hung"):
            return current
        record = read_record(paths, unit.name)
        # An outcome recorded before we began is the previous run's, not this start's.
        final = record is not None and record.updated >= began - 0.01 \
            and current.state in ("failed", "stopped", "stale")
        if final or time.monotonic() > deadline:
            raise ProcessError(f"{unit.name} did not start: {current.state}"
                               + (f" ({current.message})" if current.message else ""))
        time.sleep(0.05)


def stop(name: str, paths: Optional[Paths] = None,
         stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> str:
    """Stop ``name``: ``"stopped"``, or ``"not running"`` when there was nothing to stop, or
    ``"stopped, but …"`` when the daemon's final pst save was incomplete (its monitor saw the
    exit code :data:`~malacoda.host.process.PST_INCOMPLETE`; the text names the attribute)."""
    paths = paths or Paths.default()
    did = False
    incomplete = ""
    record = read_record(paths, name)
    if record is not None and record.monitor_alive() and record.monitor_pid is not None \
            and record.monitor_start is not None:
        did = True
        pid, started = record.monitor_pid, record.monitor_start
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, started, os.geteuid(), stop_timeout + 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, started, os.geteuid(), 5)
        after = read_record(paths, name)
        if after is not None and after.last_exit == {"code": PST_INCOMPLETE} \
                and after.message.startswith("stopped, but "):
            incomplete = after.message
    entry, registered = Registry(paths).read(name)
    if registered == "running" and entry is not None:  # a daemon without a monitor
        did = True
        pid, started, uid = entry.pid, entry.start_time, entry.uid
        stop_sequence(name, pid, stop_timeout, lambda s: _wait_gone(pid, started, uid, s))
        if not _wait_gone(pid, started, uid, 1):
            raise ProcessError(f"{name} (pid {pid}) is still alive after SIGKILL")
    clean_stale(name, paths)
    record = read_record(paths, name)
    if did and record is not None and record.state != "stopped":
        record.state, record.pid, record.port, record.message = "stopped", None, None, "stopped"
        write_record(paths, record)
    if record is not None and record.state == "failed":
        record.state, record.message = "stopped", "reset by stop"
        write_record(paths, record)
    return incomplete or ("stopped" if did else "not running")


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
            name=m.name, state="running", pid=m.pid, port=m.port, restarts=None,
            uptime=max(0.0, now - m.start_time),
            message=f"registered from {m.host} by user {m.user}, malacoda {m.version}")))
    return rows


def cluster_to_json(rows: List[Tuple[str, UnitStatus]]) -> str:
    return json.dumps([{"name": s.name, "host": host, **s.as_dict()} for host, s in rows], indent=2)
