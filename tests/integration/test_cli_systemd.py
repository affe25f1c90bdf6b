"""malacodactl and systemd: ``run`` in the foreground (sd_notify), ``systemd`` unit files that
systemd-analyze verifies, and the shipped template (out of test_cli.py, unchanged)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, wait_for
from tests.support.ctl import Ctl, one_line_error


def _notify_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock


@pytest.mark.parametrize("abstract", [False, True])
def test_run_in_the_foreground_notifies_systemd(ctl: Ctl, tmp_path: Path, abstract: bool) -> None:
    ctl.unit("Fore")
    if abstract:
        name = f"malacoda-test-{os.getpid()}-{tmp_path.name}"
        sock, address = _notify_socket("\0" + name), "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock = _notify_socket(address)
    proc = ctl.popen("run", "Fore", env={"NOTIFY_SOCKET": address}, start_new_session=True)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        assert ctl.ok("call", "Fore", "pid") == f"{proc.pid}\n"  # no fork: the daemon is this pid
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Fore ready on 127.0.0.1" in err
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_run_serves_on_when_notify_socket_cannot_be_reached(ctl: Ctl, tmp_path: Path) -> None:
    """As sd_notify: a $NOTIFY_SOCKET nobody listens on is warned about, the daemon serves."""
    ctl.unit("Deaf")
    address = str(tmp_path / "nobody.sock")
    proc = ctl.popen("run", "Deaf", env={"NOTIFY_SOCKET": address}, start_new_session=True)
    try:
        wait_for(lambda: ctl.status("Deaf")["state"] == "running" or proc.poll() is not None,
                 timeout=30, what="Deaf to serve or exit")
        assert proc.poll() is None, proc.communicate()
        assert ctl.ok("call", "Deaf", "pid") == f"{proc.pid}\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"cannot notify systemd at NOTIFY_SOCKET={address}" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_run_reports_the_daemons_error(ctl: Ctl) -> None:
    ctl.unit("ForeBad", cls="tests.support.daemons:FailInit")
    one_line_error(ctl("run", "ForeBad"), 1, "ForeBad failed: ValueError: bad setting: 42")


def assert_verifies(service: Path, text: str) -> None:
    """Write the unit ``text`` to ``service``: systemd-analyze verify accepts it, silently."""
    service.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert service.name not in result.stderr, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(ctl: Ctl, tmp_path: Path) -> None:
    ctl.unit("Svc", env={"GREETING": "hello world"}, restart="always")
    text = ctl.ok("systemd", "Svc")
    assert "Type=notify" in text and "Restart=always" in text and " run Svc" in text
    assert_verifies(tmp_path / "malacoda-Svc.service", text)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_quotes_by_systemds_rules(ctl: Ctl, tmp_path: Path) -> None:
    """A working directory with a blank and '%', '$' and quotes in a value, a '$' in the unit
    path and a sub-second backoff_reset: written as systemd.exec(5) and systemd.syntax(7) read
    them (only '%' escaped in WorkingDirectory= and Environment=; '$' also in ExecStart=), the
    start limit kept on, and systemd-analyze verify accepts it."""
    odd = Ctl(ctl.home, tmp_path / "conf $HOME%n")
    odd.conf.mkdir(mode=0o700)
    workdir = tmp_path / "work dir%h"
    workdir.mkdir()
    odd.unit("Odd", workdir=str(workdir), backoff_reset=0.5,
             env={"PASSWORD": 'a$b "q" \\ 5%', "PLAIN": "x"})
    text = odd.ok("systemd", "Odd")
    lines = text.splitlines()
    assert f"WorkingDirectory={tmp_path}/work dir%%h" in lines
    assert 'Environment="PASSWORD=a$b \\"q\\" \\\\ 5%%"' in lines
    assert "Environment=PLAIN=x" in lines
    assert "StartLimitIntervalSec=1" in lines
    assert f' --unit-path "{tmp_path}/conf $$HOME%%n" run Odd' in text
    assert_verifies(tmp_path / "malacoda-Odd.service", text)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_shipped_systemd_template_verifies(tmp_path: Path) -> None:
    text = (ROOT / "conf" / "malacoda@.service").read_text()
    assert "Type=notify" in text and "ExecStart=/usr/local/bin/malacodactl run %i" in text
    # verify checks that the program exists: point it at this interpreter for the check.
    service = tmp_path / "malacoda@MessageDaemon.service"
    service.write_text(text.replace("/usr/local/bin/malacodactl", f"{sys.executable} -m malacoda"))
    result = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "malacoda@" not in result.stderr, result.stderr
