"""One unit under the host supervisor: its daemon, restart policy, stop sequence and record.

A :class:`Monitor` is a thread of the host supervisor (:mod:`malacoda.supervisor.host`), one per unit:

1. starts the daemon (``malacoda.runner``, without the current folder on ``sys.path``:
   :mod:`malacoda.host.launch`) in a session of its own; the daemon writes its own log file,
   timestamped and rotated (:func:`malacoda.supervisor.logfile.capture`);
2. waits until the daemon reports ``READY`` over a pipe, its own error, or its death; the first
   outcome is told to whoever started it (``READY {json}`` or ``FAILED text``), so that
   ``start`` returns only once the daemon serves, or fails with the daemon's own error;
3. when the daemon exits, records the exit code or signal and applies the restart policy:
   exponential backoff from ``backoff`` up to ``backoff_max``, reset after ``backoff_reset``
   seconds up, and after ``start_limit`` restarts in a row the state ``failed``;
4. once asked to stop, runs the stop sequence (:func:`stop_sequence`) and ends.

A daemon another supervisor started (one killed since) is *adopted*: watched by pid and
start time (:class:`Adopted`); its exit code is not ours to know (``last_exit`` says so).
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import psutil

from malacoda.errors import MalacodaError
from malacoda.host.files import atomic_write, private_dir, text_pipe, untrusted
from malacoda.host.launch import python_command
from malacoda.host.paths import Paths, known_fields
from malacoda.host.process import PST_INCOMPLETE, process_start_time, same_process
from malacoda.host.registry import Registry
from malacoda.supervisor.logfile import STARTING, append_line, last_error_in
from malacoda.supervisor.states import UnitState
from malacoda.supervisor.units import Unit

log = logging.getLogger(__name__)

#: A daemon whose ``_run`` fails this soon after it was ready did not start (it raised at once):
#: it says so over the readiness pipe, which it keeps open that long (``runner.child_main``).
SETTLE = 0.2
#: The host supervisor: its module (in its command line) and its daemon name (registry).
SUPERVISOR_MODULE = "malacoda.supervisor.host"
SUPERVISOR_NAME = "malacoda-supervisor"
#: ``last_exit`` of an adopted daemon: it is not our child, its exit code is not ours to read.
UNKNOWN_EXIT = {"exit": "unknown (adopted: not this supervisor's child)"}
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def package_env(env: Dict[str, str]) -> Dict[str, str]:
    """``env`` with the folder this Malacoda is imported from first on ``PYTHONPATH``, once.

    The monitor and the daemon then run this same Malacoda, however often a daemon is handed
    over to a new monitor (each hand-over passes the environment on again). An empty entry
    (``PYTHONPATH=:/opt/lib``) means the current folder to Python: it is dropped, as
    :mod:`malacoda.launch` drops the current folder; a relative one is made absolute here, so
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
    state: str = UnitState.STARTING
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
    text: str = ""  # the unit file as the supervisor loaded it: an adopting one restarts that
    daemon_start: Optional[float] = None  # the daemon's process start time (adoption checks it)

    def monitor_alive(self) -> bool:
        if self.monitor_pid is None or self.monitor_start is None:
            return False
        if not same_process(self.monitor_pid, self.monitor_start, os.geteuid()):
            return False
        try:  # never signal a process that is not our monitor, whatever a record says
            return SUPERVISOR_MODULE in psutil.Process(self.monitor_pid).cmdline()
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


def _exit_words(code: Optional[int]) -> str:
    """:func:`describe_exit` as words: ``code 1``, ``signal SIGKILL``."""
    if code is None:
        return "exit code unknown (adopted)"
    return ", ".join(f"{k} {v}" for k, v in describe_exit(code).items())


def describe_exit(code: Optional[int]) -> Dict[str, Any]:
    """A ``Popen.returncode`` as ``{"code": n}`` or ``{"signal": "SIGKILL"}``; None (an adopted
    daemon's) as :data:`UNKNOWN_EXIT`."""
    if code is None:
        return dict(UNKNOWN_EXIT)
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": str(-code)}
    return {"code": code}


