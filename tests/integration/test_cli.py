"""malacodactl end to end: the CLI run as a user runs it, real monitors, real daemons."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional

import psutil
import pytest

from tests.support import ROOT, pid_alive, wait_for
from tests.support.ctl import FAST, Ctl, Follower, one_line_error


def test_message_daemon_from_conf(ctl: Ctl) -> None:
    """The README's scenario on conf/MessageDaemon.toml: start, call, get, set, status, stop."""
    shutil.copy(ROOT / "conf" / "MessageDaemon.toml", ctl.conf)
    (ctl.conf / "MessageDaemon.toml").write_text(
        (ctl.conf / "MessageDaemon.toml").read_text().replace("../examples", str(ROOT / "examples")))
    out = ctl.ok("start", "MessageDaemon")
    assert out.startswith("MessageDaemon started (pid ")
    assert ctl.ok("call", "MessageDaemon", "insert_message", "hi") == "Message received!\n"
    assert ctl.ok("get", "MessageDaemon", "pst_counter") == "1\n"
    assert ctl.ok("set", "MessageDaemon", "pst_counter", "5") == ""
    assert ctl.ok("get", "MessageDaemon", "pst_counter", "--json") == "5\n"
    table = ctl.ok("status", "--all")
    assert table.split("\n")[0].split() == ["NAME", "STATE", "PID", "PORT", "UPTIME", "CPU%", "RSS",
                                           "RESTARTS", "LAST", "EXIT"]
    assert table.split("\n")[1].split()[:2] == ["MessageDaemon", "running"]
    row = ctl.status("MessageDaemon")
    assert row["exit"] == 0 and row["state"] == "running" and row["pid"] > 0 and row["port"] > 0
    assert row["restarts"] == 0 and row["rss"] > 0 and row["uptime"] >= 0
    again = ctl.ok("start", "MessageDaemon")
    assert again.startswith(f"MessageDaemon already running (pid {row['pid']}")
    described = ctl.ok("describe", "MessageDaemon")
    assert "insert_message(msg, *, timeout=None)" in described
    assert "Queue a message for the main loop" in described and "pst_counter" in described
    assert ctl.ok("stop", "MessageDaemon") == "MessageDaemon stopped\n"
    assert not pid_alive(row["pid"])
    assert ctl.ok("stop", "MessageDaemon") == "MessageDaemon not running\n"
    stopped = ctl.status("MessageDaemon")
    assert stopped["state"] == "stopped" and stopped["exit"] == 3 and stopped["pid"] is None
    assert stopped["last_exit"] == {"code": 0}
    ctl.ok("start", "MessageDaemon")
    assert ctl.ok("get", "MessageDaemon", "pst_counter") == "5\n"  # saved on stop, loaded on start
    ctl.ok("restart", "MessageDaemon")
    assert ctl.ok("get", "MessageDaemon", "pst_counter") == "5\n"
    assert ctl.status("MessageDaemon")["pid"] != row["pid"]


