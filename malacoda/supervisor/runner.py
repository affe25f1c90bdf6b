"""Running a unit's daemon in this process: the code on the daemon's side of the supervisor.

:func:`run_unit` applies the unit (environment, working directory, import path, the settings
that go into :class:`~malacoda.daemon.base.RunOptions`), sets up logging to stderr and instantiates
the class, which serves until it is stopped. It is used twice: by the host supervisor's child
process (``python -m malacoda.runner UNIT_FILE FD``, which reports readiness or its error on
``FD``) and by ``malacodactl run`` (systemd mode, readiness sent to ``$NOTIFY_SOCKET``).

Under the host supervisor the daemon writes its own log (:func:`malacoda.supervisor.logfile.capture`):
its stdout and stderr are a pipe that a thread of this process copies into the unit's log
file. The supervisor is its parent, but nothing the daemon needs goes through it once it is
ready: a supervisor killed with ``kill -9`` leaves the daemon serving and logging, and the
next supervisor adopts it (:mod:`malacoda.supervisor.host`).
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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, List, Optional

from malacoda.daemon import base as daemon_module
from malacoda.daemon import options
from malacoda.host.files import read_pipe
from malacoda.host.paths import Paths
from malacoda.host.process import PST_INCOMPLETE
from malacoda.host.registry import Entry
from malacoda.supervisor import logfile
from malacoda.supervisor.monitor import SETTLE
from malacoda.supervisor.units import Unit, load_file

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def run_unit(unit: Unit, on_ready: List[Callable[[Entry], None]],
             on_failure: Optional[List[Callable[[BaseException], None]]] = None) -> Any:
    """Instantiate ``unit``'s class here and serve until it stops (see the module docstring)."""
    os.environ.update(unit.env)
    os.chdir(unit.workdir)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(unit.log_level)
    cls = daemon_module.load_class(unit.cls, unit.path)
    options.use(options.RunOptions(name=unit.name, **asdict(unit.daemon), on_ready=list(on_ready),
                                   on_failure=list(on_failure or [])))
    return cls(**unit.args)


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for a daemon that could not start."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def child_main(unit_file: str, fd: int, unit_fd: Optional[int] = None) -> int:
    """The supervisor's child: run the unit; ``READY {json}`` or ``ERROR text`` goes to ``fd``.

    After ``READY`` the pipe stays open for :data:`SETTLE` seconds: a ``_run`` that fails within
    them (judged by this process's clock, when the failure happens, not when the process has
    ended) sends ``ERROR text`` too, and the supervisor reports a start that failed.

    ``unit_fd``: a pipe holding the unit file's text as the supervisor loaded it (run that, not
    what the file says now); without it the file is read. Until the unit is loaded, stdout and
    stderr are the log file itself (as the supervisor opened it); then :func:`capture`.
    """
    text = read_pipe(unit_fd) if unit_fd is not None else None
    channel = os.fdopen(fd, "w")
    captured: Optional[logfile.Capture] = None
    lock = threading.Lock()
    ready_at: List[float] = []

    def close() -> None:
        with lock, contextlib.suppress(OSError):
            channel.close()

    def ready(entry: Entry) -> None:
        with lock, contextlib.suppress(OSError):  # a supervisor killed meanwhile reads no more
            channel.write("READY " + json.dumps({"pid": entry.pid, "port": entry.port,
                                                 "address": entry.address}) + "\n")
            channel.flush()
        ready_at.append(time.monotonic())
        timer = threading.Timer(SETTLE, close)
        timer.daemon = True
        timer.start()

    def failed(exc: BaseException) -> None:
        with lock, contextlib.suppress(OSError):
            if not channel.closed and ready_at and time.monotonic() - ready_at[0] <= SETTLE:
                channel.write("ERROR " + describe_error(exc) + "\n")
                channel.close()

    code = 0
    try:
        unit = load_file(Path(unit_file), text)
        captured = logfile.capture(Paths.default().log_file(unit.name), unit.log_max_bytes,
                                   unit.log_backups)
        instance = run_unit(unit, [ready], [failed])
        incomplete = getattr(instance, "_malacoda_pst_incomplete", "")
        if incomplete:  # the last error line of its log: the supervisor's record quotes it
            with contextlib.suppress(OSError):
                print(f"StateError: {unit.name}: {incomplete}", file=sys.stderr, flush=True)
            code = PST_INCOMPLETE
    except BaseException as exc:  # noqa: B902 - reported to the supervisor, then the exit code
        with contextlib.suppress(OSError):
            traceback.print_exc()
        with lock, contextlib.suppress(OSError):
            if not channel.closed and not ready_at:
                channel.write("ERROR " + describe_error(exc) + "\n")
            channel.close()
        code = 1
    finally:
        if captured is not None:  # every line written before the process ends
            captured.close()
    return code


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], int(sys.argv[2]),
                        int(sys.argv[3]) if len(sys.argv) > 3 else None))