class WordPipe:
    """Lines ``WORD detail`` read one at a time from the pipe ``fd`` (how the daemon tells the
    supervisor, and the supervisor its starter, how a start went)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.ended = False

    def word(self, timeout: float,
             interrupted: Callable[[], bool] = lambda: False) -> Tuple[Optional[str], str]:
        """The next line as ``(word, detail)``; ``("", "")`` when the pipe closed without one,
        ``(None, "")`` after ``timeout`` seconds or once ``interrupted()``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.data and not self.ended:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or interrupted():
                return None, ""
            readable, _, _ = select.select([self.fd], [], [], min(remaining, 0.2))
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.ended = True
                self.data += chunk
        line, _, self.data = self.data.partition(b"\n")
        word, _, detail = line.decode("utf-8", "replace").strip().partition(" ")
        return word, detail


def read_word(fd: int, timeout: float,
              interrupted: Callable[[], bool] = lambda: False) -> Tuple[Optional[str], str]:
    """The first line ``WORD detail`` of the pipe ``fd``, as :meth:`WordPipe.word` gives it."""
    return WordPipe(fd).word(timeout, interrupted)


def stop_sequence(name: str, pid: int, timeout: float, exited: Callable[[float], bool],
                  ready: bool = True, note: Optional[Callable[[str], None]] = None) -> None:
    """Stop the daemon ``pid``: ask it (pst saved), SIGTERM at half ``timeout``, then SIGKILL.

    ``exited(seconds)`` waits up to ``seconds`` for the process to end and says whether it has.
    A daemon that never became ``ready`` cannot be asked (it serves no socket): SIGTERM at once.
    Signals go to the daemon's process group when it leads one (the monitor starts it so).
    ``note``: where the escalations are told too (the unit's log).
    """
    start = time.monotonic()
    if ready:
        try:
            from malacoda.client.proxy import Proxy

            with Proxy(name, timeout=min(2.0, timeout / 2)) as proxy:
                proxy.stop()
        except (MalacodaError, OSError) as exc:
            log.info("%s: asking it to stop failed (%s); sending SIGTERM", name, exc)
            if note is not None:
                note(f"asking {name} to stop failed ({exc}); sending SIGTERM")
        if exited(max(0.0, start + timeout / 2 - time.monotonic())):
            return
    _signal(pid, signal.SIGTERM)
    _signal(pid, signal.SIGCONT)
    if exited(max(0.0, start + timeout - time.monotonic())):
        return
    log.warning("%s (pid %d) did not stop in %g s: SIGKILL", name, pid, timeout)
    if note is not None:
        note(f"{name} (pid {pid}) did not stop in {timeout:g} s: SIGKILL")
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


class Adopted:
    """A daemon this supervisor did not start (its starter was killed): watched by pid and
    process start time, with :class:`subprocess.Popen`'s ``pid``/``poll``/``wait``; its exit
    code is unknown (None)."""

    def __init__(self, pid: int, start_time: float) -> None:
        self.pid = pid
        self.start_time = start_time
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        return None if same_process(self.pid, self.start_time, os.geteuid()) else 0

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while same_process(self.pid, self.start_time, os.geteuid()):
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return None


Child = Any  # subprocess.Popen or Adopted