def test_call_values_and_remote_errors(ctl: Ctl) -> None:
    ctl.unit("Echo")
    ctl.ok("start", "Echo")
    assert ctl.ok("call", "Echo", "echo", "hi") == "hi\n"
    assert ctl.ok("call", "Echo", "echo", "hello world") == "hello world\n"
    assert ctl.ok("call", "Echo", "echo", "'5'") == "5\n"
    assert ctl.ok("call", "Echo", "echo", "[1, (2, 3)]") == "[1, (2, 3)]\n"
    assert ctl.ok("call", "Echo", "add", "2", "--kw", "b=40") == "42\n"
    assert ctl.ok("call", "Echo", "add", "-5", "-.5", "--timeout", "9") == "-5.5\n"
    assert ctl.ok("call", "Echo", "echo", "--", "-x") == "-x\n"
    assert ctl.ok("call", "Echo", "echo", "-") == "-\n"
    dashed = ctl("call", "Echo", "echo", "-x")
    assert dashed.returncode == 2 and "goes after '--'" in dashed.stderr, dashed.stderr
    ctl.ok("set", "Echo", "constant", "-3")
    assert ctl.ok("get", "Echo", "constant") == "-3\n"
    assert json.loads(ctl.ok("call", "Echo", "echo", "{'a': (1, {2})}", "--json")) == {"a": [1, [2]]}
    assert ctl.ok("call", "Echo", "echo", "b'\\x00'", "--json") == '{"base64": "AA=="}\n'
    one_line_error(ctl("call", "Echo", "fail_value"), 1, "ValueError: bad value")
    one_line_error(ctl("call", "Echo", "fail_custom"), 1, "tests.support.daemons.CustomError: custom failure")
    verbose = ctl("--verbose", "call", "Echo", "fail_value")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "fail_value" in verbose.stderr
    one_line_error(ctl("call", "Echo", "echo", "[1, 2"), 2, "bad literal '[1, 2'")
    one_line_error(ctl("set", "Echo", "constant", "{'a'"), 2, "bad literal")
    one_line_error(ctl("call", "Echo", "add", "--kw", "nonsense"), 2, "NAME=VALUE")
    one_line_error(ctl("call", "Echo", "slow", "3", "--timeout", "0.3"), 4)
    one_line_error(ctl("call", "Echo", "_secret"), 2, "private")
    one_line_error(ctl("get", "Echo", "no_such_attribute"), 1, "AttributeError")
    one_line_error(ctl("call", "Nobody", "echo", "x"), 3, "no daemon named 'Nobody'")
    one_line_error(ctl("get", "Echo:99999", "constant"), 2, "out of range")
    ctl.ok("stop", "Echo")
    one_line_error(ctl("get", "Echo", "constant"), 3, "'Echo'")


