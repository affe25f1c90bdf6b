"""What the measurements share: a system's echo server in a process of its own, the children's
environment, timed call loops and thread pinning (the driver, bench/run.py, and the single
studies, bench/cpu.py, clientcost.py and authcost.py, all use these)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from tests.support import pin_threads

__all__ = ["ROOT", "Server", "child_env", "pin_threads", "timed_calls"]

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """One system's echo server in a process (and session) of its own."""

    def __init__(self, system: str, timeout: float = 30.0, cpus: Optional[Any] = None) -> None:
        self.system = system
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.systems", system], cwd=str(ROOT), env=child_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=pin)  # before any thread exists: every thread inherits the CPUs
        line = _readline(self.proc, timeout)
        if not line.startswith("READY "):
            err = self.stop()
            raise RuntimeError(f"{system} server did not start: {line!r} {err[-800:]}")
        self.port = int(line.split()[1])

    def stop(self) -> str:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = b""
        return (err or b"").decode(errors="replace")


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        return ""
    return proc.stdout.readline().decode(errors="replace").strip()


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
