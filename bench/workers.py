"""Client processes: each takes commands over a pipe and measures calls of one system."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.harness import pin_threads
from bench.systems import Client, small_value


def percentile(sorted_values: List[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(round(q / 100.0 * len(sorted_values) + 0.5))))
    return sorted_values[rank - 1]


ALL_CPUS = os.sched_getaffinity(0)


class Mismatch(AssertionError):
    pass


def _checked(call: Callable[[Any], Any], value: Any) -> None:
    result = call(value)
    if result != value:
        raise Mismatch(f"echo returned {result!r:.60} for {value!r:.60}")


def latency(client: Client, value: Any, warmup: int, calls: int) -> Dict[str, Any]:
    """``calls`` sequential checked calls; per-call times in microseconds."""
    call = client.call
    for _ in range(warmup):
        _checked(call, value)
    times: List[float] = []
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        result = call(value)
        times.append(clock() - t0)
        if result != value:
            raise Mismatch(f"echo returned {result!r:.60}")
    times.sort()
    us = [t * 1e6 for t in times]
    return {"p50": percentile(us, 50), "p99": percentile(us, 99), "calls": calls}


def timeline(client: Client, value: Any, start: float, window: float) -> List[Tuple[float, float]]:
    """Sequential checked calls for ``window`` s: (monotonic start, microseconds) of each."""
    call = client.call
    while time.monotonic() < start:
        time.sleep(0.0005)
    end = start + window
    out: List[Tuple[float, float]] = []
    now = time.monotonic
    while True:
        t0 = now()
        if t0 >= end:
            return out
        _checked(call, value)
        out.append((t0, (now() - t0) * 1e6))


def _run_window(call: Callable[[Any], Any], value: Any, start: float, window: float) -> int:
    while time.monotonic() < start:
        time.sleep(0.0005)
    end = start + window
    count = 0
    now = time.monotonic
    while now() < end:
        _checked(call, value)
        count += 1
    return count


def shared(client: Client, value: Any, threads: int, window: float) -> Dict[str, Any]:
    """Calls/s of one thread, then of ``threads`` threads sharing the same client object."""
    call = client.call
    for _ in range(200):
        _checked(call, value)
    single = _run_window(call, value, time.monotonic(), window) / window
    counts: List[int] = []
    errors: List[str] = []
    start = time.monotonic() + 0.05

    def run() -> None:
        try:
            counts.append(_run_window(call, value, start, window))
        except Exception as exc:  # reported: some systems forbid or break under sharing
            errors.append(f"{type(exc).__name__}: {exc}"[:160])

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(window + 30)
    if any(t.is_alive() for t in pool):
        errors.append("threads still blocked 30 s after the window")
    return {"single": single, "shared": sum(counts) / window if not errors else None,
            "errors": errors[:3], "failed_threads": len(errors)}


def worker_main(conn: Connection) -> None:
    """Serve commands from the harness until ``quit``."""
    client: Optional[Client] = None
    value: Any = None
    while True:
        cmd = conn.recv()
        op = cmd["op"]
        try:
            if op == "quit":
                if client is not None:
                    client.close()
                conn.send({"ok": True})
                return
            if op == "pin":  # every thread of this process, zmq's I/O threads included
                pin_threads(cmd["cpus"] or sorted(ALL_CPUS))
                conn.send({"ok": True})
                continue
            if op == "connect":
                if client is not None:
                    client.close()
                client = Client(cmd["system"], cmd["port"])
                value = small_value(cmd["system"])
                for _ in range(cmd.get("warmup", 100)):
                    _checked(client.call, value)
                result: Any = {"ok": True}
            elif op == "disconnect":
                if client is not None:
                    client.close()
                client = None
                result = {"ok": True}
            elif op == "latency":
                assert client is not None
                result = latency(client, value, cmd["warmup"], cmd["calls"])
            elif op == "window":
                assert client is not None
                result = {"count": _run_window(client.call, value, cmd["start"], cmd["window"])}
            elif op == "bytes":
                assert client is not None
                payload = os.urandom(cmd["size"])
                result = latency(client, payload, cmd["warmup"], cmd["calls"])
            elif op == "shared":
                assert client is not None
                result = shared(client, value, cmd["threads"], cmd["window"])
            elif op == "call":
                assert client is not None
                if "at" in cmd:
                    time.sleep(max(0.0, cmd["at"] - time.monotonic()))
                began = time.monotonic()
                value = getattr(client.proxy, cmd["method"])(*cmd.get("args", ()))
                result = {"value": value, "began": began, "ended": time.monotonic()}
            elif op == "timeline":
                assert client is not None
                result = {"calls": timeline(client, value, cmd["start"], cmd["window"])}
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        conn.send(result)


class Worker:
    """A client process and the pipe to it."""

    def __init__(self, ctx: Any) -> None:
        self.conn, child = mp.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def send(self, **cmd: Any) -> None:
        self.conn.send(cmd)

    def result(self, timeout: float = 300.0) -> Dict[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"client process {self.proc.pid} did not answer in {timeout} s")
        answer = self.conn.recv()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def ask(self, timeout: float = 300.0, **cmd: Any) -> Dict[str, Any]:
        self.send(**cmd)
        return self.result(timeout)

    def stop(self) -> None:
        try:
            self.ask(timeout=10, op="quit")
        except Exception:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
