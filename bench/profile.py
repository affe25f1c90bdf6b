"""Where a small call's time goes: CPU per call of client and server, raw REQ/REP vs Malacoda.

``python -m bench.profile [calls]``. For each system: a fresh server process, one client in
this process making sequential ``echo`` calls; reports wall time per call, user and system
CPU per call of the client process and of the server process, and the server's context
switches per call. CPU time is less at the mercy of the scheduler than wall time.

Then the same for 16 client processes calling at once for a short window: calls/s, and the
CPU per call of all clients together and of the server. On 2 CPUs shared by 16 clients and
the server, calls/s follow the total CPU a call costs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import psutil

from bench.run import Server
from bench.systems import Client, small_value


def _switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            pass
    return total


def profile(system: str, calls: int) -> Dict[str, float]:
    server = Server(system)
    try:
        client = Client(system, server.port)
        value = small_value(system)
        for _ in range(500):
            client.call(value)
        sp = psutil.Process(server.proc.pid)
        s0, c0, x0 = sp.cpu_times(), resource.getrusage(resource.RUSAGE_SELF), _switches(sp.pid)
        t0 = time.perf_counter()
        for _ in range(calls):
            if client.call(value) != value:
                raise AssertionError("wrong reply")
        wall = time.perf_counter() - t0
        s1, c1, x1 = sp.cpu_times(), resource.getrusage(resource.RUSAGE_SELF), _switches(sp.pid)
        client.close()
        us = 1e6 / calls
        return {"wall": wall * us, "client_user": (c1.ru_utime - c0.ru_utime) * us,
                "client_sys": (c1.ru_stime - c0.ru_stime) * us,
                "server_user": (s1.user - s0.user) * us, "server_sys": (s1.system - s0.system) * us,
                "server_switches": (x1 - x0) / calls}
    finally:
        server.stop()


def _cpu(pid: int) -> List[float]:
    """User and system CPU seconds of process ``pid`` (all its threads)."""
    t = psutil.Process(pid).cpu_times()
    return [t.user, t.system]


def timed_calls(call: Callable[[], Any], start: float, window: float) -> Tuple[int, float, float]:
    """Warm ``call`` up, wait for ``start`` (``time.time()``), then call it for ``window``
    seconds: (calls, user CPU seconds, system CPU seconds) of this process meanwhile."""
    for _ in range(50):
        call()
    while time.time() < start:
        time.sleep(0.001)
    calls, t0 = 0, os.times()
    while time.time() < start + window:
        call()
        calls += 1
    t1 = os.times()
    return calls, t1.user - t0.user, t1.system - t0.system


def _window_client(system: str, port: int, start: float, window: float, out: Any) -> None:
    client = Client(system, port)
    value = small_value(system)

    def checked() -> None:
        if client.call(value) != value:
            raise AssertionError("wrong reply")

    out.put(timed_calls(checked, start, window))
    client.close()


def many_clients(system: str, clients: int = 16, window: float = 1.5) -> Dict[str, float]:
    server = Server(system)
    try:
        # Spawned, as 16 separate programs would be: forked children share the parent's
        # memory pages and measured 0.76-0.81x where spawned ones measured 0.58-0.61x.
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start = time.time() + 1.0
        procs = [ctx.Process(target=_window_client, args=(system, server.port, start, window, out))
                 for _ in range(clients)]
        for proc in procs:
            proc.start()
        while time.time() < start:
            time.sleep(0.001)
        s0 = _cpu(server.proc.pid)
        done = [out.get(timeout=window + 60) for _ in procs]
        s1 = _cpu(server.proc.pid)
        for proc in procs:
            proc.join(30)
        calls = sum(d[0] for d in done)
        us = 1e6 / calls
        return {"rate": calls / window, "client_user": sum(d[1] for d in done) * us,
                "client_sys": sum(d[2] for d in done) * us, "server_user": (s1[0] - s0[0]) * us,
                "server_sys": (s1[1] - s0[1]) * us}
    finally:
        server.stop()


def main(argv: List[str]) -> int:
    calls = int(argv[0]) if argv else 20000
    home = tempfile.mkdtemp(prefix="malacoda-profile-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    print("| system | wall µs/call | client user µs | client sys µs | server user µs | "
          "server sys µs | server context switches |")
    print("|---|---|---|---|---|---|---|")
    for system in ("zmq_reqrep", "malacoda", "zmq_reqrep", "malacoda"):
        r = profile(system, calls)
        print(f"| `{system}` | {r['wall']:.1f} | {r['client_user']:.1f} | {r['client_sys']:.1f} | "
              f"{r['server_user']:.1f} | {r['server_sys']:.1f} | {r['server_switches']:.2f} |")
    print()
    print("| system, 16 clients | calls/s | clients user µs | clients sys µs | server user µs | "
          "server sys µs | total CPU µs/call |")
    print("|---|---|---|---|---|---|---|")
    for system in ("zmq_reqrep", "malacoda", "zmq_reqrep", "malacoda"):
        r = many_clients(system)
        total = r["client_user"] + r["client_sys"] + r["server_user"] + r["server_sys"]
        print(f"| `{system}` | {r['rate']:,.0f} | {r['client_user']:.1f} | {r['client_sys']:.1f} | "
              f"{r['server_user']:.1f} | {r['server_sys']:.1f} | {total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
