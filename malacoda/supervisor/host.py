"""The host supervisor: one per user per host (per ``MALACODA_HOME``), itself a Malacoda daemon.

It is the parent of every unit's daemon. Each unit runs in a :class:`~malacoda.supervisor.monitor.Monitor`
thread of this one process (start over a readiness pipe, restart policy, ``start_timeout`` and
``stop_timeout``, the stop sequence), so supervising N units costs one process, not N. Being a
:class:`~malacoda.Malacoda` daemon named :data:`~malacoda.supervisor.monitor.SUPERVISOR_NAME`, it is
reached through the registry and a proxy like any daemon, with everything a daemon has for free:
owner-only access, bounded input, readiness. ``malacodactl`` asks it to start, stop and report
units (:meth:`HostSupervisor.start_units`, :meth:`~HostSupervisor.stop_units`,
:meth:`~HostSupervisor.status_units`, :meth:`~HostSupervisor.reload_units`); many units start
and stop side by side (a unit waits only for what it ``requires``).

Nothing a daemon needs goes through the supervisor once the daemon is ready: the daemon writes
its own log (:func:`malacoda.supervisor.logfile.capture`), its registry entry and pidfile are its own. So
``kill -9`` of the supervisor leaves every daemon serving and logging; the next supervisor
(started by the next ``malacodactl`` command that needs one, or by systemd) *adopts* them from
their status records and registry entries (pid and process start time checked), keeps their
restart counts (``pst_units``, and the records) and supervises them from then on: an adopted
daemon that exits is restarted by its policy, its exit code unknown (it is not our child).

Started by :func:`malacoda.supervisor.supervise.ensure_supervisor` (``python -m malacoda.supervisor.host FD``:
detached, readiness on ``FD``, its output in ``<log>/malacoda-supervisor.log``; it ends
after :data:`IDLE_EXIT` seconds with nothing to supervise, or at once after ``stop --all``)
or in the foreground by ``malacodactl supervisor`` (``--foreground``: readiness to systemd's
``$NOTIFY_SOCKET``; it then stays). Stopping the supervisor (SIGTERM) leaves the daemons
running: ``malacodactl stop`` stops those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

from malacoda.daemon import options
from malacoda.daemon.base import Malacoda
from malacoda.daemon.options import RunOptions
from malacoda.errors import AlreadyRunning, ConfigError
from malacoda.host.files import private_dir
from malacoda.host.paths import Paths
from malacoda.host.process import process_start_time
from malacoda.host.registry import Entry, EntryState, Registry
from malacoda.supervisor import logfile
from malacoda.supervisor.monitor import (
    SUPERVISOR_NAME,
    Adopted,
    Monitor,
    Record,
    read_record,
    status_dir,
    write_record,
)
from malacoda.supervisor.states import UnitState
from malacoda.supervisor.units import Unit, digest, load_file

log = logging.getLogger(__name__)

#: Seconds an on-demand supervisor with nothing to supervise waits before it ends.
IDLE_EXIT = 60.0
#: Seconds between two samples of every daemon's cpu and rss.
SAMPLE_EVERY = 1.0
OK_OUTCOMES = ("started", "already running")


class Run:
    """One unit under supervision: its monitor, the monitor's thread and its first outcome."""

    def __init__(self) -> None:
        self.monitor: Optional[Monitor] = None
        self.thread: Optional[threading.Thread] = None
        self.word = ""
        self.told = threading.Event()

    def tell(self, message: str) -> None:
        self.word = message
        self.told.set()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def start_wait(unit: Unit) -> float:
    """How long a start may take to end, either way: a daemon not ready in ``start_timeout`` is
    then stopped, which may take ``stop_timeout``; plus a margin."""
    return unit.start_timeout + unit.stop_timeout + 10


