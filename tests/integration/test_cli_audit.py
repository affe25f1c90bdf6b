"""The audit of malacodactl (issue 14, "Fix on the way"): each finding, as a user meets it."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support.ctl import Ctl, one_line_error


def test_a_daemon_whose_run_raises_at_once_did_not_start(ctl: Ctl) -> None:
    ctl.unit("CrashAtStart", cls="tests.support.audit_daemons:CrashAtStart", restart="no")
    result = ctl("start", "CrashAtStart")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "started" not in result.stdout
    assert "CrashAtStart did not start" in result.stderr
    assert "cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_daemon_whose_run_returns_at_once_started_and_finished(ctl: Ctl) -> None:
    """Exit 0 right after it was ready is a main loop that had nothing to do, not a start that
    failed (it was reported as 'did not start ... exited (code 0) ...: no error in its log')."""
    from tests.support import wait_for

    ctl.unit("FinishAtOnce", cls="tests.support.audit_daemons:FinishAtOnce", restart="no")
    result = ctl("start", "FinishAtOnce")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "FinishAtOnce started" in result.stdout
    row = wait_for(lambda: (lambda r: r if r["state"] != "running" else None)(
        ctl.status("FinishAtOnce")), what="FinishAtOnce to finish")
    assert row["state"] == "stopped" and row["last_exit"] == {"code": 0}, row


def test_a_file_that_is_not_a_unit_name_is_skipped_with_a_warning(ctl: Ctl) -> None:
    ctl.unit("Good")
    (ctl.conf / ".#Good.toml").write_text("class = 'x:Y'\n")
    (ctl.conf / "sp ace.toml").write_text("class = 'x:Y'\n")
    os.chmod(ctl.conf / ".#Good.toml", 0o600)
    os.chmod(ctl.conf / "sp ace.toml", 0o600)
    ctl.ok("start", "Good")
    result = ctl("status", "--all")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Good" in result.stdout and "running" in result.stdout
    assert "sp ace.toml" in result.stderr and ".#Good.toml" in result.stderr
    result = ctl("stop", "--all")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Good stopped" in result.stdout


def test_status_of_a_known_and_an_unknown_name_prints_the_known_row(ctl: Ctl) -> None:
    ctl.unit("Known")
    ctl.ok("start", "Known")
    result = ctl("status", "Known", "NoSuch", "--json")
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["Known"]
    assert rows[0]["state"] == "running"
    assert "NoSuch" in result.stderr
    assert result.returncode == 4


def test_stop_and_logs_of_a_name_nobody_knows_is_an_error(ctl: Ctl) -> None:
    ctl.unit("Calc")
    for args in (("stop", "Clac"), ("logs", "Clac")):
        result = ctl(*args)
        one_line_error(result, 3, "Clac", str(ctl.conf))
    ctl.ok("stop", "Calc")  # a unit that is not running: stopping it succeeds


def test_a_broken_unit_file_shows_invalid_with_its_error(ctl: Ctl) -> None:
    (ctl.conf / "Broken.toml").write_text("class = 'x:Y'\nworkers = 'many'\n")
    os.chmod(ctl.conf / "Broken.toml", 0o600)
    result = ctl("status", "Broken", "--json")
    [row] = json.loads(result.stdout)
    assert row["state"] == "invalid"
    assert "workers" in row["message"]
    table = ctl("status", "Broken")
    assert "invalid" in table.stdout
    assert "workers" in table.stdout + table.stderr


def test_malacoda_home_is_not_mixed_with_the_system_units(ctl: Ctl) -> None:
    out = json.loads(ctl.ok("paths", "--json"))
    assert "/etc/malacoda/units" not in out["unit_search_path"]
    assert str(ctl.home / "units") in out["unit_search_path"]


def test_lines_without_newline_are_split_when_logged(ctl: Ctl) -> None:
    ctl.unit("Shouter", cls="tests.support.audit_daemons:Shouter")
    ctl.ok("start", "Shouter")
    ctl.ok("call", "Shouter", "shout", str(4 * 1024 * 1024))
    ctl.ok("call", "Shouter", "say", "after", "1")
    from tests.support import wait_for

    log = ctl.home / "log" / "Shouter.log"
    wait_for(lambda: "after 0" in log.read_text(errors="replace"), timeout=20, what="the marker")
    result = ctl("logs", "Shouter", "-n", "3")
    assert result.returncode == 0
    assert len(result.stdout) < 3 * (64 * 1024 + 200), len(result.stdout)
    longest = max(len(line) for line in log.read_text(errors="replace").splitlines())
    assert longest <= 64 * 1024 + 100


def test_dunder_and_private_names_are_refused_before_sending(ctl: Ctl) -> None:
    ctl.unit("Plain")
    ctl.ok("start", "Plain")
    for name in ("__class__", "__reduce__", "_request", "__init__"):
        result = ctl("call", "Plain", name)
        one_line_error(result, 2, name)
        assert "remote" not in result.stderr
        result = ctl("get", "Plain", name)
        one_line_error(result, 2, name)


def test_status_into_a_closed_pipe_exits_quietly(ctl: Ctl) -> None:
    """``status --all | head -1``: the reader is gone before the table is written."""
    for i in range(3):
        ctl.unit(f"Quiet{i}")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(ctl.argv("status", "--all"), env=ctl.env, cwd=str(ctl.home),
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Broken pipe" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ""


def test_unit_path_is_accepted_after_the_subcommand(ctl: Ctl) -> None:
    ctl.unit("After")
    env = dict(ctl.env)
    import sys

    result = subprocess.run([sys.executable, "-m", "malacoda", "check", "After",
                             "--unit-path", str(ctl.conf)], env=env, cwd=str(ctl.home),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "After: ok" in result.stdout


def test_an_automatic_restart_runs_the_unit_as_it_was_loaded(ctl: Ctl) -> None:
    """A half-saved edit does not turn the next crash into a restart loop; status says the file
    changed since the daemon started."""
    import signal

    from tests.support import wait_for

    file = ctl.unit("Edited")
    ctl.ok("start", "Edited")
    first = ctl.status("Edited")
    assert first["changed"] is False
    file.write_text(file.read_text() + "\nworkers = \n")  # half saved: not TOML any more
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(lambda: (lambda r: r if r["state"] == "running" and r["pid"] != first["pid"]
                              else None)(ctl.status("Edited")), timeout=30, what="the restart")
    assert again["changed"] is True
    assert "changed" in again["message"]
