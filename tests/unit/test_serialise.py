"""pst state serialisation: the C pickler for plain state, dill for what only dill can do."""

from __future__ import annotations

import datetime as dt
import pickle
import threading
from decimal import Decimal

import dill

from malacoda.storage import serialise


def test_plain_state_round_trips_and_uses_the_c_pickler():
    state = {"pst_a": [1, 2.5, "x", b"y", (1, 2), {3, 4}], "pst_when": dt.datetime(2024, 1, 2),
             "pst_money": Decimal("1.10"), "pst_big": 10**40}
    data = serialise(state)
    assert dill.loads(data) == state
    assert data == pickle.dumps(state, protocol=4)


def test_lambdas_locks_and_local_classes_go_to_dill():
    class Local:
        def __init__(self) -> None:
            self.n = 3

    state = {"pst_f": lambda x: x + 1, "pst_lock": threading.Lock(), "pst_obj": Local()}
    loaded = dill.loads(serialise(state))
    assert loaded["pst_f"](1) == 2
    assert loaded["pst_obj"].n == 3
    assert loaded["pst_lock"].acquire(blocking=False)


def test_main_module_classes_are_stored_by_value():
    code = "class Point:\n    def __init__(self):\n        self.x = 7\n"
    namespace = {"__name__": "__main__"}
    exec(code, namespace)
    point = namespace["Point"]()
    # By reference it could not load here: this __main__ (pytest's) has no Point.
    assert dill.loads(serialise({"pst_p": point}))["pst_p"].x == 7
