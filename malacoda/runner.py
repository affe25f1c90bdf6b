"""Running a unit's daemon in this process: the code on the daemon's side of the monitor.

:func:`run_unit` applies the unit (environment, working directory, import path, the settings
that go into :class:`~malacoda.daemon.RunOptions`), sets up logging to stderr and instantiates
the class, which serves until it is stopped. It is used twice: by the monitor's child process
(``python -m malacoda.runner UNIT_FILE FD``, which reports readiness or its error on ``FD``) and
by ``malacodactl run`` (systemd mode, readiness sent to ``$NOTIFY_SOCKET``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, List

from . import daemon as daemon_module
from .runtime import Entry
from .units import Unit, load_file

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def run_unit(unit: Unit, on_ready: List[Callable[[Entry], None]]) -> None:
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
        queue=unit.queue, max_message=unit.max_message, insecure=unit.insecure,
        pst_config=unit.pst, on_ready=list(on_ready),
    )
    cls(**unit.args)


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for a daemon that could not start."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def child_main(unit_file: str, fd: int) -> int:
    """The monitor's child: run the unit; ``READY {json}`` or ``ERROR text`` goes to ``fd``."""
    channel = os.fdopen(fd, "w")

    def ready(entry: Entry) -> None:
        channel.write("READY " + json.dumps({"pid": entry.pid, "port": entry.port,
                                             "address": entry.address}) + "\n")
        channel.close()

    try:
        run_unit(load_file(Path(unit_file)), [ready])
    except BaseException as exc:  # noqa: B902 - reported to the monitor, then the exit code
        traceback.print_exc()
        if not channel.closed:
            channel.write("ERROR " + describe_error(exc) + "\n")
            channel.close()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], int(sys.argv[2])))
