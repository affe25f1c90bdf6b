"""The per-unit monitor: the daemon's parent, its restart policy, its log and its status record.

``malacodactl start NAME`` runs ``malacoda.monitor UNIT_FILE FD`` (as ``python -m`` would, without
the current folder on ``sys.path``: :mod:`malacoda.host.launch`), which forks once
more (the starter reaps the first child; the monitor is nobody's child to wait for), takes the
unit's monitor lock (a second monitor for the same unit leaves at once: ``ALREADY``), and then:

1. starts the daemon (``malacoda.runner``, likewise) in a session of its own, its stdout and
   stderr piped into the unit's log file, timestamped and rotated (:mod:`malacoda.supervisor.logfile`);
2. waits until the daemon reports ``READY`` over a pipe, its own error, or its death; the first
   outcome is told to the starter on ``FD`` (``READY {json}`` or ``FAILED text``), so that
   ``start`` returns only once the daemon serves, or fails with the daemon's own error;
3. when the daemon exits, records the exit code or signal and applies the restart policy:
   exponential backoff from ``backoff`` up to ``backoff_max``, reset after ``backoff_reset``
   seconds up, and after ``start_limit`` restarts in a row the state ``failed``;
4. on SIGTERM/SIGINT/SIGHUP runs the stop sequence (:func:`stop_sequence`) and exits.

The status record, ``<run>/status/<name>.json``, is rewritten atomically at each change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import psutil

from malacoda.errors import MalacodaError
from malacoda.host.files import atomic_write, private_dir, read_pipe, text_pipe, untrusted
from malacoda.host.launch import python_command
from malacoda.host.paths import Paths, known_fields
from malacoda.host.process import PST_INCOMPLETE, process_start_time, same_process
from malacoda.host.registry import NameLock, Registry
from malacoda.supervisor.logfile import LogFile
from malacoda.supervisor.units import Unit, digest, load_file

log = logging.getLogger(__name__)

#: A daemon that exits this soon after it was ready did not start: its ``_run`` raised at once.
SETTLE = 0.2
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def package_env(env: Dict[str, str]) -> Dict[str, str]:
    """``env`` with the folder this Malacoda is imported from first on ``PYTHONPATH``, once.

    The monitor and the daemon then run this same Malacoda, however often a daemon is handed
    over to a new monitor (each hand-over passes the environment on again). An empty entry
    (``PYTHONPATH=:/opt/lib``) means the current folder to Python: it is dropped, as
    :mod:`malacoda.host.launch` drops the current folder; a relative one is made absolute here, so
    that it names the same folder in the monitor and in the daemon (run in its ``workdir``).
    """
    entries = env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []
    rest = [os.path.abspath(p) for p in entries if p]
    rest = [p for p in rest if os.path.normpath(p) != PACKAGE_PARENT]
    return dict(env, PYTHONPATH=os.pathsep.join([PACKAGE_PARENT, *rest]))


@dataclass
class Record:
    """What the monitor tells ``status``: its own pid and the daemon's state."""

    name: str
    state: str = "starting"
    unit: str = ""
    monitor_pid: Optional[int] = None
    monitor_start: Optional[float] = None
    pid: Optional[int] = None
    port: Optional[int] = None
    started: Optional[float] = None
    restarts: int = 0
    last_exit: Optional[Dict[str, Any]] = None
    message: str = ""
    updated: float = field(default_factory=time.time)
    unit_digest: str = ""  # units.digest() of the unit file as the monitor loaded it

    def monitor_alive(self) -> bool:
        if self.monitor_pid is None or self.monitor_start is None:
            return False
        if not same_process(self.monitor_pid, self.monitor_start, os.geteuid()):
            return False
        try:  # never signal a process that is not our monitor, whatever a record says
            return "malacoda.monitor" in psutil.Process(self.monitor_pid).cmdline()
        except psutil.Error:
            return False


def status_dir(paths: Paths) -> Path:
    """The folder of the monitors' status records."""
    return paths.run / "status"


def record_path(paths: Paths, name: str) -> Path:
    return status_dir(paths) / f"{name}.json"


