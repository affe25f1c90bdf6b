"""Supervisor measurements: CLI start-up, ``status --all --json`` with many daemons,
start-to-ready, name resolution.

Command times are ratios to ``python -c "import click, zmq"`` measured in the same run (what any
Python CLI on ZeroMQ pays before it does anything). Parts of the CLI that this tree does not
have yet are reported as not measured.
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
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent


def _timed_runs(argv: List[str], runs: int, env: Dict[str, str], cwd: Path,
                ok_codes: tuple = (0,)) -> List[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in ok_codes:
            raise RuntimeError(f"{' '.join(argv[-3:])} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-400:]}")
    return times


def _row(name: str, values: List[float], unit: str, scale: float,
         base: Optional[float] = None) -> Dict[str, Any]:
    mid = statistics.median(values)
    fmt = "{:.0f}" if mid * scale >= 100 else "{:.1f}"
    row = {"name": name, "median": f"{fmt.format(mid * scale)} {unit}",
           "spread": f"{fmt.format(min(values) * scale)}–{fmt.format(max(values) * scale)} {unit}",
           "value": mid, "n": len(values)}
    if base:
        row["ratio"] = f"{mid / base:.2f}×"
    return row


def cli_command() -> Optional[List[str]]:
    """How to run malacodactl from this tree, or None when it has no CLI yet."""
    import importlib.util

    if importlib.util.find_spec("malacoda.cli") is None:
        return None
    script = Path(sys.executable).parent / "malacodactl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "malacoda"]


class Daemons:
    """``count`` idle daemons started library-style (``BenchIdle(name=...)``), each timed from
    the process start to its registry entry (the moment a proxy can find it)."""

    def __init__(self, env: Dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.procs: List[subprocess.Popen] = []
        self.ready_times: List[float] = []

    def start(self, name: str) -> None:
        from malacoda.host.registry import Registry

        code = "import sys; from bench.daemon import BenchIdle; BenchIdle(name=sys.argv[1])"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, name], env=self.env,
                                cwd=str(self.root), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        registry = Registry()
        deadline = time.monotonic() + 60
        while True:
            entry, state = registry.read(name)
            if state == "running" and entry is not None and entry.pid == proc.pid:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon {name} exited: {proc.stderr.read().decode()[-400:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon {name} did not register within 60 s")
            time.sleep(0.002)
        self.ready_times.append(time.perf_counter() - t0)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()


def _in_process(fn: Callable[[], Any], count: int) -> List[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(daemons: int, runs: int, env: Dict[str, str], root: Path) -> Dict[str, Any]:
    import malacoda
    from malacoda.resolve import resolve

    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    base_times = _timed_runs([sys.executable, "-c", "import click, zmq"], runs, env, root)
    base = statistics.median(base_times)
    rows.append(_row('`python -c "import click, zmq"` (the yardstick)', base_times, "ms", 1e3,
                     base))
    cli = cli_command()
    if cli is not None:
        rows.append(_row("`malacodactl --version`",
                         _timed_runs(cli + ["--version"], runs, env, root), "ms", 1e3, base))
    group = Daemons(env, root)
    try:
        for i in range(daemons):
            group.start(f"BenchIdle{i}")
        rows.append(_row(f"start-to-ready, library level (process start → registered), "
                         f"{daemons} daemons one after another", group.ready_times, "ms", 1e3))
        if cli is not None:
            rows.append(_row(f"`malacodactl status --all --json`, {daemons} daemons running",
                             _timed_runs(cli + ["status", "--all", "--json"], runs, env, root,
                                         ok_codes=(0, 3)), "ms", 1e3, base))
            rows.append(_unit_start(cli, runs, env, root))
        name = "BenchIdle0"
        resolve(name)
        rows.append(_row("name resolution `resolve(NAME)` (registry read + liveness check)",
                         _in_process(lambda: resolve(name), 200), "µs", 1e6))

        def first_call() -> None:
            with malacoda.get(name) as proxy:
                assert proxy.ping() == "pong"

        rows.append(_row("`malacoda.get(NAME)` + first call (resolve, connect, describe, call)",
                         _in_process(first_call, 30), "ms", 1e3))
    finally:
        group.stop()
    if cli is None:
        notes.append("`malacodactl` is not in this tree yet: `--version`, `status --all --json` "
                     "and the start of a unit through the supervisor are not measured; "
                     "start-to-ready is measured at library level (a daemon process started "
                     "directly, timed until its registry entry is written and its pid "
                     "confirmed).")
    return {"rows": rows, "notes": notes, "baseline": base}


def _unit_start(cli: List[str], runs: int, env: Dict[str, str], root: Path) -> Dict[str, Any]:
    """``malacodactl start`` of one unit (returns once ready) and its stop, ``runs`` times."""
    with tempfile.TemporaryDirectory(prefix="malacoda-bench-unit-") as tmp:
        conf = Path(tmp) / "conf"
        conf.mkdir(mode=0o700)
        os.chmod(tmp, 0o700)
        unit = conf / "BenchUnit.toml"
        unit.write_text(f'class = "bench.daemon:BenchIdle"\npath = ["{root}"]\n')
        unit.chmod(0o600)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run(cli + ["start", "BenchUnit"], env=env, cwd=tmp,
                                  capture_output=True, timeout=120)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError("malacodactl start BenchUnit: "
                                   + proc.stderr.decode(errors="replace")[-400:])
            subprocess.run(cli + ["stop", "BenchUnit"], env=env, cwd=tmp, capture_output=True,
                           timeout=120)
    return _row("`malacodactl start UNIT` (returns once the daemon is ready)", times, "ms", 1e3)