class HostSupervisor(Malacoda):
    """The host supervisor (see the module docstring)."""

    def __init__(self, on_demand: bool = False) -> None:
        self.pst_units: Dict[str, Dict[str, Any]] = {}  # name → restarts, last_exit
        self._runs: Dict[str, Run] = {}
        self._lock = threading.RLock()
        self._adopted = threading.Event()
        self._samples: Dict[int, Tuple[Optional[float], Optional[int]]] = {}
        self._procs: Dict[int, psutil.Process] = {}
        self._pingers: Dict[str, Any] = {}  # name → a Proxy kept for pings
        self._on_demand = on_demand
        self._idle_since = time.monotonic()
        self._paths = Paths.default()
        super().__init__(name=SUPERVISOR_NAME, workers=16, queue=256,
                         pst_config={"frequency": 2})

    # ------------------------------------------------------------------ what the CLI calls

    def start_units(self, units: List[Dict[str, str]],
                    env: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
        """Start units given as ``{"file": path, "text": its text as loaded}``, side by side;
        a unit waits for the ones it ``requires`` among them, and is not started when one of
        them did not start. One result per unit: ``name``, ``outcome`` (``started``,
        ``already running``, ``failed``, ``not started``), ``pid``, ``port``, ``detail``."""
        self._adopted.wait(30)
        loaded = [load_file(Path(u["file"]), u["text"]) for u in units]
        events = {u.name: threading.Event() for u in loaded}
        results: Dict[str, Dict[str, Any]] = {}

        def one(unit: Unit) -> None:
            try:
                failed = []
                for req in unit.requires:
                    if req in events:
                        events[req].wait()
                        if results[req]["outcome"] not in OK_OUTCOMES:
                            failed.append(req)
                if failed:
                    results[unit.name] = {
                        "name": unit.name, "outcome": "not started", "pid": None, "port": None,
                        "detail": f"it requires {', '.join(failed)}, which did not start"}
                else:
                    results[unit.name] = self._start_one(unit, env)
            except Exception as exc:  # reported in its row; the others go on
                log.exception("starting %s", unit.name)
                results[unit.name] = {"name": unit.name, "outcome": "failed", "pid": None,
                                      "port": None, "detail": f"{type(exc).__name__}: {exc}"}
            finally:
                events[unit.name].set()

        _side_by_side(one, loaded)
        return [results[u.name] for u in loaded]

    def stop_units(self, names: List[str], timeouts: Optional[Dict[str, float]] = None,
                   everything: bool = False) -> List[Dict[str, Any]]:
        """Stop daemons side by side; one waits for those of ``names`` that require it. One
        result per name: ``name``, ``outcome`` (``stopped``, ``not running``, ``stopped, but
        …``, or an error). ``everything`` (``stop --all``): an on-demand supervisor left with
        nothing to supervise ends right after."""
        from malacoda.supervisor.supervise import DEFAULT_STOP_TIMEOUT

        self._adopted.wait(30)
        timeouts = timeouts or {}
        events = {name: threading.Event() for name in names}
        with self._lock:
            units = {n: r.monitor.unit for n, r in self._runs.items() if r.monitor is not None}
        dependents = {n: [m for m in names if m in units and n in units[m].requires]
                      for n in names}
        results: Dict[str, Dict[str, Any]] = {}

        def one(name: str) -> None:
            try:
                for other in dependents[name]:
                    events[other].wait()
                outcome = self._stop_one(name, float(timeouts.get(name, DEFAULT_STOP_TIMEOUT)))
                results[name] = {"name": name, "outcome": outcome}
            except Exception as exc:
                log.exception("stopping %s", name)
                results[name] = {"name": name, "outcome": f"error: {type(exc).__name__}: {exc}"}
            finally:
                events[name].set()

        _side_by_side(one, list(names))
        if everything and self._on_demand and not self._supervising():
            threading.Timer(0.1, self.stop).start()
        return [results[n] for n in names]

    def status_units(self, names: List[str], ping_timeout: float = 2.0) -> List[Dict[str, Any]]:
        """The status rows of ``names`` (:class:`~malacoda.supervisor.supervise.UnitStatus` fields). A unit
        supervised here is described from memory (its record, the last cpu/rss sample, taken
        every :data:`SAMPLE_EVERY` s) and pinged; any other name as ``status`` finds it."""
        from malacoda.supervisor.supervise import _side_by_side as some_at_once
        from malacoda.supervisor.supervise import status

        self._adopted.wait(30)

        def one(name: str) -> Dict[str, Any]:
            with self._lock:
                run = self._runs.get(name)
            if run is not None and run.alive() and run.monitor is not None:
                return self._row(run.monitor.record, ping_timeout)
            return status(name, self._paths, ping_timeout, self._ping).as_dict()

        return some_at_once(one, list(names))

    def _row(self, record: Record, ping_timeout: float) -> Dict[str, Any]:
        from malacoda.supervisor.supervise import UnitStatus

        row = UnitStatus(name=record.name, state=record.state, restarts=record.restarts,
                         last_exit=record.last_exit, monitor_pid=os.getpid(),
                         message=record.message, unit_digest=record.unit_digest)
        if record.state == UnitState.RUNNING and record.pid is not None:
            row.pid, row.port = record.pid, record.port
            row.uptime = round(time.time() - record.started, 1) if record.started else None
            row.cpu, row.rss = self._samples.get(record.pid, (None, None))
            entry, _ = Registry(self._paths).read(record.name)
            if entry is not None and entry.pid == record.pid:
                row.pst = str(entry.extra.get("pst") or "")
            row.state = UnitState.RUNNING if self._ping(record.name, ping_timeout) else UnitState.HUNG
        return row.as_dict()

    def reload_units(self, units: List[Dict[str, str]]) -> List[Dict[str, Any]]:
        """Take the units given (``{"file", "text"}``) as the ones an automatic restart runs
        from now on (a running daemon goes on as it is: ``restart`` applies a change now)."""
        self._adopted.wait(30)
        out = []
        for given in units:
            unit = load_file(Path(given["file"]), given["text"])
            with self._lock:
                run = self._runs.get(unit.name)
                if run is None or run.monitor is None or not run.alive():
                    out.append({"name": unit.name, "outcome": "not supervised"})
                    continue
                changed = run.monitor.unit.text != unit.text
                run.monitor.unit = unit
                run.monitor.save(unit=str(unit.file), text=unit.text, unit_digest=digest(unit.text))
            out.append({"name": unit.name, "outcome": "reloaded" if changed else "unchanged"})
        return out

    # ------------------------------------------------------------------ inside

    def _start_one(self, unit: Unit, env: Optional[Dict[str, str]]) -> Dict[str, Any]:
        from malacoda.supervisor.supervise import clean_stale

        paths = self._paths
        row: Dict[str, Any] = {"name": unit.name, "pid": None, "port": None, "detail": ""}
        with self._lock:
            run = self._runs.get(unit.name)
            existing = run is not None and run.alive()
            if not existing:
                entry, state = Registry(paths).read(unit.name)
                if state == EntryState.RUNNING and entry is not None:  # running, but not ours
                    return dict(row, outcome="already running", pid=entry.pid, port=entry.port)
                clean_stale(unit.name, paths)
                previous = read_record(paths, unit.name)
                record = Record(name=unit.name, unit=str(unit.file), monitor_pid=os.getpid(),
                                monitor_start=process_start_time(os.getpid()),
                                last_exit=previous.last_exit if previous else None,
                                unit_digest=digest(unit.text), text=unit.text)
                write_record(paths, record)
                run = Run()
                run.monitor = Monitor(unit, paths, run.tell, record, env)
                self._launch(run, None)
        assert run is not None
        if not run.told.wait(start_wait(unit)):
            return dict(row, outcome="failed", detail="its start did not end in time; see "
                                                      f"'malacodactl logs {unit.name}'")
        word, _, detail = run.word.partition(" ")
        if word == "READY":
            info = json.loads(detail)
            now = run.monitor.record if run.monitor is not None else None
            if existing and now is not None and now.state == UnitState.RUNNING:
                info = {"pid": now.pid, "port": now.port}  # now, after any restart
            return dict(row, outcome="already running" if existing else "started",
                        pid=info.get("pid"), port=info.get("port"))
        return dict(row, outcome="failed", detail=detail)

    def _launch(self, run: Run, adopted: Optional[Adopted]) -> None:
        assert run.monitor is not None
        run.thread = threading.Thread(target=self._supervise, args=(run, adopted),
                                      name=f"malacoda-unit-{run.monitor.unit.name}", daemon=True)
        self._runs[run.monitor.unit.name] = run
        run.thread.start()

    def _supervise(self, run: Run, adopted: Optional[Adopted]) -> None:
        monitor = run.monitor
        assert monitor is not None
        try:
            monitor.run(adopted)
        except Exception as exc:  # never silently: the unit's log and ours say why
            log.exception("supervising %s", monitor.unit.name)
            monitor.note(f"supervisor error: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                monitor.save(state=UnitState.FAILED, pid=None, port=None,
                             message=f"supervisor error: {type(exc).__name__}: {exc}")
            run.tell(f"FAILED supervisor error: {type(exc).__name__}: {exc}")
        finally:
            self._keep(monitor.record)
            self._idle_since = time.monotonic()

    def _keep(self, record: Record) -> None:
        """The pst copy of a unit's restart count and last exit."""
        now = {"restarts": record.restarts, "last_exit": record.last_exit}
        if self.pst_units.get(record.name) != now:
            self.pst_units = dict(self.pst_units, **{record.name: now})

    def _stop_one(self, name: str, timeout: float) -> str:
        from malacoda.host.process import PST_INCOMPLETE
        from malacoda.supervisor.supervise import stop_here

        with self._lock:
            run = self._runs.get(name)
        incomplete = ""
        did = False
        if run is not None and run.alive() and run.monitor is not None:
            did = True
            run.monitor.stopping.set()
            assert run.thread is not None
            run.thread.join(timeout + run.monitor.unit.stop_timeout + 15)
            record = run.monitor.record
            if record.last_exit == {"code": PST_INCOMPLETE} \
                    and record.message.startswith("stopped, but "):
                incomplete = record.message
        outcome = stop_here(name, self._paths, timeout)
        if incomplete:
            return incomplete
        return "stopped" if did else outcome

    def _ping(self, name: str, timeout: float) -> bool:
        """Ping ``name`` over a connection kept from one status to the next (a new one costs
        more than the ping); a daemon that does not answer gets a new one next time."""
        from malacoda.client.proxy import Proxy, close, request
        from malacoda.errors import MalacodaError
        from malacoda.wire import protocol

        with self._lock:
            proxy = self._pingers.pop(name, None)
        try:
            if proxy is None:
                proxy = Proxy(name)
            request(proxy, protocol.PING, None, None, timeout)
        except MalacodaError:
            if proxy is not None:
                with contextlib.suppress(Exception):
                    close(proxy)
            return False
        with self._lock:
            spare = self._pingers.setdefault(name, proxy)
        if spare is not proxy:  # two statuses at once: keep one connection
            with contextlib.suppress(Exception):
                close(proxy)
        return True

    def _supervising(self) -> bool:
        with self._lock:
            return any(r.alive() for r in self._runs.values())

    def _adopt(self) -> None:
        """Take over the daemons a supervisor that ended (killed) left running."""
        paths = self._paths
        folder = status_dir(paths)
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = read_record(paths, file.stem)
            if record is None or record.state not in (UnitState.RUNNING, UnitState.STARTING) \
                    or record.pid is None:
                continue
            entry, state = Registry(paths).read(record.name)
            if state != EntryState.RUNNING or entry is None or entry.pid != record.pid:
                continue
            try:
                unit = load_file(Path(record.unit), record.text or None)
            except ConfigError as exc:
                log.warning("cannot adopt %s (pid %d): %s", record.name, entry.pid, exc)
                continue
            kept = self.pst_units.get(record.name, {})
            record.restarts = max(record.restarts, int(kept.get("restarts") or 0))
            record.monitor_pid, record.monitor_start = os.getpid(), process_start_time(os.getpid())
            record.state, record.port, record.message = UnitState.RUNNING, entry.port, ""
            write_record(paths, record)
            run = Run()
            run.monitor = Monitor(unit, paths, run.tell, record)
            run.tell("READY " + json.dumps({"pid": entry.pid, "port": entry.port,
                                            "address": entry.address}))
            with self._lock:
                self._launch(run, Adopted(entry.pid, entry.start_time))
            log.info("adopted %s (pid %d, %d restarts so far)", record.name, entry.pid,
                     record.restarts)

    def _sample(self) -> None:
        with self._lock:
            pids = {r.monitor.record.pid for r in self._runs.values()
                    if r.alive() and r.monitor is not None and r.monitor.record.pid}
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
                self._samples.pop(pid, None)
        for pid in pids:
            assert pid is not None
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only starts the interval
                    self._samples[pid] = (None, proc.memory_info().rss)
                else:
                    self._samples[pid] = (round(proc.cpu_percent(None), 1),
                                          proc.memory_info().rss)
            except psutil.Error:
                self._procs.pop(pid, None)
                self._samples.pop(pid, None)
        with self._lock:
            for run in self._runs.values():
                if run.monitor is not None:
                    self._keep(run.monitor.record)

    def _run(self) -> None:
        try:
            self._adopt()
        finally:
            self._adopted.set()
        while self._wait(SAMPLE_EVERY):
            self._sample()
            if self._on_demand and not self._supervising() \
                    and time.monotonic() - self._idle_since > IDLE_EXIT:
                log.info("nothing to supervise for %g s: the supervisor ends", IDLE_EXIT)
                self.stop()


def _side_by_side(fn: Any, items: List[Any]) -> None:
    """``fn(item)`` for every item, each in a thread of its own, all at once."""
    threads = [threading.Thread(target=fn, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: List[str]) -> int:
    """``python -m malacoda.supervisor.host FD`` (detached, readiness on FD) or ``--foreground``."""
    foreground = argv[:1] == ["--foreground"]
    paths = Paths.default()
    channel = None
    if not foreground:
        fd = int(argv[0])
        if os.fork() > 0:  # the starter reaps this one; the supervisor is nobody's child
            os._exit(0)
        os.chdir("/")
        channel = os.fdopen(fd, "w")
    os.umask(0o077)

    def tell(message: str) -> None:
        if channel is not None and not channel.closed:
            with contextlib.suppress(OSError):
                channel.write(message + "\n")
                channel.close()

    def ready(entry: Entry) -> None:
        if foreground:
            from malacoda.supervisor.systemd import notify

            notify(f"READY=1\nMAINPID={entry.pid}\nSTATUS=supervising on port {entry.port}")
        tell(f"READY {entry.pid}")

    captured: Optional[logfile.Capture] = None
    try:
        private_dir(paths.log)
        if not foreground:
            captured = logfile.capture(paths.log_file(SUPERVISOR_NAME), logfile.LOG_MAX_BYTES,
                                       logfile.LOG_BACKUPS)
        root = logging.getLogger()
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        options.use(RunOptions(on_ready=[ready]))
        HostSupervisor(on_demand=not foreground)
        return 0
    except AlreadyRunning as exc:
        tell(f"ALREADY {exc}")
        if foreground:
            print(f"malacodactl: {exc}", file=sys.stderr)
            return 1
        return 0
    except BaseException as exc:  # noqa: B902 - the starter must hear about it
        traceback.print_exc()
        tell(f"FAILED {type(exc).__name__}: {exc}")
        return 1
    finally:
        if captured is not None:
            captured.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
