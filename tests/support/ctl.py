"""malacodactl as a user runs it: :class:`Ctl` runs ``python -m malacoda`` with a private
MALACODA_HOME and unit folder (the ``ctl`` fixture, in conftest.py, gives one per test)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import psutil

from malacoda.testing import write_unit
from tests.support import ROOT, wait_for

FAST = {"backoff": 0.1, "backoff_max": 0.5, "stop_timeout": 4, "start_timeout": 20}


class Ctl:
    """Runs ``python -m malacoda`` with a private MALACODA_HOME and unit folder."""

    def __init__(self, home: Path, conf: Path) -> None:
        self.home = home
        self.conf = conf
        self.env = dict(os.environ, MALACODA_HOME=str(home), PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        self.env.pop("MALACODA_UNIT_PATH", None)
        self.env.pop("NOTIFY_SOCKET", None)

    def argv(self, *args: str) -> List[str]:
        return [sys.executable, "-m", "malacoda", "--unit-path", str(self.conf), *args]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env, cwd=str(self.home), timeout=timeout,
                              capture_output=True, text=True)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env={**self.env, **kw.pop("env", {})},
                                cwd=str(self.home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)

    def unit(self, name: str, cls: str = "tests.support.daemons:TestDaemon", **keys: Any) -> Path:
        return write_unit(self.conf, name, cls=cls, path=[str(ROOT)], **{**FAST, **keys})

    def status(self, name: str, *extra: str) -> Dict[str, Any]:
        result = self("status", name, "--json", *extra)
        [row] = json.loads(result.stdout)
        row["exit"] = result.returncode
        return row

    def processes(self) -> List[psutil.Process]:
        """Our monitors and daemons: the processes whose MALACODA_HOME is this one."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("MALACODA_HOME") == str(self.home) and proc.pid != os.getpid():
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def daemons(self, name: str) -> List[psutil.Process]:
        out = []
        for proc in self.processes():
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "malacoda.runner" in cmd and str(self.conf / f"{name}.toml") in cmd:
                out.append(proc)
        return out

    def cleanup(self) -> None:
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass


class Follower:
    """``malacodactl logs SPEC -f -n 0`` in the background, its lines in a queue.

    Entering waits until it follows: it says a marker through the daemon until the line shows.
    """

    def __init__(self, ctl: Ctl, spec: str) -> None:
        self.ctl, self.spec = ctl, spec
        self.proc = ctl.popen("logs", spec, "-f", "-n", "0")
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout],
                         daemon=True).start()

    def next_line(self, timeout: float = 30) -> str:
        try:
            return self.lines.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"logs -f printed nothing for {timeout} s") from None

    def _following(self) -> bool:
        self.ctl.ok("call", self.spec, "say", "marker", "1")
        try:
            while True:
                if self.next_line(timeout=1).endswith("marker 0"):
                    return True
        except AssertionError:
            return False

    def __enter__(self) -> Follower:
        try:
            wait_for(self._following, timeout=30, what=f"logs -f {self.spec} to follow")
        except BaseException:
            self.close(signal.SIGKILL)
            raise
        return self

    def close(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.communicate(timeout=10)
        return self.proc.returncode

    def __exit__(self, *exc: Any) -> None:
        self.close()


def one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
