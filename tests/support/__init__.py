"""Test helpers: bounded waits and daemon processes that are always cleaned up by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll ``condition`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): check its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class DaemonProcess:
    """A daemon started from Python code in a subprocess of its own session."""

    def __init__(self, code: str, env: dict, cwd: Optional[Path] = None) -> None:
        self.code = code
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=str(cwd or ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, timeout: float = 10.0) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        return out.decode(errors="replace") + err.decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        self.kill(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Processes:
    """Every process a test starts; all are killed by pid when the test ends."""

    def __init__(self) -> None:
        self.started: List[DaemonProcess] = []

    def add(self, proc: DaemonProcess) -> DaemonProcess:
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            proc.cleanup()


class InThread:
    """``fn(*args, **kwargs)`` running in a thread; after :meth:`join`, ``value`` or ``error``."""

    def __init__(self, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        self.value: object = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., object], args: tuple, kwargs: dict) -> None:
        try:
            self.value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: B902 - the test inspects it
            self.error = exc

    def join(self, timeout: float = 30.0) -> InThread:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        return self


def stop_process(proc: subprocess.Popen, what: str, sig: int = signal.SIGTERM) -> None:
    """Stop the server process ``proc`` by pid: ``sig``, then SIGKILL after 10 s; wait until
    its pid is gone."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    wait_for(lambda: not pid_alive(proc.pid), what=f"{what} to exit")


def free_port() -> int:
    """A loopback port free right now, for a server that cannot report the port it bound
    (etcd, sshd, the S3 server) or an address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_credentials(sock, port: int) -> None:
    """Give the raw ZeroMQ socket ``sock`` what docs/protocol.md says an owner's client sends
    to our daemon at ``port``: ZAP PLAIN, user ``malacoda``, the registry entry's secret."""
    from malacoda.host.registry import Registry

    for _, entry, state in Registry().entries():
        if entry is not None and state == "running" and entry.port == port and entry.secret:
            if not entry.open:
                sock.plain_username = b"malacoda"
                sock.plain_password = entry.secret.encode()
            return


def via(monkeypatch, endpoint: str) -> None:
    """Make proxies reach their (registered, own) daemon through ``endpoint`` (a relay): the
    name resolves as usual, credentials included, and only the endpoint is replaced."""
    import dataclasses

    import malacoda.client.proxy
    from malacoda.resolve import resolve

    monkeypatch.setattr(malacoda.client.proxy, "resolve",
                        lambda spec, **kw: dataclasses.replace(resolve(spec, **kw), endpoint=endpoint))


class RunsCode:
    """Unpickling this creates the file ``path``: it would run any code the same way. The
    tests plant it wherever a pickle could come from (state files, S3, the wire) and check
    that the file never appears."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def peak_rss(proc: Any) -> int:
    """The peak resident size (VmHWM) of ``proc`` (a psutil.Process), in bytes."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return proc.memory_info().rss


def pin_threads(cpus: Iterable[int]) -> None:
    """Every thread of this process (ZeroMQ's I/O threads included) to ``cpus``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), set(cpus))
        except OSError:
            pass  # the thread ended meanwhile
