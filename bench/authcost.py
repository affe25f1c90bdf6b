"""What owner-only access costs a small call: the default daemon (ZAP PLAIN) against the same
daemon started ``open = true`` (NULL), interleaved in one client process.

``python -m bench.authcost [rounds] [calls]``: both servers run side by side (``bench.systems``
``malacoda`` and ``malacoda_open``); each round times ``calls`` sequential ``d.echo('hello')``
on one, then on the other (the order alternates), and prints each round's p50 ratio, then the
median ratio and its spread. Authentication happens once per connection, so the expected ratio
is 1.00 and what differs is noise; interleaving short batches is what keeps that noise small on
a shared machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import List

from bench.harness import Server


def _p50(call, n: int) -> float:
    times: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        call("hello")
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv: List[str]) -> int:
    rounds = int(argv[0]) if argv else 20
    calls = int(argv[1]) if len(argv) > 1 else 1000
    home = tempfile.mkdtemp(prefix="malacoda-authcost-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    from bench.systems import Client

    servers = {s: Server(s) for s in ("malacoda", "malacoda_open")}
    clients = {s: Client(s, servers[s].port) for s in servers}
    try:
        for c in clients.values():
            _p50(c.call, 200)  # warm-up
        ratios = []
        for r in range(rounds):
            order = ["malacoda", "malacoda_open"][:: 1 if r % 2 == 0 else -1]
            p50 = {s: _p50(clients[s].call, calls) for s in order}
            ratios.append(p50["malacoda"] / p50["malacoda_open"])
            print(f"round {r + 1:2d}: PLAIN {p50['malacoda']:6.1f} µs, NULL "
                  f"{p50['malacoda_open']:6.1f} µs, ratio {ratios[-1]:.3f}", flush=True)
        q = statistics.quantiles(ratios, n=4)
        print(f"PLAIN / NULL small-call p50: median {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}–{q[2]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}) "
              f"over {rounds} rounds of {calls} calls")
    finally:
        for c in clients.values():
            c.close()
        for s in servers.values():
            s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
