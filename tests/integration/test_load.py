"""Load: many callers at once get exactly their own replies; a soak keeps the daemon's RSS flat.

The figures these tests print (``pytest -s``) are the ones in docs/reliability.md. Reproduce::

    python3 -m pytest -s -m slow tests/integration/test_load.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import psutil
import pytest

import malacoda
from tests.support import ROOT
from tests.support.load_caller import Tally, run_threads

PROCESSES = 2  # caller processes, each with THREADS_PER_PROCESS threads (a proxy each)
THREADS_PER_PROCESS = 16
SHARED_THREADS = 32  # threads of this process sharing one proxy
CALLERS = PROCESSES * THREADS_PER_PROCESS + SHARED_THREADS  # 64
CALLS = int(os.environ.get("MALACODA_LOAD_CALLS", "2000"))
SOAK_SECONDS = float(os.environ.get("MALACODA_SOAK_SECONDS", "60"))


def report(**figures) -> None:
    print("\nFIGURES " + json.dumps(figures, sort_keys=True), flush=True)


@pytest.mark.slow
def test_64_callers_get_their_own_replies_none_lost_or_doubled(start_daemon):
    proc = start_daemon("HostileDaemon")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    others = [
        subprocess.Popen([sys.executable, "-m", "tests.support.load_caller", "HostileDaemon",
                          str(1000 * (n + 1)), str(THREADS_PER_PROCESS), str(CALLS)],
                         cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in range(PROCESSES)
    ]
    try:
        tally = run_threads("HostileDaemon", 0, SHARED_THREADS, CALLS,
                            shared=malacoda.get("HostileDaemon"))
        for other in others:
            out, err = other.communicate(timeout=600)
            assert other.returncode == 0, err.decode()
            tally.add(Tally(**json.loads(out.decode().strip().splitlines()[-1])))
    finally:
        for other in others:
            if other.poll() is None:
                other.kill()
                other.wait()
    elapsed = time.monotonic() - started
    total = CALLERS * CALLS
    distinct, doubled, ran = malacoda.get("HostileDaemon").record_stats()
    rss = psutil.Process(proc.pid).memory_info().rss
    report(test="load", callers=CALLERS, calls_each=CALLS, total=total, ok=tally.ok,
           busy=tally.busy, errors=len(tally.errors), mismatched=tally.mismatched,
           seconds=round(elapsed, 1), calls_per_second=round(total / elapsed),
           daemon_rss_mib=round(rss / 2**20, 1))
    assert tally.errors == []
    assert tally.mismatched == 0
    assert tally.ok == total
    assert (distinct, doubled, ran) == (total, 0, total)


@pytest.mark.slow
def test_soak_keeps_the_daemon_rss_flat(start_daemon):
    """A minute of mixed calls from 8 threads, RSS sampled every second: the median RSS of the
    second half is within 32 MiB of the second quarter's (the first is the warm-up)."""
    proc = start_daemon("HostileDaemon")
    daemon = psutil.Process(proc.pid)
    d = malacoda.get("HostileDaemon")
    stop = threading.Event()
    errors, calls = [], [0]
    lock = threading.Lock()

    def caller(n):
        own = malacoda.get("HostileDaemon") if n % 2 else d
        i = 0
        try:
            while not stop.is_set():
                i += 1
                big = b"b" * ((i % 7) * 50_000)
                assert own.echo((n, i, big)) == (n, i, big)
                assert own.add(i, n) == i + n
                own.pst_counter = i
                with pytest.raises(ValueError):
                    own.fail_value("soak")
                if i % 50 == 0:
                    assert own.slow(0.01) == "slept 0.01"
                with lock:
                    calls[0] += 5
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    samples = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < SOAK_SECONDS and not errors:
            stop.wait(1.0)
            samples.append((time.monotonic() - started, daemon.memory_info().rss))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    second = [rss for at, rss in samples if SOAK_SECONDS / 4 <= at < SOAK_SECONDS / 2]
    last = [rss for at, rss in samples if at >= SOAK_SECONDS / 2]
    growth = statistics.median(last) - statistics.median(second)
    peak = max(rss for at, rss in samples if at >= SOAK_SECONDS / 4)
    report(test="soak", seconds=round(samples[-1][0]), calls=calls[0],
           rss_median_second_quarter_mib=round(statistics.median(second) / 2**20, 1),
           rss_median_second_half_mib=round(statistics.median(last) / 2**20, 1),
           rss_peak_after_warmup_mib=round(peak / 2**20, 1), growth_mib=round(growth / 2**20, 1),
           samples_mib=[round(rss / 2**20) for _, rss in samples])
    # Flat: no trend from the second quarter to the second half. The RSS swings by ±30 MiB from
    # second to second (up to 350 kB payloads in flight, and a reply cache of up to 8 MiB);
    # a leak of 100 bytes a call would add ~40 MiB in the ~400,000 calls of the second half.
    assert growth < 32 << 20, f"the median RSS grew by {growth / 2**20:.1f} MiB"
    assert peak < 400 << 20
