"""The Malacoda daemon the benchmark calls: an echo, and pst state to save on demand."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from malacoda import Malacoda
from malacoda.daemon import options
from malacoda.daemon.options import RunOptions


class BenchEcho(Malacoda):
    """``echo`` for the call benchmarks; ``fill``/``save`` for the pst-save benchmark."""

    def __init__(self) -> None:
        self.pst_generation = 0
        self.pst_blob: list = []
        self.pst_table: dict = {}
        self._save_busy = threading.Lock()
        super().__init__(name="BenchEcho", pst_config={"frequency": 3600})

    def echo(self, value: Any) -> Any:
        return value

    def fill(self, mib: int) -> int:
        """Make about ``mib`` MiB of pst state: 1 MiB byte strings plus a dict of small rows."""
        self.pst_blob = [os.urandom(1 << 20) for _ in range(max(0, mib - 4))]
        # ~4 MiB as 40,000 small Python objects: the part a pickler walks object by object.
        self.pst_table = {f"key{i}": (i, float(i), f"value {i}") for i in range(40_000)}
        return len(self.pst_blob)

    def save(self) -> float:
        """Change the state and save it now (as the periodic save does); the seconds it took."""
        with self._save_busy:
            self.pst_generation += 1
            started = time.perf_counter()
            if not self._save_pst():
                raise RuntimeError("the state did not change: nothing was written")
            return time.perf_counter() - started


def serve_bench_echo(ready: Callable[[int], None], name: Optional[str] = None,
                     open: bool = False) -> None:  # open: the unit key's name
    """Serve :class:`BenchEcho`; ``ready(port)`` once it is registered. ``open``: without the
    owner check (NULL mechanism), to measure what authentication costs."""
    options.use(RunOptions(name=name, open=open, on_ready=[lambda entry: ready(entry.port)]))
    BenchEcho()


class BenchIdle(Malacoda):
    """A daemon that only waits: the supervisor benchmark runs many of them."""

    def ping(self) -> str:
        return "pong"
