"""What a change to the daemon costs a small call: the bench daemon of another checkout (the
baseline, e.g. main) against this one's, side by side, interleaved in one client process.

``python -m bench.guardcost BASELINE_DIR [rounds] [calls]``: both daemons run at once (the
baseline's code from ``BASELINE_DIR``, each in a process of its own, both owner-only); each
round times ``calls`` sequential ``d.echo('hello')`` on one, then on the other (the order
alternates), and prints each round's p50 ratio (this checkout / baseline) and the ratio of the
daemons' CPU time per call (user + system, all threads: less at the mercy of the scheduler
than a latency on a shared machine), then the medians and their spread. Written for the
per-connection bound of unfinished messages (``malacoda.daemon.peers``): what it adds to a
small call is counting the request's bytes, and the guard's looks while calls come.

``python -m bench.guardcost --inprocess [rounds] [calls]``: the same in one process, without
another checkout: an in-process ``Server`` with the per-connection count and one without it
(``frames.recv_routed``, no ``PeerBook`` in its guard), started in turn, alternating; the
medians of their p50 and of the process's CPU time per call (client included, the same for
both).
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from bench.harness import ROOT, _readline

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


def _inprocess(rounds: int, calls: int) -> int:
    import zmq

    from malacoda.daemon.dispatch import Dispatcher
    from malacoda.daemon.server import Server
    from malacoda.wire import protocol as p
    from malacoda.wire.frames import recv_routed

    class Echo:
        def echo(self, value: object) -> object:
            return value

    def run(counted: bool) -> tuple[float, float]:
        server = Server(Dispatcher(Echo(), "bench", "1"), max_message=64 << 20)
        if not counted:
            server.guard.peers = None
            server.peers.recv = lambda sock, flags=0: recv_routed(sock, flags)  # type: ignore
        port = server.start()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"tcp://127.0.0.1:{port}")

        sent = itertools.count()

        def call(value: str) -> None:
            sock.send_multipart(p.request_frames(b"r%d" % next(sent), p.CALL, "echo",
                                                 [[value], {}], None))
            sock.recv_multipart()

        try:
            _p50(call, 300)
            cpu = time.process_time()
            p50 = _p50(call, calls)
            return p50, (time.process_time() - cpu) / calls * 1e6
        finally:
            sock.close(0)
            ctx.term()
            server.close()

    results: Dict[bool, List[tuple[float, float]]] = {True: [], False: []}
    for r in range(rounds):
        for counted in ((True, False) if r % 2 else (False, True)):
            results[counted].append(run(counted))
    p50s = [a[0] / b[0] for a, b in zip(results[True], results[False])]
    cpus = [a[1] / b[1] for a, b in zip(results[True], results[False])]
    for counted in (False, True):
        print(f"{'counted' if counted else 'plain  '}: p50 "
              f"{statistics.median(x[0] for x in results[counted]):.1f} µs, CPU per call "
              f"{statistics.median(x[1] for x in results[counted]):.1f} µs")
    print(f"counted / plain: p50 median {statistics.median(p50s):.3f} (min {min(p50s):.3f}, "
          f"max {max(p50s):.3f}); CPU per call median {statistics.median(cpus):.3f} (min "
          f"{min(cpus):.3f}, max {max(cpus):.3f}) over {rounds} rounds of {calls} calls")
    return 0


def main(argv: List[str]) -> int:
    if argv and argv[0] == "--inprocess":
        return _inprocess(int(argv[1]) if len(argv) > 1 else 10,
                          int(argv[2]) if len(argv) > 2 else 5000)
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
        import psutil

        cpu_of = {label: psutil.Process(proc.pid) for label, proc in procs.items()}
        ratios, cpu_ratios = [], []
        for r in range(rounds):
            order = ["base", "new"][:: 1 if r % 2 == 0 else -1]
            p50, cpu = {}, {}
            for label in order:
                before = sum(cpu_of[label].cpu_times()[:2])
                p50[label] = _p50(calls_of[label], calls)
                cpu[label] = (sum(cpu_of[label].cpu_times()[:2]) - before) / calls * 1e6
            ratios.append(p50["new"] / p50["base"])
            cpu_ratios.append(cpu["new"] / cpu["base"] if cpu["base"] else float("nan"))
            print(f"round {r + 1:2d}: baseline {p50['base']:6.1f} µs, this {p50['new']:6.1f} µs, "
                  f"ratio {ratios[-1]:.3f}; daemon CPU per call {cpu['base']:5.1f} / "
                  f"{cpu['new']:5.1f} µs, ratio {cpu_ratios[-1]:.3f}", flush=True)
        for what, values in (("small-call p50", ratios), ("daemon CPU per call", cpu_ratios)):
            q = statistics.quantiles(values, n=4)
            print(f"this / baseline {what}: median {statistics.median(values):.3f} "
                  f"(quartiles {q[0]:.3f}–{q[2]:.3f}, min {min(values):.3f}, "
                  f"max {max(values):.3f}) over {rounds} rounds of {calls} calls")
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
