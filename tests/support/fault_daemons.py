"""Daemons for the fault tests: they save often and say what they saved and loaded."""

from __future__ import annotations

import hashlib
import logging
import os

from malacoda import Malacoda


def make_state(n: int, size: int) -> dict:
    """A state whose parts must agree: a torn or mixed save is detectable."""
    blob = (n.to_bytes(8, "big") * (size // 8 + 1))[:size]
    return {"n": n, "double": 2 * n, "blob": blob, "digest": hashlib.sha256(blob).hexdigest()}


def state_is_consistent(state: dict) -> bool:
    n = state["n"]
    blob = state["blob"]
    return (state["double"] == 2 * n and hashlib.sha256(blob).hexdigest() == state["digest"]
            and blob[:8] == n.to_bytes(8, "big"))


class SaverDaemon(Malacoda):
    """Advances ``pst_state`` all the time; prints ``loaded N`` and ``saved >=N`` lines."""

    def __init__(self, size=64 << 10, log_file=None, **kwargs):
        if log_file:
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
            logging.getLogger("malacoda").addHandler(handler)
            logging.getLogger("malacoda").setLevel(logging.INFO)
        self.size = size
        self.pst_state = make_state(0, size)
        self.pst_extra = b""
        self.advancing = True
        super().__init__(**kwargs)

    def _run(self):
        n = self.pst_state["n"]
        print(f"loaded {n}", flush=True)
        while self.running:
            if self.advancing:
                n += 1
                self.pst_state = make_state(n, self.size)  # one assignment: never half-updated
            self._wait(0.001)

    def _save_pst(self):
        n = self.pst_state["n"]
        written = super()._save_pst()
        if written:
            print(f"saved {n}", flush=True)
        return written

    def freeze(self):
        """Stop advancing: the state stays as it is; returns its counter."""
        self.advancing = False
        return self.pst_state["n"]

    def pid(self):
        return os.getpid()
