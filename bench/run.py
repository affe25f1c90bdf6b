"""The benchmark driver: servers, client processes, phases, repeats, then the report.

``python -m bench`` (full, a few minutes) or ``python -m bench --quick`` (under a minute).
Every server runs in its own process on 127.0.0.1; every client in another process. Systems
are measured in a rotated order in every repeat, each against a fresh server; cells report the
median over repeats and the spread (min–max). Every call's reply is checked.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench import report
from bench.harness import ROOT, Server, child_env
from bench.systems import FLOOR, SYSTEMS
from bench.workers import Worker, percentile


@dataclass
class Params:
    repeats: int
    warmup: int
    calls: int
    window: float
    mib_warmup: int
    mib_calls: int
    shared_window: float
    pst_mib: int
    placements: bool
    pst_saves: int
    daemons: int
    cli_runs: int
    units: int = 30  # units beside supervisord's programs (issue 14's targets: 30)

    @classmethod
    def for_mode(cls, quick: bool) -> Params:
        if quick:
            return cls(repeats=1, warmup=100, calls=600, window=0.7, mib_warmup=2, mib_calls=6,
                       shared_window=0.7, pst_mib=100, pst_saves=1, daemons=8, cli_runs=3, units=10,
                       placements=False)
        return cls(repeats=3, warmup=200, calls=2000, window=2.0, mib_warmup=3, mib_calls=20,
                   shared_window=2.0, pst_mib=100, pst_saves=5, daemons=50, cli_runs=7,
                   placements=True)


class Pool:
    """The client processes, started once and reused by every system."""

    def __init__(self, size: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.workers = [Worker(self.ctx) for _ in range(size)]

    def replace(self, index: int) -> None:
        old = self.workers[index]
        old.proc.kill()
        old.proc.join(5)
        self.workers[index] = Worker(self.ctx)

    def connect(self, count: int, system: str, port: int, connected: List[bool]) -> None:
        todo = [i for i in range(count) if not connected[i]]
        for i in todo:
            self.workers[i].send(op="connect", system=system, port=port, warmup=50)
        for i in todo:
            self.workers[i].result(120)
            connected[i] = True

    def disconnect(self, connected: List[bool]) -> None:
        for i, on in enumerate(connected):
            if on:
                self.workers[i].ask(timeout=30, op="disconnect")
                connected[i] = False

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


PLACEMENTS = {"same": ({0}, {0}), "split": ({0}, {1})}  # (server CPUs, client CPUs)


def _throughput(pool: Pool, system: str, port: int, n: int, prm: Params) -> float:
    connected = [False] * len(pool.workers)
    try:
        pool.connect(n, system, port, connected)
        start = time.monotonic() + 0.3
        for w in pool.workers[:n]:
            w.send(op="window", start=start, window=prm.window)
        return sum(w.result(prm.window + 120)["count"] for w in pool.workers[:n]) / prm.window
    finally:
        pool.disconnect(connected)


def _shared(pool: Pool, system: str, port: int, prm: Params, out: Dict[str, Any]) -> None:
    last = len(pool.workers) - 1
    wl = pool.workers[last]
    wl.ask(op="connect", system=system, port=port, warmup=50)
    try:
        shared = wl.ask(timeout=prm.shared_window * 2 + 60, op="shared", threads=16,
                        window=prm.shared_window)
        out["shared_single"], out["shared"] = shared["single"], shared["shared"]
        out["shared_errors"] = shared["errors"]
        wl.ask(timeout=30, op="disconnect")
    except RuntimeError as exc:
        out["shared_single"], out["shared"], out["shared_errors"] = None, None, [str(exc)]
    if out.get("shared_errors"):
        pool.replace(last)  # its threads may still be stuck in the broken client


def measure_repeat(order: List[str], pool: Pool, prm: Params,
                   failures: List[str], log: Any) -> Dict[str, Dict[str, Any]]:
    """One repeat: every phase, and within a phase every system back to back (so that the
    ratios compare measurements taken seconds apart on a machine whose load drifts)."""
    out: Dict[str, Dict[str, Any]] = {s: {} for s in order}
    w0 = pool.workers[0]

    def guarded(what: str, system: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            failures.append(f"{system} {what}: {exc}")
            log(f"  FAILED {system} {what}: {exc}")
            for i in range(len(pool.workers)):  # a client may be stuck in a broken connection
                pool.replace(i)

    if prm.placements:
        for placement, (server_cpus, client_cpus) in PLACEMENTS.items():
            log(f"latency with CPU placement '{placement}'")
            for system in order:
                def pinned(system: str = system, placement: str = placement,
                           server_cpus: Any = server_cpus, client_cpus: Any = client_cpus) -> None:
                    server = Server(system, cpus=server_cpus)
                    try:
                        w0.ask(op="pin", cpus=sorted(client_cpus))
                        w0.ask(op="connect", system=system, port=server.port, warmup=50)
                        lat = w0.ask(op="latency", warmup=prm.warmup, calls=prm.calls)
                        out[system][f"p50_{placement}"] = lat["p50"]
                        out[system][f"p99_{placement}"] = lat["p99"]
                        w0.ask(op="disconnect")
                    finally:
                        w0.ask(op="pin", cpus=None)
                        server.stop()
                guarded(f"latency ({placement})", system, pinned)
    servers: Dict[str, Server] = {}
    try:
        for system in order:
            servers[system] = Server(system)
        log("latency")
        for system in order:
            def latency(system: str = system) -> None:
                w0.ask(op="connect", system=system, port=servers[system].port, warmup=50)
                lat = w0.ask(op="latency", warmup=prm.warmup, calls=prm.calls)
                out[system]["p50"], out[system]["p99"] = lat["p50"], lat["p99"]
                mib = w0.ask(op="bytes", size=1 << 20, warmup=prm.mib_warmup, calls=prm.mib_calls)
                out[system]["mib_ms"] = mib["p50"] / 1000.0
                w0.ask(op="disconnect")
            guarded("latency", system, latency)
        for n in (1, 4, 16):
            log(f"throughput, {n} client process(es)")
            for system in order:
                def tput(system: str = system, n: int = n) -> None:
                    out[system][f"tput{n}"] = _throughput(pool, system, servers[system].port, n,
                                                          prm)
                guarded(f"throughput {n}", system, tput)
        log("one client shared by 16 threads")
        for system in order:
            if system != FLOOR:  # a REQ socket cannot be shared by threads at all
                guarded("shared", system,
                        lambda system=system: _shared(pool, system, servers[system].port, prm,
                                                      out[system]))
    finally:
        for server in servers.values():
            server.stop()
    return out


def measure_pst(pool: Pool, prm: Params) -> Dict[str, Any]:
    """Call latency while the daemon saves ``pst_mib`` MiB of pst state, against idle."""
    server = Server("malacoda")
    w0, w1 = pool.workers[0], pool.workers[1]
    try:
        w0.ask(op="connect", system="malacoda", port=server.port, warmup=200)
        w1.ask(op="connect", system="malacoda", port=server.port, warmup=10)
        w1.ask(timeout=120, op="call", method="fill", args=[prm.pst_mib])
        first = w1.ask(timeout=120, op="call", method="save")["value"]  # the first save
        # One client calls without pause from 0.5 s before each save to 0.5 s after it; the
        # calls that start while the save runs are "during", the others "idle".
        during: List[float] = []
        idle: List[float] = []
        saves: List[float] = []
        ratios: List[float] = []  # per save: p99 during / p99 of the same client around it
        for _ in range(prm.pst_saves):
            start = time.monotonic() + 0.2
            w0.send(op="timeline", start=start, window=first * 2 + 1.0)
            w1.send(op="call", method="save", at=start + 0.5)
            save = w1.result(300)
            line = w0.result(300)["calls"]
            saves.append(save["value"])
            mine_during, mine_idle = [], []
            for t0, dt in line:
                (mine_during if save["began"] <= t0 <= save["ended"] else mine_idle).append(dt)
            during += mine_during
            idle += mine_idle
            ratios.append(percentile(sorted(mine_during), 99) / percentile(sorted(mine_idle), 99))
        during.sort()
        idle.sort()
        state = Path(os.environ["MALACODA_HOME"])
        files = list(state.rglob("BenchEcho.pst"))
        size = files[0].stat().st_size if files else 0
        return {
            "idle_p50": percentile(idle, 50), "idle_p99": percentile(idle, 99),
            "idle_calls": len(idle),
            "save_p50": percentile(during, 50), "save_p99": percentile(during, 99),
            "save_calls": len(during), "save_seconds": sorted(saves), "file_bytes": size,
            "mib": prm.pst_mib, "ratios": ratios,
        }
    finally:
        for w in (w0, w1):
            try:
                w.ask(timeout=30, op="disconnect")
            except Exception:
                pass
        server.stop()


def measure_aio(rounds: int, calls: int) -> Dict[str, Any]:
    """``bench.aio`` in a client process of its own: asyncio against 16 threads."""
    done = subprocess.run([sys.executable, "-m", "bench.aio", str(rounds), str(calls), "--json"],
                          cwd=str(ROOT), env=child_env(), capture_output=True, timeout=600)
    if done.returncode:
        raise RuntimeError(done.stderr.decode(errors="replace")[-800:])
    got: Dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return got


def machine_info() -> Dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("pyzmq", "msgpack", "Pyro5", "serpent", "rpyc", "dill", "matplotlib"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = "missing"
    import zmq

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "libraries": versions,
        "libzmq": zmq.zmq_version(),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short repeat (under a minute)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems")
    ap.add_argument("--repeats", type=int, help="override the number of repeats")
    ap.add_argument("--out", help="Markdown report (default: docs/benchmarks.md, or "
                                  "build/bench-quick.md with --quick)")
    ap.add_argument("--png", help="chart (default: docs/benchmarks.png, or build/bench-quick.png)")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: calls,pst,aio,supervisor")
    args = ap.parse_args(argv)
    prm = Params.for_mode(args.quick)
    if args.repeats:
        prm.repeats = args.repeats
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    skip = set(filter(None, args.skip.split(",")))
    default_dir = ROOT / ("build" if args.quick else "docs")
    out_md = Path(args.out) if args.out else default_dir / ("bench-quick.md" if args.quick
                                                            else "benchmarks.md")
    out_png = Path(args.png) if args.png else default_dir / ("bench-quick.png" if args.quick
                                                             else "benchmarks.png")

    home = tempfile.mkdtemp(prefix="malacoda-bench-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    began = time.monotonic()
    info = machine_info()
    results: Dict[str, List[Dict[str, Any]]] = {s: [] for s in systems}
    failures: List[str] = []
    pool = Pool(16)
    pst: Optional[Dict[str, Any]] = None
    supervisor: Optional[Dict[str, Any]] = None
    aio: Optional[Dict[str, Any]] = None
    beside: Optional[Dict[str, Any]] = None
    try:
        if "calls" not in skip:
            for rep in range(prm.repeats):
                order = systems[rep % len(systems):] + systems[:rep % len(systems)]

                def log(text: str, rep: int = rep) -> None:
                    print(f"[{time.monotonic() - began:6.1f} s] repeat {rep + 1}/{prm.repeats}: "
                          f"{text}", flush=True)

                for system, row in measure_repeat(order, pool, prm, failures, log).items():
                    results[system].append(row)
        if "pst" not in skip:
            print(f"[{time.monotonic() - began:6.1f} s] pst save of {prm.pst_mib} MiB", flush=True)
            try:
                pst = measure_pst(pool, prm)
            except Exception as exc:
                failures.append(f"pst save: {exc}")
                print(f"  FAILED: {exc}", flush=True)
        if "aio" not in skip:
            print(f"[{time.monotonic() - began:6.1f} s] asyncio against threads", flush=True)
            try:
                aio = measure_aio(*((3, 3000) if args.quick else (10, 5000)))
            except Exception as exc:
                failures.append(f"asyncio: {exc}")
                print(f"  FAILED: {exc}", flush=True)
        if "supervisor" not in skip:
            from bench import supervisor as sup

            print(f"[{time.monotonic() - began:6.1f} s] supervisor", flush=True)
            try:
                supervisor = sup.measure(prm.daemons, prm.cli_runs, child_env(), ROOT)
            except Exception as exc:
                failures.append(f"supervisor: {exc}")
                print(f"  FAILED: {exc}", flush=True)
            from bench import supervisord

            print(f"[{time.monotonic() - began:6.1f} s] beside supervisord", flush=True)
            try:
                beside = supervisord.measure(prm.units, prm.cli_runs, child_env(), ROOT)
            except Exception as exc:
                failures.append(f"beside supervisord: {exc}")
                print(f"  FAILED: {exc}", flush=True)
    finally:
        pool.stop()
        shutil.rmtree(home, ignore_errors=True)
    info["runtime"] = f"{time.monotonic() - began:.0f} s"
    info["mode"] = "quick" if args.quick else "full"
    info["params"] = vars(prm)
    data = {"info": info, "results": results, "pst": pst, "supervisor": supervisor,
            "aio": aio, "supervisord": beside, "failures": failures, "systems": systems}
    text = report.markdown(data)
    print(text)
    report.write(out_md, text)
    out_md.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    try:
        report.chart(data, out_png)
        print(f"wrote {out_md}, {out_md.with_suffix('.json')} and {out_png}")
    except ImportError:
        print(f"wrote {out_md}; matplotlib is missing, so no chart")
    return 1 if failures else 0
