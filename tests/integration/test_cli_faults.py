"""Supervisor faults: the monitor killed, the daemon killed behind a live proxy.

(SIGSTOP → ``hung``, a port in use and two ``start``s at once are in test_cli.py.)
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List

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


def handed_over(ctl: Ctl, name: str, cls: str) -> Dict[str, Any]:
    """Start ``name``, set its pst_counter to 7, kill -9 its monitor: once a new monitor and
    daemon run, the old daemon is gone, the 7 was saved on its way out and the log says why.
    Returns the new status row."""
    ctl.unit(name, cls=cls)
    ctl.ok("start", name)
    ctl.ok("set", name, "pst_counter", "7")
    row = ctl.status(name)
    os.kill(row["monitor_pid"], signal.SIGKILL)
    new = wait_for(running_again(ctl, name, row["pid"], row["monitor_pid"]), timeout=30,
                   what="a new monitor and daemon")
    wait_for(lambda: not pid_alive(row["pid"]), what="the orphan to exit")
    assert ctl.ok("get", name, "pst_counter") == "7\n"
    assert "[runner] the monitor" in ctl.ok("logs", name, "-n", "1000")
    return new


@pytest.mark.slow
def test_killed_monitor_hands_its_daemon_over_to_a_new_one(ctl: Ctl) -> None:
    """kill -9 of the monitor: the daemon notices, stops as on SIGTERM (pst saved) and starts
    again under a new monitor — never left running without one."""
    new = handed_over(ctl, "Orphaned", "tests.support.daemons:HostileDaemon")
    # Each hand-over passes the environment on: the package folder is still there once, first.
    for pid in (new["pid"], new["monitor_pid"]):
        entries = pythonpath(pid)
        assert entries[0] == str(ROOT) and len(entries) == len(set(entries)), entries
    assert ctl.ok("stop", "Orphaned") == "Orphaned stopped\n"
    assert not pid_alive(new["pid"]) and not pid_alive(new["monitor_pid"])
    assert ctl.status("Orphaned")["state"] == "stopped"


@pytest.mark.slow
def test_killed_monitor_of_a_daemon_that_prints_hands_it_over(ctl: Ctl) -> None:
    """A daemon printing every 50 ms meets the broken log pipe as soon as its monitor is killed:
    it is handed over all the same (pst saved), and what it prints afterwards is logged."""
    new = handed_over(ctl, "Chatty", "tests.support.daemons:Chatty")
    wait_for(lambda: "chatty" in ctl.ok("logs", "Chatty", "-n", "1").split("\n")[0],
             what="the new daemon's prints in the log")
    assert ctl.ok("stop", "Chatty") == "Chatty stopped\n"
    assert not pid_alive(new["pid"]) and not pid_alive(new["monitor_pid"])


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
def test_a_hand_over_runs_the_unit_as_it_was_loaded(ctl: Ctl) -> None:
    """kill -9 of the monitor after a half-saved edit of the unit file: the hand-over is an
    automatic restart too, and runs the unit as it was loaded (it re-read the file and the
    daemon was gone for good); status still marks the file as changed."""
    file = ctl.unit("EditedOver", cls="tests.support.daemons:HostileDaemon")
    ctl.ok("start", "EditedOver")
    row = ctl.status("EditedOver")
    file.write_text(file.read_text() + "\nworkers = \n")  # half saved: not TOML any more
    os.kill(row["monitor_pid"], signal.SIGKILL)
    new = wait_for(running_again(ctl, "EditedOver", row["pid"], row["monitor_pid"]), timeout=30,
                   what="a new monitor and daemon")
    assert new["changed"] is True
    wait_for(lambda: not pid_alive(row["pid"]), what="the orphan to exit")
    ctl.ok("stop", "EditedOver")
    assert not pid_alive(new["pid"]) and not pid_alive(new["monitor_pid"])
