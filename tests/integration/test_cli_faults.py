"""Supervisor faults: the host supervisor killed, the daemon killed behind a live proxy.

(SIGSTOP → ``hung``, a port in use and two ``start``s at once are in test_cli.py.)
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, List

import psutil
import pytest

import malacoda
from tests.support import ROOT, InThread, pid_alive, wait_for
from tests.support.ctl import Ctl


def running_again(ctl: Ctl, name: str, old_pid: int, old_monitor: int):
    def check():
        row = ctl.status(name)
        if (row["state"] == "running" and row["pid"] not in (None, old_pid)
                and row["monitor_pid"] not in (None, old_monitor)):
            return row
        return None

    return check


def pythonpath(pid: int) -> List[str]:
    """The PYTHONPATH entries of the running process ``pid``, read from /proc/PID/environ."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return env[b"PYTHONPATH"].decode().split(os.pathsep)


def supervisors(ctl: Ctl) -> List[int]:
    """Pids of the host supervisors of this MALACODA_HOME (one at most)."""
    found = []
    for proc in ctl.processes():
        try:
            if "malacoda.supervisor.host" in proc.cmdline():
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def supervisor_killed(ctl: Ctl, name: str, cls: str) -> Dict[str, Any]:
    """Start ``name``, kill -9 of its daemon once (restarts 1), set pst_counter to 7, kill -9
    of the host supervisor: the daemon keeps serving (same pid, the 7 in memory) and logging;
    status, with no supervisor, says so from the files; the next command that needs a
    supervisor starts one that adopts the daemon, restart count kept. Returns the row after."""
    ctl.unit(name, cls=cls)
    ctl.ok("start", name)
    first = ctl.status(name)
    os.kill(first["pid"], signal.SIGKILL)
    row = wait_for(running_again(ctl, name, first["pid"], -1), timeout=30,
                   what="the supervisor to restart it")
    assert row["restarts"] == 1
    ctl.ok("set", name, "pst_counter", "7")
    supervisor = row["monitor_pid"]
    assert supervisors(ctl) == [supervisor]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not pid_alive(supervisor), what="the supervisor to die")
    assert pid_alive(row["pid"])
    assert ctl.ok("get", name, "pst_counter") == "7\n"  # the same daemon serves on
    alone = ctl("status", name, "--json")
    [orphan] = json.loads(alone.stdout)
    assert orphan["state"] == "running" and orphan["pid"] == row["pid"], orphan
    assert "supervisor is not running" in alone.stderr
    logs = ctl("logs", name, "-n", "5")
    assert logs.returncode == 0 and "supervisor is not running" in logs.stderr, logs.stderr
    assert supervisors(ctl) == []  # status is read-only: it starts none
    assert ctl.ok("start", name) == f"{name} already running (pid {row['pid']}, port {row['port']})\n"
    [new_supervisor] = supervisors(ctl)
    adopted = ctl.status(name)
    assert adopted["pid"] == row["pid"] and adopted["monitor_pid"] == new_supervisor
    assert adopted["restarts"] == 1 and adopted["state"] == "running"
    return adopted


@pytest.mark.slow
def test_killed_supervisor_leaves_its_daemons_and_the_next_adopts_them(ctl: Ctl) -> None:
    """kill -9 of the host supervisor: the daemon serves on; the next supervisor adopts it and
    supervises it from then on: a kill -9 of the adopted daemon brings a new one (its exit code
    is unknown to a supervisor that is not its parent, and status says so)."""
    row = supervisor_killed(ctl, "Orphaned", "tests.support.daemons:HostileDaemon")
    os.kill(row["pid"], signal.SIGKILL)
    new = wait_for(running_again(ctl, "Orphaned", row["pid"], -1), timeout=30,
                   what="the new supervisor to restart the adopted daemon")
    assert new["restarts"] == 2 and new["monitor_pid"] == row["monitor_pid"]
    assert "unknown" in json.dumps(new["last_exit"]), new["last_exit"]
    assert ctl.ok("get", "Orphaned", "pst_counter") == "0\n"  # killed: nothing saved since
    # The environment passed on: the package folder is there once, first.
    for pid in (new["pid"], new["monitor_pid"]):
        entries = pythonpath(pid)
        assert entries[0] == str(ROOT) and len(entries) == len(set(entries)), entries
    assert ctl.ok("stop", "Orphaned") == "Orphaned stopped\n"
    assert not pid_alive(new["pid"])
    assert ctl.status("Orphaned")["state"] == "stopped"