class Monitor:
    """Runs one unit's daemon per its restart policy (see the module docstring)."""

    def __init__(self, unit: Unit, paths: Paths, tell: Callable[[str], None], record: Record,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.unit = unit
        self.paths = paths
        self.tell = tell
        self.record = record
        self.env = dict(os.environ if env is None else env)
        self.stopping = threading.Event()
        self.proc: Optional[Child] = None
        self.log_path = paths.log_file(unit.name)
        self._settling: Optional[WordPipe] = None  # the readiness pipe, just after READY

    def note(self, message: str) -> None:
        with contextlib.suppress(OSError):
            append_line(self.log_path, f"[monitor] {message}")

    def last_error(self) -> str:
        with contextlib.suppress(OSError):
            return last_error_in(self.log_path)
        return ""

    def save(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.record, key, value)
        write_record(self.paths, self.record)

    def run(self, adopted: Optional[Adopted] = None) -> int:
        unit, streak, first = self.unit, 0, adopted is None
        proc: Optional[Child]
        while True:
            if adopted is not None:
                proc, outcome, detail = adopted, "adopted", ""
                adopted = None
                self.proc = proc
                self.note(f"adopted {unit.name} (pid {proc.pid}) from a supervisor that ended")
            else:
                self.save(state=UnitState.STARTING, pid=None, port=None, started=None)
                proc, outcome, detail = self.spawn()
            up_since = time.monotonic()
            if outcome == "ready" and proc is not None:
                info = json.loads(detail)
                self.save(state=UnitState.RUNNING, pid=proc.pid, port=info["port"], started=time.time(),
                          daemon_start=process_start_time(proc.pid), message="")
                self.note(f"{unit.name} ready: pid {proc.pid}, port {info['port']}")
                error = self._died_at_once(proc) if first else None
                if error is not None:
                    try:
                        code: Optional[int] = proc.wait(timeout=max(10.0, unit.stop_timeout))
                    except subprocess.TimeoutExpired:
                        self.stop_child(proc)
                        code = proc.wait()
                    error = error or self.last_error() or "no error in its log"
                    detail = (f"it exited ({_exit_words(code)}) right after it was ready: {error}; "
                              f"see 'malacodactl logs {unit.name}'")
                    self.note(f"{unit.name} failed to start: {detail}")
                    Registry(self.paths).clean_stale(unit.name)
                    self.save(state=UnitState.FAILED, pid=None, port=None, last_exit=describe_exit(code),
                              message=detail)
                    self.tell("FAILED " + detail)
                    return 1
                if first:
                    self.tell("READY " + detail)
                    first = False
                elif self._settling is not None:
                    os.close(self._settling.fd)
                    self._settling = None
                code = self.watch(proc)
            elif outcome == "adopted" and proc is not None:
                outcome = "ready"
                code = self.watch(proc)
            else:
                if proc is not None and proc.poll() is None:
                    self.stop_child(proc, ready=False)
                code = proc.wait() if proc is not None else 1
                if outcome != "stopped":
                    self.note(f"{unit.name} failed to start: {detail}")
                if first:
                    self.save(state=UnitState.FAILED, last_exit=describe_exit(code), message=detail)
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
                    line = self.last_error()  # the runner's, naming the attribute
                    line = line.partition(f"StateError: {unit.name}: ")[2] or \
                        "its final pst save was incomplete: see its log"
                    message = "stopped, but " + line
                self.save(state=UnitState.STOPPED, pid=None, port=None, message=message)
                return 0
            if outcome == "ready" and uptime >= unit.backoff_reset:
                streak = 0
            if unit.restart == "no" or (unit.restart == "on-failure" and not failed):
                self.save(state=UnitState.FAILED if failed else UnitState.STOPPED, pid=None, port=None,
                          message=f"restart = {unit.restart!r}: not restarted")
                return 0
            streak += 1
            if streak > unit.start_limit:
                message = f"gave up after {streak - 1} restarts in a row (start_limit)"
                self.note(message)
                self.save(state=UnitState.FAILED, pid=None, port=None, message=message)
                return 0
            delay = min(unit.backoff * 2 ** (streak - 1), unit.backoff_max)
            message = f"restarting in {delay:g} s (restart {streak} of at most {unit.start_limit})"
            self.note(message)
            self.save(state=UnitState.STARTING, pid=None, port=None, message=message)
            if self.stopping.wait(delay):
                self.save(state=UnitState.STOPPED, message="stopped")
                return 0
            self.record.restarts += 1

    def _died_at_once(self, proc: Child) -> Optional[str]:
        """After ``READY``: the daemon's error (``""`` when it gave none) when its ``_run``
        failed within :data:`SETTLE` seconds (it says so over the still open
        readiness pipe, by its own clock) or when it exited with an error by the time the pipe
        closed; else None: it started. Exit 0 is a ``_run`` that returned (or a stop)."""
        pipe = self._settling
        self._settling = None
        if pipe is None:
            return None
        try:
            word, detail = pipe.word(SETTLE + 10.0)
        finally:
            os.close(pipe.fd)
        if word == "ERROR":
            return detail
        if word == "":  # closed: settled, unless it has died with an error meanwhile
            with contextlib.suppress(subprocess.TimeoutExpired):
                if proc.wait(timeout=0.05) not in (0, None):
                    return ""
        return None

    def spawn(self) -> Tuple[Optional[subprocess.Popen], str, str]:
        """Start the daemon and wait for its first word: ``(proc, outcome, detail)``."""
        unit = self.unit
        Registry(self.paths).clean_stale(unit.name)
        private_dir(self.paths.log)
        self.note(STARTING[len("[monitor] "):] + f"{unit.name} ({unit.file})")
        ready_r, ready_w = os.pipe()
        # The unit as the supervisor loaded it: an automatic restart runs that, not an edit
        # saved (maybe half) since.
        unit_r = text_pipe(unit.text)
        env = package_env(dict(self.env, **unit.env, PYTHONUNBUFFERED="1"))
        try:
            # Until the runner captures its own output, it writes straight into the log file.
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                             0o600)
            try:
                proc = subprocess.Popen(
                    python_command("malacoda.runner", [str(unit.file), str(ready_w), str(unit_r)]),
                    pass_fds=(ready_w, unit_r), stdin=subprocess.DEVNULL, stdout=log_fd,
                    stderr=log_fd, cwd=str(unit.workdir), env=env, start_new_session=True,
                )
            finally:
                os.close(log_fd)
        except (OSError, ValueError) as exc:  # ValueError: an environment the OS refuses
            for fd in (ready_r, ready_w):
                os.close(fd)
            return None, "error", f"cannot start it in {unit.workdir}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                os.close(unit_r)
        os.close(ready_w)
        self.proc = proc
        self.save(pid=proc.pid)
        pipe = WordPipe(ready_r)
        outcome, detail = self._first_word(proc, pipe)
        if outcome == "ready":  # the daemon keeps it open a moment: see _died_at_once
            self._settling = pipe
        else:
            os.close(ready_r)
        return proc, outcome, detail

    def _first_word(self, proc: subprocess.Popen, pipe: WordPipe) -> Tuple[str, str]:
        word, detail = pipe.word(self.unit.start_timeout, self.stopping.is_set)
        if self.stopping.is_set():
            return "stopped", "stopped while starting"
        if word is None:
            return "timeout", f"not ready within start_timeout = {self.unit.start_timeout:g} s"
        if word == "READY":
            return "ready", detail
        if word == "ERROR":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)  # its traceback is in the log once it has ended
            return "error", detail
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "error", "closed its readiness pipe without a word"
        return "error", (f"exited ({_exit_words(code)}) before it was ready; "
                         f"see 'malacodactl logs {self.unit.name}'")

    def watch(self, proc: Child) -> Optional[int]:
        """Wait for the daemon to exit; on a stop request, stop it. Returns its exit code."""
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                return self.stop_child(proc)

    def stop_child(self, proc: Child, ready: bool = True) -> Optional[int]:
        self.note(f"stopping {self.unit.name} (pid {proc.pid})")

        def exited(seconds: float) -> bool:
            try:
                proc.wait(timeout=seconds)
                return True
            except subprocess.TimeoutExpired:
                return False

        stop_sequence(self.unit.name, proc.pid, self.unit.stop_timeout, exited, ready, self.note)
        return proc.wait()