def read_record(paths: Paths, name: str) -> Optional[Record]:
    """The unit's status record, or None (absent, unreadable, or not trustworthy: another user's
    file, or one others could write, is ignored — it names pids that ``stop`` signals)."""
    path = record_path(paths, name)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            if untrusted(os.fstat(f.fileno())):
                log.warning("ignoring %s: not ours or writable by others", path)
                return None
            raw = json.loads(f.read(1 << 20))
        return Record(**known_fields(Record, raw))
    except (OSError, ValueError, TypeError):
        return None


def write_record(paths: Paths, record: Record) -> None:
    record.updated = time.time()
    private_dir(paths.run)
    private_dir(status_dir(paths))
    atomic_write(record_path(paths, record.name), json.dumps(asdict(record)).encode())


def _exit_words(code: int) -> str:
    """:func:`describe_exit` as words: ``code 1``, ``signal SIGKILL``."""
    return ", ".join(f"{k} {v}" for k, v in describe_exit(code).items())


def describe_exit(code: int) -> Dict[str, Any]:
    """A ``Popen.returncode`` as ``{"code": n}`` or ``{"signal": "SIGKILL"}``."""
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": str(-code)}
    return {"code": code}


def read_word(fd: int, timeout: float,
              interrupted: Callable[[], bool] = lambda: False) -> Tuple[Optional[str], str]:
    """One line ``WORD detail`` from the pipe ``fd`` (how the daemon tells the monitor, and the
    monitor the starter, how a start went): ``(word, detail)``, ``("", "")`` when the pipe closed
    without a word, ``(None, "")`` after ``timeout`` seconds or once ``interrupted()``."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or interrupted():
            return None, ""
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.2))
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    word, _, detail = data.decode("utf-8", "replace").strip().partition(" ")
    return word, detail


def stop_sequence(name: str, pid: int, timeout: float, exited: Callable[[float], bool],
                  ready: bool = True) -> None:
    """Stop the daemon ``pid``: ask it (pst saved), SIGTERM at half ``timeout``, then SIGKILL.

    ``exited(seconds)`` waits up to ``seconds`` for the process to end and says whether it has.
    A daemon that never became ``ready`` cannot be asked (it serves no socket): SIGTERM at once.
    Signals go to the daemon's process group when it leads one (the monitor starts it so).
    """
    start = time.monotonic()
    if ready:
        try:
            from malacoda.client.proxy import Proxy

            with Proxy(name, timeout=min(2.0, timeout / 2)) as proxy:
                proxy.stop()
        except (MalacodaError, OSError) as exc:
            log.info("%s: asking it to stop failed (%s); sending SIGTERM", name, exc)
        if exited(max(0.0, start + timeout / 2 - time.monotonic())):
            return
    _signal(pid, signal.SIGTERM)
    _signal(pid, signal.SIGCONT)
    if exited(max(0.0, start + timeout - time.monotonic())):
        return
    log.warning("%s (pid %d) did not stop in %g s: SIGKILL", name, pid, timeout)
    _signal(pid, signal.SIGKILL)
    exited(5.0)


def _signal(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Monitor:
    """Runs one unit's daemon per its restart policy (see the module docstring)."""

    def __init__(self, unit: Unit, paths: Paths, tell: Callable[[str], None], logfile: LogFile,
                 record: Record) -> None:
        self.unit = unit
        self.paths = paths
        self.tell = tell
        self.logfile = logfile
        self.record = record
        self.stopping = threading.Event()
        self.pump_done: Callable[[float], None] = lambda timeout: None

    def note(self, message: str) -> None:
        self.logfile.write(f"[monitor] {message}")

    def save(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.record, key, value)
        write_record(self.paths, self.record)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()

    def run(self) -> int:
        unit, streak, first = self.unit, 0, True
        while True:
            self.save(state="starting", pid=None, port=None, started=None)
            proc, outcome, detail = self.spawn()
            up_since = time.monotonic()
            if outcome == "ready" and proc is not None:
                info = json.loads(detail)
                self.save(state="running", pid=proc.pid, port=info["port"], started=time.time(),
                          message="")
                self.note(f"{unit.name} ready: pid {proc.pid}, port {info['port']}")
                if first and self._died_at_once(proc):
                    code = proc.wait()
                    self.pump_done(1.0)
                    error = self.logfile.last_error() or "no error in its log"
                    detail = (f"it exited ({_exit_words(code)}) right after it was ready: {error}; "
                              f"see 'malacodactl logs {unit.name}'")
                    self.note(f"{unit.name} failed to start: {detail}")
                    Registry(self.paths).clean_stale(unit.name)
                    self.save(state="failed", pid=None, port=None, last_exit=describe_exit(code),
                              message=detail)
                    self.tell("FAILED " + detail)
                    return 1
                if first:
                    self.tell("READY " + detail)
                    first = False
                code = self.watch(proc)
            else:
                if proc is not None and proc.poll() is None:
                    self.stop_child(proc, ready=False)
                code = proc.wait() if proc is not None else 1
                if outcome != "stopped":
                    self.note(f"{unit.name} failed to start: {detail}")
                if first:
                    self.save(state="failed", last_exit=describe_exit(code), message=detail)
                    self.tell("FAILED " + detail)
                    return 1
            uptime = time.monotonic() - up_since
            Registry(self.paths).clean_stale(unit.name)  # a killed daemon leaves its entry
            self.record.last_exit = describe_exit(code)
            self.note(f"{unit.name} (pid {proc.pid if proc else '-'}) exited: {_exit_words(code)}")
            # A daemon whose final pst save was incomplete stopped as asked: no failure to
            # restart it for, but its stop says so (the error names the attribute).
            failed = outcome != "ready" or code not in (0, PST_INCOMPLETE)
            if self.stopping.is_set():
                message = "stopped"
                if code == PST_INCOMPLETE:
                    self.pump_done(1.0)
                    line = self.logfile.last_error()  # the runner's, naming the attribute
                    line = line.partition(f"StateError: {unit.name}: ")[2] or \
                        "its final pst save was incomplete: see its log"
                    message = "stopped, but " + line
                self.save(state="stopped", pid=None, port=None, message=message)
                return 0
            if outcome == "ready" and uptime >= unit.backoff_reset:
                streak = 0
            if unit.restart == "no" or (unit.restart == "on-failure" and not failed):
                self.save(state="failed" if failed else "stopped", pid=None, port=None,
                          message=f"restart = {unit.restart!r}: not restarted")
                return 0
            streak += 1
            if streak > unit.start_limit:
                message = f"gave up after {streak - 1} restarts in a row (start_limit)"
                self.note(message)
                self.save(state="failed", pid=None, port=None, message=message)
                return 0
            delay = min(unit.backoff * 2 ** (streak - 1), unit.backoff_max)
            message = f"restarting in {delay:g} s (restart {streak} of at most {unit.start_limit})"
            self.note(message)
            self.save(state="starting", pid=None, port=None, message=message)
            if self.stopping.wait(delay):
                self.save(state="stopped", message="stopped")
                return 0
            self.record.restarts += 1

    def _died_at_once(self, proc: subprocess.Popen) -> bool:
        """True when the daemon, just ready, exits within :data:`SETTLE` seconds with an error:
        its ``_run`` raised at once. Its start is then a failed start, not "started" and a
        silent death. Exit 0 is a ``_run`` that returned (or a stop): it did start."""
        try:
            return proc.wait(timeout=SETTLE) != 0
        except subprocess.TimeoutExpired:
            return False

    def spawn(self) -> Tuple[Optional[subprocess.Popen], str, str]:
        """Start the daemon and wait for its first word: ``(proc, outcome, detail)``."""
        unit = self.unit
        Registry(self.paths).clean_stale(unit.name)
        ready_r, ready_w = os.pipe()
        out_r, out_w = os.pipe()
        # The unit as the monitor loaded it: an automatic restart runs that, not an edit
        # saved (maybe half) since.
        unit_r = text_pipe(unit.text)
        env = package_env(dict(os.environ, **unit.env, PYTHONUNBUFFERED="1"))
        try:
            proc = subprocess.Popen(
                python_command("malacoda.runner", [str(unit.file), str(ready_w), str(unit_r)]),
                pass_fds=(ready_w, unit_r), stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                cwd=str(unit.workdir), env=env, start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: an environment the OS refuses
            for fd in (ready_r, ready_w, out_r, out_w):
                os.close(fd)
            return None, "error", f"cannot start it in {unit.workdir}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                os.close(unit_r)
        os.close(ready_w)
        os.close(out_w)
        pump = threading.Thread(target=self.logfile.pump, args=(os.fdopen(out_r, "rb"),),
                                name="malacoda-log", daemon=True)
        pump.start()
        self.pump_done = pump.join
        self.save(pid=proc.pid)
        outcome, detail = self._first_word(proc, ready_r)
        os.close(ready_r)
        if outcome != "ready":
            pump.join(1.0)  # let the traceback reach the log before it is pointed to
        return proc, outcome, detail

    def _first_word(self, proc: subprocess.Popen, fd: int) -> Tuple[str, str]:
        word, detail = read_word(fd, self.unit.start_timeout, self.stopping.is_set)
        if self.stopping.is_set():
            return "stopped", "stopped while starting"
        if word is None:
            return "timeout", f"not ready within start_timeout = {self.unit.start_timeout:g} s"
        if word == "READY":
            return "ready", detail
        if word == "ERROR":
            return "error", detail
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "error", "closed its readiness pipe without a word"
        return "error", (f"exited ({_exit_words(code)}) before it was ready; "
                         f"see 'malacodactl logs {self.unit.name}'")

    def watch(self, proc: subprocess.Popen) -> int:
        """Wait for the daemon to exit; on a stop request, stop it. Returns its exit code."""
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                return self.stop_child(proc)

    def stop_child(self, proc: subprocess.Popen, ready: bool = True) -> int:
        self.note(f"stopping {self.unit.name} (pid {proc.pid})")

        def exited(seconds: float) -> bool:
            try:
                proc.wait(timeout=seconds)
                return True
            except subprocess.TimeoutExpired:
                return False

        stop_sequence(self.unit.name, proc.pid, self.unit.stop_timeout, exited, ready)
        return proc.wait()


def main(unit_file: str, fd: int, unit_fd: Optional[int] = None) -> int:
    """Entry of ``python -m malacoda.monitor``: detach, lock, supervise (module docstring).

    ``unit_fd``: a pipe (:func:`~malacoda.host.files.text_pipe`) holding the unit file's text to run, as
    the starter loaded it; without it the file is read.
    """
    text = read_pipe(unit_fd) if unit_fd is not None else None
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o077)
    channel = os.fdopen(fd, "w")

    def tell(message: str) -> None:
        if not channel.closed:
            try:
                channel.write(message + "\n")
                channel.close()
            except OSError:
                pass

    try:
        unit = load_file(Path(unit_file), text)
        paths = Paths.default()
        lock = NameLock(paths, unit.name, "monitor")
        if not lock.acquire():
            tell(f"ALREADY {lock.holder() or ''}")
            return 0
        private_dir(paths.log)
        logfile = LogFile(paths.log_file(unit.name), unit.log_max_bytes, unit.log_backups)
        previous = read_record(paths, unit.name)
        record = Record(name=unit.name, unit=str(unit.file), monitor_pid=os.getpid(),
                        monitor_start=process_start_time(os.getpid()),
                        last_exit=previous.last_exit if previous else None,
                        unit_digest=digest(unit.text))
        write_record(paths, record)
        monitor = Monitor(unit, paths, tell, logfile, record)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, monitor.on_signal)
        monitor.note(f"monitor started (pid {os.getpid()}) for {unit.file}")
        try:
            return monitor.run()
        finally:
            monitor.note("monitor exits")
    except BaseException as exc:  # noqa: B902 - the starter must hear about it
        import traceback

        traceback.print_exc()
        tell(f"FAILED monitor error: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None))
