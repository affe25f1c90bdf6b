"""The host supervisor: one per MALACODA_HOME, the parent of every daemon, started on demand or
in the foreground (systemd), stopping and starting many units side by side.

(kill -9 of the supervisor and adoption are in test_cli_faults.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import List

import psutil
import pytest

from tests.integration.test_cli_faults import pythonpath, supervisors
from tests.integration.test_cli_systemd import _notify_socket, assert_verifies
from tests.support import pid_alive, wait_for
from tests.support.ctl import Ctl


def notes(ctl: Ctl, name: str) -> List[tuple]:
    """``(time, text)`` of the supervisor's notes in ``name``'s log."""
    out = []
    for line in ctl.ok("logs", name, "-n", "10000").splitlines():
        stamp, _, rest = line[:23], line[23:24], line[24:]
        if rest.startswith("[monitor] "):
            when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1e3
            out.append((when, rest[len("[monitor] "):]))
    return out


def first(ctl: Ctl, name: str, words: str) -> float:
    return next(t for t, text in notes(ctl, name) if words in text)


def test_one_supervisor_is_the_parent_of_every_daemon(ctl: Ctl) -> None:
    """The first start starts the supervisor; every daemon is its child (no process per unit);
    status comes from it in one call; stop --all leaves nothing, the supervisor included."""
    for name in ("One", "Two", "Three"):
        ctl.unit(name)
    assert supervisors(ctl) == []
    ctl.ok("start", "One", "Two", "Three")
    [supervisor] = supervisors(ctl)
    result = ctl("status", "--all", "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["One", "Three", "Two"]  # not the supervisor itself
    for row in rows:
        assert row["state"] == "running" and row["monitor_pid"] == supervisor
        assert psutil.Process(row["pid"]).ppid() == supervisor
    wait_for(lambda: all(r["rss"] and r["cpu"] is not None
                         for r in json.loads(ctl.ok("status", "--all", "--json"))),
             what="cpu and rss sampled by the supervisor")
    mine = {p.pid for p in ctl.processes()}
    assert mine == {supervisor} | {r["pid"] for r in rows}, "one process besides the daemons"
    assert sorted(ctl.ok("stop", "--all").splitlines()) == ["One stopped", "Three stopped",
                                                            "Two stopped"]
    wait_for(lambda: not pid_alive(supervisor), what="the on-demand supervisor to end")
    assert ctl.processes() == []


def test_start_of_many_runs_side_by_side_after_what_they_require(ctl: Ctl) -> None:
    """start of four units: those that require nothing start at once (each begins before any of
    them is ready); Top begins only once Base, which it requires, is ready."""
    ctl.unit("Base")
    ctl.unit("Top", requires=["Base"])
    ctl.unit("Left")
    ctl.unit("Right")
    out = ctl.ok("start", "Top", "Left", "Right").splitlines()
    assert [line.split()[:2] for line in out] == [
        ["Base", "started"], ["Top", "started"], ["Left", "started"], ["Right", "started"]]
    began = {n: first(ctl, n, "starting ") for n in ("Base", "Left", "Right", "Top")}
    ready = {n: first(ctl, n, " ready: pid ") for n in ("Base", "Left", "Right", "Top")}
    assert max(began[n] for n in ("Base", "Left", "Right")) < \
        min(ready[n] for n in ("Base", "Left", "Right")), (began, ready)
    assert began["Top"] >= ready["Base"], (began, ready)
    ctl.ok("stop", "--all")


def test_stop_of_many_runs_side_by_side_after_what_requires_them(ctl: Ctl) -> None:
    """Three daemons that ignore a stop (each takes its stop_timeout, then SIGKILL) stop side
    by side, and Base, which they all require, only after the three are gone."""
    ctl.unit("Base")
    for name in ("Mule1", "Mule2", "Mule3"):
        ctl.unit(name, cls="tests.support.daemons:Stubborn", stop_timeout=1.5, requires=["Base"])
    ctl.ok("start", "--all")
    out = ctl.ok("stop", "--all").splitlines()
    assert sorted(out) == ["Base stopped", "Mule1 stopped", "Mule2 stopped", "Mule3 stopped"]
    assert out[-1] == "Base stopped"
    mules = ("Mule1", "Mule2", "Mule3")
    asked = {n: first(ctl, n, "stopping ") for n in mules}
    gone = {n: first(ctl, n, "exited: signal SIGKILL") for n in mules}
    assert max(asked.values()) < min(gone.values()), (asked, gone)
    assert first(ctl, "Base", "stopping ") >= max(gone.values())


def test_reload_makes_the_next_automatic_restart_run_the_file_as_it_is_now(ctl: Ctl) -> None:
    file = ctl.unit("Reread")
    ctl.ok("start", "Reread")
    before = ctl.status("Reread")
    ctl.unit("Reread", env={"RELOADED": "yes"})
    assert file.exists() and ctl.status("Reread")["changed"] is True
    assert ctl.ok("reload") == "Reread reloaded\n"
    assert ctl.status("Reread")["changed"] is False
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: (lambda r: r if r["state"] == "running" and r["pid"] != before["pid"]
                              else None)(ctl.status("Reread")), timeout=30, what="the restart")
    with open(f"/proc/{after['pid']}/environ", "rb") as f:
        assert b"RELOADED=yes" in f.read().split(b"\0")
    ctl.ok("stop", "Reread")


def test_status_and_logs_without_a_supervisor_answer_from_the_files(ctl: Ctl) -> None:
    ctl.unit("Quiet")
    result = ctl("status", "Quiet", "--json")
    assert result.returncode == 3 and json.loads(result.stdout)[0]["state"] == "stopped"
    assert supervisors(ctl) == []  # read-only commands start none
    ctl.ok("start", "Quiet")
    ctl.ok("stop", "Quiet")
    wait_for(lambda: supervisors(ctl) == [] or ctl.ok("stop", "--all") is None,
             what="the supervisor to end")
    assert "Quiet (pid" in ctl.ok("logs", "Quiet")
    assert supervisors(ctl) == []


def _supervisor_in_the_foreground(ctl: Ctl, tmp_path: Path):
    address = str(tmp_path / "notify.sock")
    sock = _notify_socket(address)
    proc = ctl.popen("supervisor", env={"NOTIFY_SOCKET": address}, start_new_session=True)
    return sock, proc


def test_the_supervisor_in_the_foreground_notifies_systemd_and_leaves_daemons_on_sigterm(
        ctl: Ctl, tmp_path: Path) -> None:
    """``malacodactl supervisor``: Type=notify readiness with its own pid; the CLI uses it;
    SIGTERM ends it (exit 0) and leaves the daemons serving; the next start adopts them."""
    ctl.unit("Kept")
    sock, proc = _supervisor_in_the_foreground(ctl, tmp_path)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        assert supervisors(ctl) == [proc.pid]
        ctl.ok("start", "Kept")
        row = ctl.status("Kept")
        assert row["monitor_pid"] == proc.pid
        assert pythonpath(row["pid"])  # a real child process with its environment
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert ctl.ok("call", "Kept", "echo", "still") == "still\n"
        assert "already running" in ctl.ok("start", "Kept")
        assert ctl.status("Kept")["monitor_pid"] not in (None, proc.pid)
        ctl.ok("stop", "Kept")
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_second_supervisor_in_the_foreground_refuses_to_start(ctl: Ctl, tmp_path: Path) -> None:
    sock, proc = _supervisor_in_the_foreground(ctl, tmp_path)
    try:
        assert "READY=1" in sock.recv(4096).decode()
        second = ctl("supervisor")
        assert second.returncode == 1 and "already running" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    finally:
        sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_of_the_supervisor_verifies(ctl: Ctl, tmp_path: Path) -> None:
    text = ctl.ok("systemd", "--supervisor")
    assert "Type=notify" in text and " supervisor" in text and "KillMode=process" in text
    assert f"MALACODA_HOME={ctl.home}" in text
    assert_verifies(tmp_path / "malacoda-supervisor.service", text)
    result = ctl("systemd")
    assert result.returncode == 2 and "--supervisor" in result.stderr


def test_run_needs_no_supervisor(ctl: Ctl) -> None:
    ctl.unit("Alone")
    proc = ctl.popen("run", "Alone", start_new_session=True)
    try:
        wait_for(lambda: ctl.status("Alone")["state"] == "running", timeout=30,
                 what="Alone to serve")
        assert supervisors(ctl) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


