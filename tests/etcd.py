"""A real etcd (Debian's etcd-server) on free loopback ports, for the cluster registry tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Optional

from tests.support import pid_alive, wait_for

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


def free_port() -> int:
    """A port free right now (etcd cannot report a port it picked; it retries on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member with a temporary data dir; ``stop()``/``start()`` keep data and ports."""

    def __init__(self, data_dir: Path) -> None:
        assert ETCD is not None
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def registry(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}",
             "--heartbeat-interval=10", "--election-timeout=100"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout=20, interval=0.05, what=f"etcd on {self.url} to be healthy")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return b'"health":"true"' in reply.read()
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        wait_for(lambda: not pid_alive(proc.pid), what="etcd to exit")
        self._log.close()
