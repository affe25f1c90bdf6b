"""The states ``malacodactl status`` reports for a unit, and their LSB exit codes.

==========  =====================================================  ==========
state       meaning                                                LSB code
==========  =====================================================  ==========
running     registered, alive, answers a ping                      0
hung        registered and alive, but the ping timed out           4
starting    the supervisor is starting or restarting it (backoff)  3
stale       records of a daemon or supervisor that died (kill -9)  1
failed      the supervisor gave up (start failed, start_limit)     3
stopped     not running                                            3
invalid     its unit file does not load (the error is shown)       3
unreachable its host could not be asked (the error is shown)       4
==========  =====================================================  ==========
"""

from __future__ import annotations

from enum import Enum


class UnitState(str, Enum):
    """A unit's state: a ``str`` (records and ``--json`` hold the value), compared by value."""

    RUNNING = "running"
    HUNG = "hung"
    STARTING = "starting"
    STALE = "stale"
    FAILED = "failed"
    STOPPED = "stopped"
    INVALID = "invalid"
    UNREACHABLE = "unreachable"

    # Printed as its value everywhere (Python 3.11 formats a str mix-in as ``UnitState.RUNNING``).
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def lsb(self) -> int:
        """The LSB ``status`` exit code of this state."""
        return LSB[self]


#: LSB ``status`` exit codes: 0 running, 1 dead but records remain, 3 not running, 4 unknown.
LSB = {UnitState.RUNNING: 0, UnitState.STALE: 1, UnitState.STARTING: 3, UnitState.FAILED: 3,
       UnitState.STOPPED: 3, UnitState.INVALID: 3, UnitState.HUNG: 4, UnitState.UNREACHABLE: 4}