def test_status_all_hung_and_unknown(ctl: Ctl) -> None:
    ctl.unit("Up")
    ctl.unit("Down")
    ctl.ok("start", "Up")
    result = ctl("status", "--all", "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert result.returncode == 3  # one of them is not running
    assert rows["Up"]["state"] == "running" and rows["Down"]["state"] == "stopped"
    assert set(rows["Up"]) >= {"name", "state", "pid", "port", "uptime", "cpu", "rss", "restarts",
                               "last_exit"}
    one_line_error(ctl("status", "Nothing"), 4, "unknown unit 'Nothing'")
    pid = rows["Up"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        hung = ctl.status("Up", "--ping-timeout", "0.5")
        assert hung["state"] == "hung" and hung["exit"] == 4
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ctl.status("Up")["state"] == "running"
    assert ctl.ok("stop", "--all") == "Up stopped\n"


def test_kill_9_of_the_daemon_brings_a_new_one(ctl: Ctl) -> None:
    ctl.unit("Phoenix")
    ctl.ok("start", "Phoenix")
    first = ctl.status("Phoenix")
    os.kill(first["pid"], signal.SIGKILL)

    def restarted() -> Optional[Dict[str, Any]]:
        row = ctl.status("Phoenix")
        return row if row["state"] == "running" and row["pid"] != first["pid"] else None

    row = wait_for(restarted, timeout=30, what="the monitor to restart Phoenix")
    assert row["restarts"] == 1 and row["last_exit"] == {"signal": "SIGKILL"}
    assert ctl.ok("call", "Phoenix", "echo", "alive") == "alive\n"
    assert "exited: signal SIGKILL" in ctl.ok("logs", "Phoenix", "-n", "100")


def test_crash_loop_ends_failed(ctl: Ctl) -> None:
    ctl.unit("Crashy", cls="tests.support.daemons:CrashAfterReady", backoff=0.05, start_limit=2)
    ctl.ok("start", "Crashy")  # it was ready: start succeeded; the crashes come later
    row = wait_for(lambda: (lambda r: r if r["state"] == "failed" else None)(ctl.status("Crashy")),
                   timeout=40, what="Crashy to be failed")
    assert row["exit"] == 3 and row["restarts"] == 2 and row["last_exit"] == {"code": 1}
    assert row["pid"] is None
    log = ctl.ok("logs", "Crashy", "-n", "200")
    assert "RuntimeError: crashed on purpose" in log and "gave up after 2 restarts" in log
    assert ctl.daemons("Crashy") == []
    assert ctl.ok("stop", "Crashy") == "Crashy not running\n"
    assert ctl.status("Crashy")["state"] == "stopped"


def test_stale_after_kill_9_of_monitor_and_daemon(ctl: Ctl) -> None:
    ctl.unit("Stale")
    ctl.ok("start", "Stale")
    row = ctl.status("Stale")
    monitor = row["monitor_pid"]
    assert monitor and monitor != row["pid"]
    os.kill(monitor, signal.SIGKILL)
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(row["pid"]) and not pid_alive(monitor), what="both to die")
    stale = ctl.status("Stale")
    assert stale["state"] == "stale" and stale["exit"] == 1
    assert (ctl.home / "run" / "registry" / "Stale.json").exists()
    ctl.ok("start", "Stale")
    fresh = ctl.status("Stale")
    assert fresh["state"] == "running" and fresh["pid"] not in (row["pid"], None)
    ctl.ok("stop", "Stale")


def test_start_fails_with_the_daemons_own_error(ctl: Ctl) -> None:
    ctl.unit("NoModule", cls="no_such_module:Thing")
    one_line_error(ctl("start", "NoModule"), 1, "NoModule did not start",
                   "ModuleNotFoundError: No module named 'no_such_module'")
    failed = ctl.status("NoModule")
    assert failed["state"] == "failed" and failed["exit"] == 3
    ctl.unit("BadInit", cls="tests.support.daemons:FailInit")
    one_line_error(ctl("start", "BadInit"), 1, "ValueError: bad setting: 42")
    assert "Traceback" in ctl.ok("logs", "BadInit")  # the whole story is in the log
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ctl.unit("Clash", port=taken.getsockname()[1])
        one_line_error(ctl("start", "Clash"), 1, "Clash did not start", "Address already in use")
    ctl.unit("Open", bind="0.0.0.0")  # no CURVE keys here: the daemon refuses, and says why
    one_line_error(ctl("start", "Open"), 1, "Open did not start", "requires CURVE", "insecure = true")
    assert ctl.daemons("NoModule") == ctl.daemons("BadInit") == ctl.daemons("Clash") == []
    ctl.unit("Open", bind="0.0.0.0", insecure=True)
    ctl.ok("start", "Open")
    assert "WITHOUT CURVE" in ctl.ok("logs", "Open")
    ctl.ok("stop", "Open")


def test_a_daemon_not_ready_in_start_timeout_is_stopped_at_once(ctl: Ctl) -> None:
    """Never ready, it serves no socket to be asked on: the monitor sends SIGTERM at once
    (not after half of stop_timeout) and start reports the daemon's timeout, not its own."""
    ctl.unit("Sluggish", cls="tests.support.daemons:SlowInit", start_timeout=2, stop_timeout=30)
    one_line_error(ctl("start", "Sluggish"), 1, "Sluggish did not start",
                   "not ready within start_timeout = 2 s")
    assert ctl.status("Sluggish")["state"] == "failed"
    assert ctl.daemons("Sluggish") == []


@pytest.mark.slow
def test_start_waits_for_the_stop_of_a_daemon_not_ready(ctl: Ctl) -> None:
    """A daemon not ready in start_timeout that ignores SIGTERM ends by SIGKILL at
    stop_timeout: start waits for that (start_timeout + stop_timeout and a margin) and reports
    the daemon's own timeout rather than its monitor's silence."""
    ctl.unit("Mulish", cls="tests.support.daemons:SlowInit", start_timeout=1, stop_timeout=12,
             args={"ignore_term": True})
    one_line_error(ctl("start", "Mulish"), 1, "Mulish did not start",
                   "not ready within start_timeout = 1 s")
    assert ctl.status("Mulish")["state"] == "failed"
    assert ctl.daemons("Mulish") == []


def test_two_starts_racing_leave_one_daemon(ctl: Ctl) -> None:
    ctl.unit("Once")
    racers = [ctl.popen("start", "Once") for _ in range(3)]
    outputs = [r.communicate(timeout=60) for r in racers]
    assert [r.returncode for r in racers] == [0, 0, 0], outputs
    pid = ctl.status("Once")["pid"]
    assert all(f"(pid {pid}," in out for out, _ in outputs), outputs
    assert sum("Once started" in out for out, _ in outputs) == 1, outputs
    assert [p.pid for p in ctl.daemons("Once")] == [pid]
    ctl.ok("stop", "Once")


@pytest.mark.parametrize("text, fragments", [
    ('class = "tests.support.daemons:TestDaemon"\nport = = 1\nbind = "x"\n', ["TOML syntax error", "line 2"]),
    ('class = "tests.support.daemons:TestDaemon"\ncolour = "red"\n', ["unknown key 'colour'"]),
    ('class = "tests.support.daemons:TestDaemon"\nport = "80"\n', ["'port' must be an integer", "'80'"]),
    ('class = "tests.support.daemons:TestDaemon"\nrestart = "sometimes"\n', ["'restart' must be one of"]),
    ('path = ["."]\n', ["'class' is required"]),
    ('class = "tests.support.daemons:TestDaemon"\nstart_timeout = nan\n',
     ["'start_timeout' must be a finite number", "nan"]),
    ('class = "tests.support.daemons:TestDaemon"\nbackoff_max = inf\n', ["'backoff_max'", "finite"]),
    ('class = "tests.support.daemons:TestDaemon"\nworkers = 0\n', ["'workers' must be at least 1"]),
    ('class = "tests.support.daemons:TestDaemon"\nmax_message = 0\n', ["'max_message' must be at least 1"]),
    ('class = "tests.support.daemons:TestDaemon"\n[env]\n"A=B" = "x"\n', ["'A=B' cannot name"]),
    ('class = "tests.support.daemons:TestDaemon"\n[env]\n"" = "x"\n', ["'' cannot name"]),
    ('class = "tests.support.daemons:TestDaemon"\n[env]\nA = "x\\u0000y"\n', ["'A' holds a NUL"]),
])
def test_bad_unit_files(ctl: Ctl, text: str, fragments: List[str]) -> None:
    (ctl.conf / "Bad.toml").write_text(text)
    (ctl.conf / "Bad.toml").chmod(0o600)
    for command in (["check", "Bad"], ["start", "Bad"]):
        one_line_error(ctl(*command), 2, str(ctl.conf / "Bad.toml"), *fragments)


def test_check_unknown_unit_unimportable_class_and_unsafe_files(ctl: Ctl) -> None:
    one_line_error(ctl("start", "Ghost"), 2, "unknown unit 'Ghost'", str(ctl.conf))
    one_line_error(ctl("check", "Ghost"), 2, "unknown unit 'Ghost'")
    ctl.unit("Good")
    assert ctl.ok("check", "Good").startswith("Good: ok")
    ctl.unit("Missing", cls="tests.support.daemons:NoSuchClass")
    one_line_error(ctl("check", "Missing"), 2, "Missing.toml", "no class 'NoSuchClass'")
    result = ctl("check")  # all of them: one line per bad unit, exit 2
    assert result.returncode == 2 and "Good: ok" in result.stdout and "NoSuchClass" in result.stderr
    (ctl.conf / "Missing.toml").unlink()
    (ctl.conf / "Good.toml").chmod(0o620)
    one_line_error(ctl("start", "Good"), 2, "Good.toml is writable by other users", "chmod go-w")
    (ctl.conf / "Good.toml").chmod(0o600)
    ctl.conf.chmod(0o777)
    try:
        one_line_error(ctl("check", "Good"), 2, f"{ctl.conf} is writable by other users")
    finally:
        ctl.conf.chmod(0o700)
    assert ctl.daemons("Good") == []


def test_logs_tail_and_follow_across_rotation(ctl: Ctl) -> None:
    ctl.unit("Talk", cls="tests.support.daemons:Talker", log_max_bytes=4000, log_backups=3)
    ctl.ok("start", "Talk")
    ctl.ok("call", "Talk", "say", "first", "3")
    wait_for(lambda: "first 2" in ctl.ok("logs", "Talk"), what="the output in the log")
    last = ctl.ok("logs", "Talk", "-n", "2").splitlines()
    assert len(last) == 2 and last[-1].endswith(" first 2")
    assert last[-1][:4].isdigit() and last[-1][10] == " "  # "YYYY-MM-DD HH:MM:SS.mmm first 2"
    with Follower(ctl, "Talk") as follower:
        ctl.ok("call", "Talk", "say", "bulk-line-with-some-padding-to-fill-the-file", "250",
               "--kw", "pause=0.005")
        seen = set()
        while len(seen) < 250:
            line = follower.next_line()
            if "bulk-line" in line:
                seen.add(int(line.split()[-1]))
        assert seen == set(range(250))
        assert (ctl.home / "log" / "Talk.log.1").exists()  # it was rotated meanwhile
        assert (ctl.home / "log" / "Talk.log.3").exists()
        assert not (ctl.home / "log" / "Talk.log.4").exists()
    one_line_error(ctl("logs", "Never"), 3, "no log for 'Never'")
    one_line_error(ctl("logs", "Talk:hostb", "--host", "hosta"), 2, "names a host already")
    ctl.ok("stop", "Talk")


def test_requires_start_first_and_stop_last(ctl: Ctl) -> None:
    ctl.unit("Base")
    ctl.unit("Top", requires=["Base"])
    out = ctl.ok("start", "Top").splitlines()
    assert [line.split()[0] for line in out] == ["Base", "Top"]
    out = ctl.ok("stop", "--all").splitlines()
    assert [line.split()[0] for line in out] == ["Top", "Base"]
    ctl.unit("BadBase", cls="tests.support.daemons:FailInit")
    ctl.unit("Above", requires=["BadBase"])
    result = ctl("start", "Above")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "malacodactl: BadBase did not start: ValueError: bad setting: 42",
        "malacodactl: Above not started: it requires BadBase, which did not start"]
    assert ctl.daemons("Above") == []
    ctl.unit("Loop1", requires=["Loop2"])
    ctl.unit("Loop2", requires=["Loop1"])
    one_line_error(ctl("start", "Loop1"), 2, "cycle", "Loop1 -> Loop2 -> Loop1")


