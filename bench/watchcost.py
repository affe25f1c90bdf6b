"""What ``watch`` costs an attribute write in the daemon's own code: ``self.x += 1``.

``python -m bench.watchcost [rounds] [writes]``: in one process, interleaved rounds time
``writes`` executions of ``self.x += 1`` on

- ``plain``: an object of a class that is no daemon at all (the floor);
- ``nobody``: a daemon class (``Malacoda``'s event methods) that nobody watches: the hook is
  not installed, a write is Python's own ``object.__setattr__``;
- ``other``: while another attribute is watched (the hook is installed and looks the name up);
- ``watched``: while ``x`` itself is watched (each write is encoded and offered to the watcher,
  who keeps only the newest value).

It prints ns per write (median over rounds) and the ratios to ``plain``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Dict, List

from malacoda.daemon.events import Events
from malacoda.daemon.streams import StreamHub


class Plain:
    def __init__(self) -> None:
        self.x = 0


class Daemon(Events):
    def __init__(self) -> None:
        self.x = 0
        self.y = 0


def _time(obj: Any, writes: int) -> float:
    started = time.perf_counter()
    for _ in range(writes):
        obj.x += 1
    return (time.perf_counter() - started) / writes * 1e9


def main(argv: List[str]) -> int:
    rounds = int(argv[0]) if argv else 15
    writes = int(argv[1]) if len(argv) > 1 else 200_000
    plain, daemon = Plain(), Daemon()
    hub = StreamHub("bench")
    daemon._malacoda_attach_events(hub)
    samples: Dict[str, List[float]] = {"plain": [], "nobody": [], "other": [], "watched": []}
    ratios: List[float] = []  # nobody / plain, per round (the two timed back to back)
    for r in range(rounds):
        if r % 2:
            samples["nobody"].append(_time(daemon, writes))
            samples["plain"].append(_time(plain, writes))
        else:
            samples["plain"].append(_time(plain, writes))
            samples["nobody"].append(_time(daemon, writes))
        ratios.append(samples["nobody"][-1] / samples["plain"][-1])
        other = daemon.watch("y")
        samples["other"].append(_time(daemon, writes))
        watched = daemon.watch("x")
        samples["watched"].append(_time(daemon, writes))
        watched.close()
        other.close()
        assert "__setattr__" not in type(daemon).__dict__  # the hook left with the last watcher
    floor = statistics.median(samples["plain"])
    for case, values in samples.items():
        mid = statistics.median(values)
        print(f"{case:8s} {mid:7.1f} ns/write ({min(values):.1f}-{max(values):.1f})  "
              f"{mid / floor:5.2f}x plain")
    print(f"nobody watching / plain, per round: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {rounds} rounds of {writes:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
