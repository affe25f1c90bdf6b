"""A real OpenSSH server on 127.0.0.1 for the remote tests, and the ``web1`` fixture around it.

``web1`` gives the test a host alias ``web1`` as a user would have it: a temporary ``HOME``
whose ``~/.ssh/config`` points ``web1`` at the server (HostName, Port, User, IdentityFile)
and whose ``known_hosts`` holds the server's host key. The "remote" daemons run on this machine
under the test's MALACODA_HOME, which the remote side is pointed at with
``MALACODA_REMOTE_HOME``; ``MALACODA_REMOTE_PYTHON`` names a wrapper that lets the remote
Python import Malacoda from this checkout.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import psutil
import pytest

from tests.support import ROOT, free_port

SSHD = "/usr/sbin/sshd"
KEYGEN = "/usr/bin/ssh-keygen"


def keygen(path: Path) -> str:
    """Make an ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "malacoda-test", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().strip()


def _living(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SSHServer:
    """``sshd -D -e`` with throwaway host and user keys, on 127.0.0.1 at a free port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.host_key = folder / "ssh_host_ed25519_key"
        self.host_public = keygen(self.host_key)
        self.user_key = folder / "id_ed25519"
        (folder / "authorized_keys").write_text(keygen(self.user_key) + "\n")
        self.user = getpass.getuser()
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log = folder / "sshd.log"

    def _config(self) -> Path:
        path = self.folder / "sshd_config"
        path.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.folder / 'sshd.pid'}\nAuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nAllowTcpForwarding yes\nX11Forwarding no\nPrintMotd no\n"
            "LogLevel VERBOSE\n")
        return path

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd (on the same port as before, after a stop) and wait for its banner."""
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
        for _attempt in range(5):
            if not self.port or _attempt:
                self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self._config())],
                                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            if self._wait_ready(timeout):
                return
            self.stop()
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        raise AssertionError(f"sshd did not start:\n{self.log.read_text(errors='replace')}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop sshd and every session it serves (as if the host's SSH went down), by pid."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                master = psutil.Process(proc.pid)
                master.send_signal(signal.SIGSTOP)  # no new sessions while we sweep
                for _round in range(20):
                    children = [c for c in master.children(recursive=True) if _living(c)]
                    if not children:
                        break
                    for child in children:
                        try:
                            child.kill()
                        except psutil.NoSuchProcess:
                            pass
                    # killed children stay zombies of the stopped master: wait for that state
                    deadline = time.monotonic() + 5
                    while any(_living(c) for c in children) and time.monotonic() < deadline:
                        time.sleep(0.01)
            except psutil.NoSuchProcess:
                pass
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def web1(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHServer]:
    """An sshd reachable as ``web1`` through a temporary ``~/.ssh/config``; stopped after the test."""
    if not (os.access(SSHD, os.X_OK) and os.access(KEYGEN, os.X_OK)):
        pytest.skip(f"OpenSSH server not installed ({SSHD}): run 'make system-deps'")
    from malacoda.remote import host as remote

    server = SSHServer(tmp_path / "sshd")
    server.start()
    user_home = tmp_path / "user"
    ssh_dir = user_home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    (ssh_dir / "config").write_text(
        f"Host web1\n    HostName 127.0.0.1\n    Port {server.port}\n    User {server.user}\n"
        f"    IdentityFile {server.user_key}\n")
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {server.host_public}\n")
    wrapper = tmp_path / "remote-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT}; export PYTHONPATH\nexec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("MALACODA_SSH_ACCEPT_NEW", raising=False)
    monkeypatch.setenv("MALACODA_REMOTE_HOME", str(home))
    monkeypatch.setenv("MALACODA_REMOTE_PYTHON", str(wrapper))
    try:
        yield server
    finally:
        remote.close_all()
        server.stop()
