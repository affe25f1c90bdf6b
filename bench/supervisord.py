"""Malacoda's supervisor beside supervisord, side by side in one run (issue 14's targets).

Each side supervises ``count`` tiny units: Malacoda ``bench.daemon:BenchIdle`` units started
with ``malacodactl start --all``, supervisord ``count`` programs that only sleep. Measured:

- the PSS (psutil ``memory_full_info().pss``) of the supervision machinery: every process of
  ours that is not a daemon (the host supervisor; before issue 14, one monitor per unit)
  against supervisord's one process. The host supervisor runs in the foreground for the whole
  run (``malacodactl supervisor``, as systemd runs it), as supervisord does;
- ``malacodactl status --all --json`` against ``supervisorctl status``;
- ``malacodactl stop`` of ``count - 1`` units in one command against the stop of one (and the
  same for supervisorctl), then ``start`` of ``count`` in one command against one;
- ``malacodactl --version`` against ``python -c "import click"``;
- a supervised daemon's own PSS against a bare pyzmq ROUTER echo process.

Every ratio is taken between figures measured in this same run; each command is timed ``runs``
times and reported as median and spread.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import psutil

from bench.supervisor import _row, cli_command

ECHO = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print("READY", port, flush=True)
while True:
    sock.send_multipart(sock.recv_multipart())
"""


