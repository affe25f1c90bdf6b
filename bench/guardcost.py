"""What a change to the daemon costs a small call: the bench daemon of another checkout (the
baseline, e.g. main) against this one's, side by side, interleaved in one client process.

``python -m bench.guardcost BASELINE_DIR [rounds] [calls]``: both daemons run at once (the
baseline's code from ``BASELINE_DIR``, each in a process of its own, both owner-only); each
round times ``calls`` sequential ``d.echo('hello')`` on one, then on the other (the order
alternates), and prints each round's p50 ratio (this checkout / baseline), then the median
ratio and its spread. Written for the per-connection bound of unfinished messages
(``malacoda.daemon.peers``): what it adds to a small call is counting the request's bytes.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from bench.run import ROOT, _readline

SERVE = ("from bench.systems import _exit_with_parent, _ready; _exit_with_parent(); "
         "from bench.daemon import serve_bench_echo; serve_bench_echo(_ready, name={name!r})")


def _start(root: Path, name: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(name=name)], cwd=str(root),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    line = _readline(proc, 30.0)
    if not line.startswith("READY "):
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"{name} did not start: {line!r}")
    return proc, int(line.split()[1])


def _p50(call: Callable[[str], object], n: int) -> float:
    times: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        call("hello")
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    baseline = Path(argv[0]).resolve()
    rounds = int(argv[1]) if len(argv) > 1 else 20
    calls = int(argv[2]) if len(argv) > 2 else 1000
    home = tempfile.mkdtemp(prefix="malacoda-guardcost-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    import malacoda

    procs: Dict[str, subprocess.Popen] = {}
    try:
        ports = {}
        for label, root, name in (("base", baseline, "BenchEchoBase"), ("new", ROOT, "BenchEchoNew")):
            procs[label], ports[label] = _start(root, name)
        proxies = {"base": malacoda.get(f"BenchEchoBase:{ports['base']}"),
                   "new": malacoda.get(f"BenchEchoNew:{ports['new']}")}
        calls_of = {label: (lambda value, d=d: d.echo(value)) for label, d in proxies.items()}
        for call in calls_of.values():
            _p50(call, 200)  # warm-up
        ratios = []
        for r in range(rounds):
            order = ["base", "new"][:: 1 if r % 2 == 0 else -1]
            p50 = {label: _p50(calls_of[label], calls) for label in order}
            ratios.append(p50["new"] / p50["base"])
            print(f"round {r + 1:2d}: baseline {p50['base']:6.1f} µs, this {p50['new']:6.1f} µs, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        q = statistics.quantiles(ratios, n=4)
        print(f"this / baseline small-call p50: median {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}–{q[2]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}) "
              f"over {rounds} rounds of {calls} calls")
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
