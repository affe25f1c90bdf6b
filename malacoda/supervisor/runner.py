"""Running a unit's daemon in this process: the code on the daemon's side of the monitor.

:func:`run_unit` applies the unit (environment, working directory, import path, the settings
that go into :class:`~malacoda.daemon.base.RunOptions`), sets up logging to stderr and instantiates
the class, which serves until it is stopped. It is used twice: by the monitor's child process
(``python -m malacoda.runner UNIT_FILE FD``, which reports readiness or its error on ``FD``) and
by ``malacodactl run`` (systemd mode, readiness sent to ``$NOTIFY_SOCKET``).

Under a monitor, the daemon watches its parent. If the monitor dies (``kill -9``, the OOM
killer), nothing would restart the daemon and nobody reads its log pipe: so the daemon points its
stdout and stderr at its log file (a print must not fail on the broken pipe), stops as on SIGTERM
(its pst state saved), then starts its unit again under a new monitor and exits. That hand-over
happens however the daemon ended (a print that met the broken pipe first may have failed it): a
daemon is never left unsupervised for more than about :data:`ORPHAN_CHECK` seconds plus its stop
and start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional

from malacoda.daemon import base as daemon_module
from malacoda.host.files import read_pipe
from malacoda.host.paths import Paths
from malacoda.host.process import PST_INCOMPLETE
from malacoda.host.registry import Entry
from malacoda.supervisor.units import Unit, load_file

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
ORPHAN_CHECK = 0.5  # seconds between checks that the monitor (our parent) still lives


def run_unit(unit: Unit, on_ready: List[Callable[[Entry], None]]) -> Any:
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
    daemon_module.run_options = daemon_module.RunOptions(
        name=unit.name, bind_address=unit.bind, port=unit.port, workers=unit.workers,
        queue=unit.queue, max_message=unit.max_message, max_connections=unit.max_connections,
        insecure=unit.insecure,
        curve=unit.curve, open=unit.open,
        pst_config=unit.pst, on_ready=list(on_ready),
    )
    return cls(**unit.args)


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for a daemon that could not start."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _output_to_log(name: str) -> None:
    """Point stdout and stderr (fds 1 and 2) at the unit's log file: the pipe to the monitor is
    broken once it died, and a print into it would fail the daemon."""
    with contextlib.suppress(OSError):
        fd = os.open(Paths.default().log_file(name),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


#: Set once the orphan watcher stops this daemon to hand it over to a new monitor.
_handing_over = threading.Event()


def _watch_monitor(monitor: int, name: str) -> None:
    """Stop this daemon (as SIGTERM does) once its monitor, our parent, is gone."""
    while os.getppid() == monitor:
        time.sleep(ORPHAN_CHECK)
    _output_to_log(name)
    _handing_over.set()
    os.kill(os.getpid(), signal.SIGTERM)


def _hand_over(unit_file: str, monitor: int, text: Optional[str]) -> None:
    """After the monitor died and this daemon stopped: start the unit, as it ran (``text``, the
    file as its monitor loaded it), under a new monitor."""
    from malacoda.supervisor.supervise import start  # here only: supervise sits above the runner

    unit = load_file(Path(unit_file), text)
    _output_to_log(unit.name)
    with contextlib.suppress(OSError):
        print(f"[runner] the monitor (pid {monitor}) of {unit.name} died: the daemon (pid "
              f"{os.getpid()}) stopped and starts again under a new monitor", flush=True)
    start(unit)


def child_main(unit_file: str, fd: int, unit_fd: Optional[int] = None) -> int:
    """The monitor's child: run the unit; ``READY {json}`` or ``ERROR text`` goes to ``fd``.

    ``unit_fd``: a pipe holding the unit file's text as the monitor loaded it (run that, not
    what the file says now); without it the file is read.
    """
    text = read_pipe(unit_fd) if unit_fd is not None else None
    channel = os.fdopen(fd, "w")
    monitor = os.getppid()
    name = ""
    served = False

    def ready(entry: Entry) -> None:
        nonlocal served
        channel.write("READY " + json.dumps({"pid": entry.pid, "port": entry.port,
                                             "address": entry.address}) + "\n")
        channel.close()
        served = True
        threading.Thread(target=_watch_monitor, args=(monitor, name),
                         name="malacoda-orphan", daemon=True).start()

    def on_term(signum: int, frame: object) -> None:
        # While the daemon serves, its own handler stops it; this one is back once it ended:
        # the orphan watcher's late SIGTERM must not kill it before the hand-over, anyone
        # else's does (a user's stop of a daemon whose monitor died).
        if not (served and _handing_over.is_set()):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    failed = False
    try:
        unit = load_file(Path(unit_file), text)
        name = unit.name
        instance = run_unit(unit, [ready])
        incomplete = getattr(instance, "_malacoda_pst_incomplete", "")
        if incomplete:  # the last error line of its log: the monitor's record quotes it
            with contextlib.suppress(OSError):
                print(f"StateError: {name}: {incomplete}", file=sys.stderr, flush=True)
            code = PST_INCOMPLETE
    except BaseException as exc:  # noqa: B902 - reported to the monitor, then the exit code
        failed = True
        if served and os.getppid() != monitor:
            _output_to_log(name)
        with contextlib.suppress(OSError):
            traceback.print_exc()
        if not channel.closed:
            with contextlib.suppress(OSError):
                channel.write("ERROR " + describe_error(exc) + "\n")
                channel.close()
        code = 1
    # Orphaned: started again under a new monitor when the watcher stopped it for that, or
    # when it failed (as its monitor would have restarted it); not when someone stopped it.
    if served and os.getppid() != monitor and (failed or _handing_over.is_set()):
        with contextlib.suppress(Exception):
            _hand_over(unit_file, monitor, text)
    return code


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], int(sys.argv[2]),
                        int(sys.argv[3]) if len(sys.argv) > 3 else None))