@pytest.mark.slow
def test_killed_supervisor_of_a_daemon_that_prints_loses_no_line(ctl: Ctl) -> None:
    """A daemon printing every 50 ms writes its own log: the supervisor's kill -9 breaks no pipe
    of it, the daemon is not killed, and its lines go on without a gap (every loop number)."""
    row = supervisor_killed(ctl, "Chatty", "tests.support.daemons:Chatty")
    ctl.ok("stop", "Chatty")
    lines = [x for x in ctl.ok("logs", "Chatty", "-n", "100000").splitlines() if " chatty " in x]
    numbers = [int(x.rsplit(" ", 1)[1]) for x in lines]
    last_run = numbers[max(i for i, n in enumerate(numbers) if n == 0):]
    assert last_run == list(range(len(last_run))) and len(last_run) > 20, last_run[-5:]
    assert not pid_alive(row["pid"])


@pytest.mark.slow
def test_daemon_restarted_on_a_new_port_behind_a_live_proxy(ctl: Ctl) -> None:
    """The monitor restarts a killed daemon (new pid, new port): a proxy made before follows it;
    the call in flight during the kill fails as lost and is not run again by the new daemon."""
    ctl.unit("Moving", cls="tests.support.daemons:HostileDaemon")
    ctl.ok("start", "Moving")
    d = malacoda.get("Moving")
    before = ctl.status("Moving")
    call = InThread(d.tally, 30)
    wait_for(lambda: malacoda.get("Moving").tallies == 1, what="the call to start")
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(running_again(ctl, "Moving", before["pid"], -1), timeout=30,
                     what="the monitor to restart Moving")
    call.join(30)
    assert isinstance(call.error, malacoda.ConnectionLost), call.value
    assert after["port"] != before["port"]
    assert d.pid() == after["pid"]
    assert d.tallies == 0  # the new daemon never ran the lost call
    ctl.ok("stop", "Moving")


def test_a_call_right_after_kill_9_waits_out_the_restart(ctl: Ctl) -> None:
    """Right after kill -9 of the daemon, a call with a timeout looks the name up again until
    its deadline (the registry holds a stale entry, then none, then the new daemon's) and runs
    on the daemon the monitor restarted, instead of failing at once with LookupFailed."""
    ctl.unit("Back", backoff=2.0)  # seconds without the daemon: the call must wait them out
    ctl.ok("start", "Back")
    d = malacoda.get("Back")
    for timeout in (10, None):  # None: up to proxy.LOOKUP_WAIT (20 s), as the README says
        before = ctl.status("Back")
        assert d.pid() == before["pid"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: ctl.status("Back")["state"] != "running",
                 what="the monitor to see the daemon die")
        assert d.echo("x", timeout=timeout) == "x"
        assert d.pid() not in (None, before["pid"])
    ctl.ok("stop", "Back")


@pytest.mark.slow
def test_an_adopted_daemon_restarts_as_it_was_loaded(ctl: Ctl) -> None:
    """kill -9 of the supervisor after a half-saved edit of the unit file: the adopting
    supervisor restarts the daemon as it was loaded (kept in its record), not from the broken
    file; status still marks the file as changed."""
    file = ctl.unit("EditedOver", cls="tests.support.daemons:HostileDaemon")
    ctl.ok("start", "EditedOver")
    row = ctl.status("EditedOver")
    file.write_text(file.read_text() + "\nworkers = \n")  # half saved: not TOML any more
    os.kill(row["monitor_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(row["monitor_pid"]), what="the supervisor to die")
    ctl.unit("Bystander")
    ctl.ok("start", "Bystander")  # the next command that needs one starts a new supervisor
    os.kill(row["pid"], signal.SIGKILL)
    new = wait_for(running_again(ctl, "EditedOver", row["pid"], row["monitor_pid"]), timeout=30,
                   what="the new supervisor to restart it")
    assert new["changed"] is True
    ctl.ok("stop", "EditedOver", "Bystander")
    assert not pid_alive(new["pid"])
