"""Callers for the load tests, run in threads of this process or of others.

``python -m tests.support.load_caller NAME FIRST_CALLER THREADS CALLS`` runs THREADS callers (numbered
from FIRST_CALLER), each with its own proxy, and prints one JSON line: the summed
:class:`Tally`.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional

import malacoda


@dataclass
class Tally:
    ok: int = 0
    busy: int = 0
    mismatched: int = 0
    errors: List[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.ok += other.ok
        self.busy += other.busy
        self.mismatched += other.mismatched
        self.errors.extend(other.errors)


def payload(caller: int, index: int) -> Any:
    """A value that differs from call to call, in type and size."""
    kind = index % 4
    if kind == 0:
        return None
    if kind == 1:
        return (caller, index, "x" * (index % 50))
    if kind == 2:
        return {"i": index, "b": bytes([caller % 256]) * (index % 300)}
    return [index * 1.5, str(caller)]


def call_many(proxy: Any, caller: int, calls: int, tally: Tally, lock: threading.Lock) -> None:
    """``calls`` calls of ``record``; every reply must be the one of its own request."""
    mine = Tally()
    for index in range(calls):
        value = payload(caller, index)
        while True:
            try:
                reply = proxy.record(caller, index, value, timeout=120)
            except malacoda.Busy:
                mine.busy += 1  # nothing ran: an honest "try again"
                continue
            except Exception as exc:
                mine.errors.append(f"{type(exc).__name__}: {exc}")
                reply = None
            break
        if reply is not None:
            if reply == [caller, index, value]:
                mine.ok += 1
            else:
                mine.mismatched += 1
    with lock:
        tally.add(mine)


def run_threads(name: str, first: int, threads: int, calls: int,
                shared: Optional[Any] = None) -> Tally:
    """``threads`` callers; each has its own proxy unless ``shared`` is given."""
    tally = Tally()
    lock = threading.Lock()
    workers = [
        threading.Thread(target=call_many,
                         args=(shared or malacoda.get(name), first + n, calls, tally, lock))
        for n in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return tally


def main(argv: List[str]) -> None:
    name, first, threads, calls = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    print(json.dumps(asdict(run_threads(name, first, threads, calls))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