def _pss(procs: List[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def _ours(home: str) -> List[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("MALACODA_HOME") == home:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _is_daemon(proc: psutil.Process) -> bool:
    try:
        return "malacoda.runner" in proc.cmdline()
    except psutil.Error:
        return False


def _timed(argv: List[str], env: Dict[str, str], cwd: str, ok: tuple = (0,)) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=300)
    took = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv[-3:])} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-400:]}")
    return took


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class Supervisord:
    """supervisord with ``count`` sleeping programs, in a folder of its own."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = folder
        self.conf = folder / "supervisord.conf"
        sock = folder / "supervisor.sock"
        lines = [
            "[unix_http_server]", f"file={sock}", "chmod=0700", "",
            "[supervisord]", f"logfile={folder / 'supervisord.log'}",
            f"pidfile={folder / 'supervisord.pid'}", f"childlogdir={folder}", "nodaemon=true",
            "", "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "", "[supervisorctl]", f"serverurl=unix://{sock}", "",
        ]
        for i in range(count):
            lines += [f"[program:p{i}]", "command=sleep 1000000", "autostart=true",
                      "startsecs=0", "stopwaitsecs=10", ""]
        self.conf.write_text("\n".join(lines))
        bindir = Path(sys.executable).parent
        self.ctl = [str(bindir / "supervisorctl"), "-c", str(self.conf)]
        self.proc = subprocess.Popen([str(bindir / "supervisord"), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait(lambda: self.running() == count, "supervisord to start its programs")

    def running(self) -> int:
        out = subprocess.run(self.ctl + ["status"], capture_output=True, text=True).stdout
        return out.count("RUNNING")

    def stop(self) -> None:
        with_kill(self.proc)


def with_kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _host_supervisor(ctl: List[str], env: Dict[str, str], cwd: str,
                     tmp: Path) -> Optional[subprocess.Popen]:
    """``malacodactl supervisor`` in the foreground, as systemd runs it (so that no start of
    the comparison includes the supervisor's own start, and ``stop --all`` does not end it);
    None when this tree has no host supervisor (the per-unit monitors)."""
    import socket

    if subprocess.run(ctl + ["supervisor", "--help"], env=env, cwd=cwd,
                      capture_output=True).returncode != 0:
        return None
    address = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)
    try:
        proc = subprocess.Popen(ctl + ["supervisor"], env=dict(env, NOTIFY_SOCKET=address),
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        if "READY=1" not in sock.recv(4096).decode():
            raise RuntimeError("the host supervisor did not say READY=1")
        return proc
    finally:
        sock.close()


def measure(count: int, runs: int, env: Dict[str, str], root: Path) -> Dict[str, Any]:
    """The rows of the Supervisor-against-supervisord table (see the module docstring)."""
    cli = cli_command()
    if cli is None or shutil.which("supervisord", path=str(Path(sys.executable).parent)) is None:
        return {"rows": [], "notes": ["supervisord is not installed (the `bench` extra): "
                                      "the comparison with it is not measured."]}
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    pairs: Dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="malacoda-bench-sup-"))
    os.chmod(tmp, 0o700)
    home = tmp / "home"
    home.mkdir(mode=0o700)
    conf = tmp / "conf"
    conf.mkdir(mode=0o700)
    env = dict(env, MALACODA_HOME=str(home), MALACODA_UNIT_PATH=str(conf))
    for i in range(count):
        unit = conf / f"Tiny{i}.toml"
        unit.write_text(f'class = "bench.daemon:BenchIdle"\npath = ["{root}"]\n'
                        'stop_timeout = 10\n')
        unit.chmod(0o600)
    ctl = cli
    names = [f"Tiny{i}" for i in range(count)]
    sd: Optional[Supervisord] = None
    echo: Optional[subprocess.Popen] = None
    cwd = str(tmp)
    host: Optional[subprocess.Popen] = None
    try:
        host = _host_supervisor(ctl, env, cwd, tmp)
        yard = [_timed([sys.executable, "-c", "import click"], env, cwd) for _ in range(runs)]
        base = statistics.median(yard)
        rows.append(_row('`python -c "import click"` (the yardstick)', yard, "ms", 1e3, base))
        rows.append(_row("`malacodactl --version`",
                         [_timed(ctl + ["--version"], env, cwd) for _ in range(runs)], "ms", 1e3,
                         base))
        one_start: List[float] = []
        all_start: List[float] = []
        for _ in range(max(1, runs // 2)):
            one_start.append(_timed(ctl + ["start", names[0]], env, cwd))
            _timed(ctl + ["stop", names[0]], env, cwd)
            all_start.append(_timed(ctl + ["start", "--all"], env, cwd))
            _timed(ctl + ["stop", "--all"], env, cwd)
        one = statistics.median(one_start)
        rows.append(_row("`malacodactl start` of one unit", one_start, "ms", 1e3, one))
        rows.append(_row(f"`malacodactl start --all`, {count} units at once", all_start, "ms",
                         1e3, one))
        _timed(ctl + ["start", "--all"], env, cwd)
        time.sleep(1.0)  # let start-up garbage settle before PSS is read
        procs = _ours(str(home))
        daemons = [p for p in procs if _is_daemon(p)]
        machinery = [p for p in procs if not _is_daemon(p)]
        if len(daemons) != count:
            notes.append(f"{len(daemons)} daemons found, {count} expected")
        ours_pss = _pss(machinery)
        daemon_pss = statistics.median([_pss([p]) for p in daemons]) if daemons else 0

        (tmp / "sd").mkdir(mode=0o700)
        sd = Supervisord(tmp / "sd", count)
        time.sleep(1.0)
        sd_pss = _pss([psutil.Process(sd.proc.pid)])
        rows.append(_row(f"supervisord PSS, {count} programs", [sd_pss], "MiB", 1 / 2**20,
                         sd_pss))
        rows.append(_row(f"Malacoda supervision machinery PSS ({len(machinery)} process(es)), "
                         f"{count} units", [ours_pss], "MiB", 1 / 2**20, sd_pss))

        sd_status = [_timed(sd.ctl + ["status"], env, cwd) for _ in range(runs)]
        sd_base = statistics.median(sd_status)
        rows.append(_row(f"`supervisorctl status`, {count} programs", sd_status, "ms", 1e3,
                         sd_base))
        rows.append(_row(f"`malacodactl status --all --json`, {count} units",
                         [_timed(ctl + ["status", "--all", "--json"], env, cwd, (0, 3))
                          for _ in range(runs)], "ms", 1e3, sd_base))

        sd_one: List[float] = []
        sd_many: List[float] = []
        one_stop: List[float] = []
        many_stop: List[float] = []
        others = [f"p{i}" for i in range(1, count)]
        for _ in range(max(1, runs // 2)):
            sd_one.append(_timed(sd.ctl + ["stop", "p0"], env, cwd))
            sd_many.append(_timed(sd.ctl + ["stop", *others], env, cwd))
            _timed(sd.ctl + ["start", "all"], env, cwd)
            one_stop.append(_timed(ctl + ["stop", names[0]], env, cwd))
            many_stop.append(_timed(ctl + ["stop", *names[1:]], env, cwd))
            _timed(ctl + ["start", "--all"], env, cwd)
        sd_one_m = statistics.median(sd_one)
        rows.append(_row("`supervisorctl stop` of one program", sd_one, "ms", 1e3, sd_one_m))
        rows.append(_row(f"`supervisorctl stop` of {count - 1} programs", sd_many, "ms", 1e3,
                         sd_one_m))
        one_m = statistics.median(one_stop)
        rows.append(_row("`malacodactl stop` of one unit", one_stop, "ms", 1e3, one_m))
        rows.append(_row(f"`malacodactl stop` of {count - 1} units", many_stop, "ms", 1e3, one_m))

        echo = subprocess.Popen([sys.executable, "-c", ECHO], env=env, stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        assert echo.stdout is not None
        echo.stdout.readline()
        time.sleep(0.5)
        echo_pss = _pss([psutil.Process(echo.pid)])
        rows.append(_row("a bare pyzmq ROUTER echo process, PSS", [echo_pss], "MiB", 1 / 2**20,
                         echo_pss))
        rows.append(_row("a supervised Malacoda daemon (BenchIdle), PSS (median of "
                         f"{len(daemons)})", [daemon_pss], "MiB", 1 / 2**20, echo_pss))
        by_name = {row["name"]: row["value"] for row in rows}

        def value(prefix: str) -> float:
            return next(v for k, v in by_name.items() if k.startswith(prefix))

        pairs = {  # (Malacoda, supervisord): the chart's panel
            "machinery PSS (MiB)": (ours_pss / 2**20, sd_pss / 2**20),
            "status, all (ms)": (value("`malacodactl status") * 1e3,
                                 value("`supervisorctl status`") * 1e3),
            f"stop of {count - 1} (ms)": (value(f"`malacodactl stop` of {count - 1}") * 1e3,
                                          value(f"`supervisorctl stop` of {count - 1}") * 1e3),
        }
    finally:
        if echo is not None:
            with_kill(echo)
        if sd is not None:
            sd.stop()
        subprocess.run(ctl + ["stop", "--all"], env=env, cwd=cwd, capture_output=True,
                       timeout=300)
        if host is not None:
            with_kill(host)
        for proc in _ours(str(home)):  # the host supervisor (and anything left)
            try:
                proc.terminate()
                proc.wait(10)
            except (psutil.Error, psutil.TimeoutExpired):
                with_kill_psutil(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "notes": notes, "pairs": pairs}


def with_kill_psutil(proc: psutil.Process) -> None:
    try:
        proc.kill()
    except psutil.Error:
        pass


if __name__ == "__main__":  # python -m bench.supervisord [COUNT] [RUNS] [--into RUN.json]
    import json

    from bench.run import child_env

    args = [a for a in sys.argv[1:] if not a.startswith("--into")]
    into = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--into=")), None)
    count = int(args[0]) if args else 30
    runs = int(args[1]) if len(args) > 1 else 5
    os.environ.setdefault("MALACODA_HOME", tempfile.mkdtemp(prefix="malacoda-bench-"))
    result = measure(count, runs, child_env(), Path(__file__).resolve().parent.parent)
    if into:  # add this table to a saved run (then: python -m bench.report RUN.json)
        saved = json.loads(Path(into).read_text())
        result["notes"].append(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
                               f"by `python -m bench.supervisord {count} {runs}` (load average "
                               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}) and added to "
                               "this run's data.")
        saved["supervisord"] = result
        Path(into).write_text(json.dumps(saved, indent=1, default=str))
    for row in result["rows"]:
        print(f"{row['name']:<70} {row['median']:>10} {row['spread']:>20} "
              f"{row.get('ratio', '–')}")
    for note in result["notes"]:
        print(note)
