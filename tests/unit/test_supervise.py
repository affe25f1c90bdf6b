"""How ``status`` looks at many units: side by side, in order, failures not swallowed."""

from __future__ import annotations

import threading

import pytest

from malacoda.supervisor import supervise as supervise


def test_statuses_are_looked_at_side_by_side_and_come_back_in_order():
    # Each call waits until SIDE_BY_SIDE of them wait together: one at a time, the barrier
    # would break (after its timeout) and the calls would raise.
    barrier = threading.Barrier(supervise.SIDE_BY_SIDE, timeout=10)
    names = [f"unit{i}" for i in range(3 * supervise.SIDE_BY_SIDE)]

    def look(name: str) -> str:
        barrier.wait()
        return name.upper()

    assert supervise._side_by_side(look, names) == [n.upper() for n in names]


def test_a_failure_while_looking_is_raised_to_the_caller():
    def look(name: str) -> str:
        if name == "bad":
            raise PermissionError("registry entry not readable")
        return name

    with pytest.raises(PermissionError, match="not readable"):
        supervise._side_by_side(look, ["a", "bad", "c", "d", "e"])
    assert supervise._side_by_side(look, ["only"]) == ["only"]