def test_restart_checks_requires_before_it_stops_anything(ctl: Ctl) -> None:
    """A unit requiring a missing one makes restart fail (exit 2) with every daemon untouched."""
    ctl.unit("Kept")
    ctl.ok("start", "Kept")
    pid = ctl.status("Kept")["pid"]
    ctl.unit("Needy", requires=["Absent"])
    one_line_error(ctl("restart", "Kept", "Needy"), 2, "Absent")
    one_line_error(ctl("restart", "--all"), 2, "Absent")
    row = ctl.status("Kept")
    assert row["state"] == "running" and row["pid"] == pid
    ctl.ok("stop", "Kept")


def test_version_paths_and_completion(ctl: Ctl) -> None:
    from malacoda import __version__

    assert ctl.ok("--version") == f"malacodactl, version {__version__}\n"
    paths = json.loads(ctl.ok("paths", "--json"))
    assert paths["run"] == str(ctl.home / "run") and paths["log"] == str(ctl.home / "log")
    assert paths["unit_search_path"][0] == str(ctl.conf)
    # MALACODA_HOME is a world of its own: /etc/malacoda/units is not searched (issue 14)
    assert paths["unit_search_path"][1:] == [str(ctl.home / "conf"), str(ctl.home / "units")]
    assert "_MALACODACTL_COMPLETE" in ctl.ok("completion", "bash")
    ctl.unit("Completable")
    env = dict(ctl.env, _MALACODACTL_COMPLETE="bash_complete", COMP_WORDS="malacodactl start Comp",
               MALACODA_UNIT_PATH=str(ctl.conf),
               COMP_CWORD="2")
    result = subprocess.run(ctl.argv(), env=env, capture_output=True, text=True, timeout=60)
    assert "Completable" in result.stdout
    # Completing after an argument that starts with '-': options offered, no traceback.
    env.update(COMP_WORDS="malacodactl call Completable add -x --", COMP_CWORD="5")
    result = subprocess.run(ctl.argv(), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--timeout" in result.stdout, result.stderr
    shim = subprocess.run([sys.executable, str(ROOT / "bin" / "malacodactl"), "--version"],
                          capture_output=True, text=True, timeout=60)
    assert shim.stdout == f"malacodactl, version {__version__}\n"


def test_the_testing_fixture_runs_a_unit_under_the_monitor(malacoda_unit) -> None:
    d = malacoda_unit(str(ROOT / "conf" / "MessageDaemon.toml"))
    assert d.insert_message("from a fixture") == "Message received!"
    assert d.pst_counter == 1
    e = malacoda_unit(name="Echo2", cls="tests.support.daemons:TestDaemon", path=[str(ROOT)], **FAST)
    assert e.add(1, 2) == 3
    from malacoda.supervisor.supervise import status

    assert status("Echo2").monitor_pid is not None  # a real monitor is its parent
    assert psutil.Process(status("Echo2").pid).ppid() == status("Echo2").monitor_pid


def test_stop_escalates_to_sigkill_of_the_process_group(ctl: Ctl) -> None:
    ctl.unit("Mule", cls="tests.support.daemons:Stubborn", stop_timeout=1.5)
    ctl.ok("start", "Mule")
    pid = ctl.status("Mule")["pid"]
    child = int(wait_for(lambda: ctl("get", "Mule", "child").stdout.strip().isdigit()
                         and ctl.ok("get", "Mule", "child"), what="the child to start"))
    assert ctl.ok("stop", "Mule") == "Mule stopped\n"
    assert not pid_alive(pid)
    wait_for(lambda: not pid_alive(child), what="the daemon's child to be killed with its group")
    assert ctl.status("Mule")["last_exit"] == {"signal": "SIGKILL"}
    assert "did not stop in 1.5 s: SIGKILL" in ctl.ok("logs", "Mule", "-n", "50")


def _running_again(ctl: Ctl, name: str, old_pid: int) -> Dict[str, Any]:
    def check() -> Optional[Dict[str, Any]]:
        row = ctl.status(name)
        return row if row["state"] == "running" and row["pid"] != old_pid else None

    return wait_for(check, timeout=30, what=f"{name} to run again")


def test_restart_policies(ctl: Ctl) -> None:
    # on-failure (the default): a clean exit (the daemon's own stop()) is not restarted.
    ctl.unit("Polite")
    ctl.ok("start", "Polite")
    ctl.ok("call", "Polite", "stop")
    row = wait_for(lambda: (lambda r: r if r["state"] == "stopped" else None)(ctl.status("Polite")),
                   what="Polite to stay stopped")
    assert row["last_exit"] == {"code": 0} and row["restarts"] == 0
    # always: a clean exit is restarted too.
    ctl.unit("Eternal", restart="always")
    ctl.ok("start", "Eternal")
    first = ctl.status("Eternal")["pid"]
    ctl.ok("call", "Eternal", "stop")
    assert _running_again(ctl, "Eternal", first)["last_exit"] == {"code": 0}
    # no: a failure is recorded, not restarted.
    ctl.unit("Once", restart="no")
    ctl.ok("start", "Once")
    os.kill(ctl.status("Once")["pid"], signal.SIGKILL)
    row = wait_for(lambda: (lambda r: r if r["state"] == "failed" else None)(ctl.status("Once")),
                   what="Once to be failed")
    assert row["last_exit"] == {"signal": "SIGKILL"} and row["restarts"] == 0
    # a stable period resets the count: start_limit = 1 survives any number of spaced failures.
    ctl.unit("Steady", start_limit=1, backoff_reset=0.5)
    ctl.ok("start", "Steady")
    row = ctl.status("Steady")
    for _ in range(2):
        wait_for(lambda: (ctl.status("Steady")["uptime"] or 0) >= 2.0, what="a stable period")
        os.kill(row["pid"], signal.SIGKILL)
        row = _running_again(ctl, "Steady", row["pid"])
    assert row["restarts"] == 2
    ctl.ok("stop", "--all")


def test_a_status_record_naming_another_process_is_never_signalled(ctl: Ctl, processes) -> None:
    from malacoda.host.paths import Paths
    from malacoda.host.process import process_start_time
    from malacoda.supervisor.monitor import Record, write_record
    from tests.support import DaemonProcess

    bystander = processes.add(DaemonProcess("import time; time.sleep(60)", ctl.env))
    started = wait_for(lambda: process_start_time(bystander.pid), what="the bystander")
    paths = Paths(ctl.home / "run", ctl.home / "log", ctl.home / "lib", ctl.home / "units",
                  ctl.home / "keys")
    write_record(paths, Record(name="Planted", state="running", monitor_pid=bystander.pid,
                               monitor_start=started, pid=bystander.pid))
    assert ctl.status("Planted")["state"] == "stale"
    assert ctl.ok("stop", "Planted") == "Planted not running\n"
    assert bystander.alive()
    assert ctl.status("Planted")["state"] == "stopped"
