"""asyncio against threads: 1,000 concurrent ``await d.echo(i)`` on one AsyncProxy beside 16
threads sharing one synchronous Proxy, against the same daemon, interleaved in one process.

``python -m bench.aio [rounds] [calls] [--json]``: one Malacoda echo daemon (``bench.systems``
``malacoda``); each round makes ``calls`` calls each way, in an order that alternates: asyncio
as batches of 1,000 concurrent awaits (``asyncio.gather``) on one :class:`malacoda.aio.AsyncProxy`,
threads as 16 threads each calling ``d.echo(i)`` in turn on one shared :class:`malacoda.Proxy`.
Every reply is checked against what was sent. Prints each round's calls/s and their ratio, then
the median ratio and its spread; ``--json`` prints the figures as one JSON line at the end (what
``make bench`` reads). The target (issue 15): asyncio / threads >= 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

CONCURRENT = 1000
THREADS = 16


async def _async_round(d: Any, calls: int) -> float:
    """calls/s of ``calls`` echoes, CONCURRENT at a time, each reply checked."""
    batches = max(1, calls // CONCURRENT)
    t0 = time.perf_counter()
    for b in range(batches):
        values = list(range(b * CONCURRENT, (b + 1) * CONCURRENT))
        got = await asyncio.gather(*(d.echo(i) for i in values))
        if got != values:
            raise AssertionError("an AsyncProxy reply differs from what was sent")
    return batches * CONCURRENT / (time.perf_counter() - t0)


def _threads_round(proxy: Any, calls: int) -> float:
    """calls/s of ``calls`` echoes from THREADS threads sharing ``proxy``, each reply checked."""
    each = max(1, calls // THREADS)
    start = threading.Barrier(THREADS + 1)
    errors: List[str] = []

    def run(first: int) -> None:
        echo = proxy.echo
        start.wait()
        try:
            for i in range(first, first + each):
                if echo(i) != i:
                    raise AssertionError("a Proxy reply differs from what was sent")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=run, args=(k * each,)) for k in range(THREADS)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise AssertionError(errors[0])
    return THREADS * each / took


def measure(rounds: int, calls: int, port: int, out: Any = None) -> Dict[str, Any]:
    """Interleave the two ``rounds`` times against the daemon serving on ``port``."""
    import malacoda
    import malacoda.aio
    from bench.systems import BENCH_NAME

    spec = f"{BENCH_NAME}:{port}"
    loop = asyncio.new_event_loop()
    d = malacoda.aio.get(spec, timeout=60)
    proxy = malacoda.get(spec, timeout=60)
    rows: List[Dict[str, float]] = []
    try:
        loop.run_until_complete(_async_round(d, CONCURRENT))  # warm-up both
        _threads_round(proxy, 2000)
        for r in range(rounds):
            row: Dict[str, float] = {}
            for kind in (["aio", "threads"] if r % 2 == 0 else ["threads", "aio"]):
                row[kind] = (loop.run_until_complete(_async_round(d, calls)) if kind == "aio"
                             else _threads_round(proxy, calls))
            row["ratio"] = row["aio"] / row["threads"]
            rows.append(row)
            if out is not None:
                print(f"round {r + 1:2d}: asyncio {row['aio']:8,.0f} calls/s, 16 threads "
                      f"{row['threads']:8,.0f} calls/s, ratio {row['ratio']:.2f}", file=out,
                      flush=True)
    finally:
        loop.run_until_complete(d.aclose())
        loop.close()
        proxy._close()
    ratios = [row["ratio"] for row in rows]
    return {"rounds": rounds, "calls": calls, "concurrent": CONCURRENT, "threads": THREADS,
            "aio": statistics.median(row["aio"] for row in rows),
            "aio_min": min(row["aio"] for row in rows), "aio_max": max(row["aio"] for row in rows),
            "threads_cps": statistics.median(row["threads"] for row in rows),
            "threads_min": min(row["threads"] for row in rows),
            "threads_max": max(row["threads"] for row in rows),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}


def main(argv: List[str]) -> int:
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    rounds = int(argv[0]) if argv else 10
    calls = int(argv[1]) if len(argv) > 1 else 5000
    if "MALACODA_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="malacoda-bench-aio-")
        os.chmod(home, 0o700)
        os.environ["MALACODA_HOME"] = home
    from bench.run import Server

    server = Server("malacoda")
    try:
        got = measure(rounds, calls, server.port, out=sys.stderr if as_json else sys.stdout)
    finally:
        server.stop()
    summary = (f"asyncio / 16 threads, calls/s: median {got['ratio']:.2f} (min "
               f"{got['ratio_min']:.2f}, max {got['ratio_max']:.2f}) over {rounds} rounds of "
               f"{calls} calls each way; asyncio {got['aio']:,.0f}, threads "
               f"{got['threads_cps']:,.0f} calls/s (medians)")
    if as_json:
        print(summary, file=sys.stderr)
        print(json.dumps(got))
    else:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
