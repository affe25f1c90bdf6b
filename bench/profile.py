"""Where a small call's time goes: CPU per call of client and server, raw REQ/REP vs Malacoda.

``python -m bench.profile [calls]``. For each system: a fresh server process, one client in
this process making sequential ``echo`` calls; reports wall time per call, user and system
CPU per call of the client process and of the server process, and the server's context
switches per call. CPU time is less at the mercy of the scheduler than wall time.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from typing import Dict, List

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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
