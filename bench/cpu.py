"""Where a small call's time goes: CPU per call of client and server, raw REQ/REP vs Malacoda.

``python -m bench.cpu [calls]``. For each system: a fresh server process, one client in
this process making sequential ``echo`` calls, placed by the scheduler and then with client
and server pinned to one CPU; reports wall time per call, user and system CPU per call of each
side's Python threads and of its ZeroMQ I/O thread, and the server's context switches per
call. CPU time is less at the mercy of the scheduler than wall time.

Then the same for 16 client processes calling at once for a short window: calls/s, and the
CPU per call of all clients together and of the server. On 2 CPUs shared by 16 clients and
the server, calls/s follow the total CPU a call costs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set

import psutil

from bench.harness import Server, pin_threads, timed_calls
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


def _threads(pid: int) -> Dict[str, List[float]]:
    """User and system CPU seconds of process ``pid``, by thread: its ZeroMQ I/O threads
    (``zmq``) and the others (``python``: the caller, the daemon's leader and standby)."""
    groups = {"python": [0.0, 0.0], "zmq": [0.0, 0.0]}
    for thread in psutil.Process(pid).threads():
        try:
            with open(f"/proc/{pid}/task/{thread.id}/comm") as f:
                name = f.read()
        except OSError:
            continue  # it ended meanwhile
        group = groups["zmq" if name.startswith("ZMQbg") else "python"]
        group[0] += thread.user_time
        group[1] += thread.system_time
    return groups


def profile(system: str, calls: int, cpus: Optional[Set[int]] = None) -> Dict[str, float]:
    """One client in this process, sequential calls; ``cpus``: client and server pinned there."""
    server = Server(system, cpus=cpus)
    allowed = os.sched_getaffinity(0)
    try:
        client = Client(system, server.port)
        if cpus is not None:
            pin_threads(cpus)
        value = small_value(system)
        for _ in range(500):
            client.call(value)
        s0, c0, x0 = _threads(server.proc.pid), _threads(os.getpid()), _switches(server.proc.pid)
        t0 = time.perf_counter()
        for _ in range(calls):
            if client.call(value) != value:
                raise AssertionError("wrong reply")
        wall = time.perf_counter() - t0
        s1, c1, x1 = _threads(server.proc.pid), _threads(os.getpid()), _switches(server.proc.pid)
        client.close()
        us = 1e6 / calls
        result = {"wall": wall * us, "server_switches": (x1 - x0) / calls}
        for side, before, after in (("client", c0, c1), ("server", s0, s1)):
            for group in ("python", "zmq"):
                result[f"{side}_{group}_user"] = (after[group][0] - before[group][0]) * us
                result[f"{side}_{group}_sys"] = (after[group][1] - before[group][1]) * us
        return result
    finally:
        if cpus is not None:
            pin_threads(allowed)
        server.stop()


def _cpu(pid: int) -> List[float]:
    """User and system CPU seconds of process ``pid`` (all its threads)."""
    t = psutil.Process(pid).cpu_times()
    return [t.user, t.system]


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
    print("CPU µs per call, user / system, by thread: the calling thread and the daemon's Python "
          "threads (python), and each side's ZeroMQ I/O thread (zmq).")
    print()
    print("| system | placement | wall µs/call | client python | client zmq | server python | "
          "server zmq | server context switches |")
    print("|---|---|---|---|---|---|---|---|")
    for cpus, placement in ((None, "scheduler"), ({0}, "one CPU")):
        for system in ("zmq_reqrep", "malacoda", "zmq_reqrep", "malacoda"):
            r = profile(system, calls, cpus)
            cells = " | ".join(f"{r[f'{side}_user']:.1f} / {r[f'{side}_sys']:.1f}"
                               for side in ("client_python", "client_zmq", "server_python",
                                            "server_zmq"))
            print(f"| `{system}` | {placement} | {r['wall']:.1f} | {cells} | "
                  f"{r['server_switches']:.2f} |")
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
