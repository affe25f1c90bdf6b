"""Liveness: is the process behind a pid still the one we recorded (its start time and owner)?
"""

from __future__ import annotations

import logging
from typing import Optional

import psutil

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> Optional[float]:
    """The start time of ``pid`` as psutil reports it, or None when it is not alive."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


#: How far apart two readings of one process's start time may be: psutil derives it from
#: boot time and clock ticks, so a recorded value and a fresh one can differ slightly.
START_TIME_SLACK = 0.05


def same_process(pid: int, start_time: float, uid: Optional[int] = None) -> bool:
    """True when ``pid`` is alive (not a zombie), started at ``start_time`` (within
    :data:`START_TIME_SLACK`) and, when ``uid`` is given, runs with that real uid.

    A pid the kernel has since given to another process fails the start-time check, so a
    recorded ``(pid, start_time)`` never leads to signalling or trusting a stranger.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if abs(proc.create_time() - start_time) > START_TIME_SLACK:
            return False
        return uid is None or proc.uids().real == uid
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


#: The exit code of a daemon (``malacoda.runner``, ``malacodactl run``) that stopped as asked but
#: whose final pst save was incomplete: an attribute that cannot be saved, or a persister that
#: failed (EX_IOERR of sysexits.h). The monitor records it and ``malacodactl stop`` exits 1.
PST_INCOMPLETE = 74
