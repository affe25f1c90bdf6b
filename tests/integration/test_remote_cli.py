"""malacodactl with NAME:HOST and --host, against a real sshd (tests/support/sshd.py), and `keys`."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from malacoda.host.paths import Paths
from malacoda.security import Keys
from tests.support import wait_for
from tests.support.ctl import Ctl, Follower, one_line_error


def _ctl(home: Path, tmp_path: Path) -> Iterator[Ctl]:
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o700)
    runner = Ctl(home, conf)  # its environment is this process's, as the fixtures set it
    yield runner
    runner.cleanup()


@pytest.fixture
def remote_ctl(web1, home: Path, tmp_path: Path) -> Iterator[Ctl]:
    """``malacodactl`` whose environment reaches web1 (HOME with ~/.ssh/config, remote Python)."""
    yield from _ctl(home, tmp_path)


@pytest.fixture
def local_ctl(home: Path, tmp_path: Path) -> Iterator[Ctl]:
    yield from _ctl(home, tmp_path)


@pytest.mark.slow
def test_every_command_with_name_host(remote_ctl: Ctl) -> None:
    ctl = remote_ctl
    ctl.unit("Remote1")
    ctl.ok("start", "Remote1")
    assert ctl.ok("call", "Remote1:web1", "echo", "hi").strip() == "hi"
    ctl.ok("set", "Remote1:web1", "pst_counter", "41")
    assert ctl.ok("call", "Remote1:web1", "bump").strip() == "42"
    assert ctl.ok("get", "Remote1:web1", "pst_counter").strip() == "42"
    assert "echo" in ctl.ok("describe", "Remote1:web1")

    [row] = json.loads(ctl.ok("status", "Remote1:web1", "--json"))
    assert (row["host"], row["name"], row["state"]) == ("web1", "Remote1", "running")
    rows = json.loads(ctl.ok("status", "--all", "--host", "web1", "--json"))
    assert [(r["host"], r["name"]) for r in rows] == [("web1", "Remote1")]
    table = ctl.ok("status", "--host", "web1").splitlines()
    assert table[0].split()[:3] == ["NAME", "HOST", "STATE"]
    assert table[1].split()[:3] == ["Remote1", "web1", "running"]

    assert "ready" in ctl.ok("logs", "Remote1", "--host", "web1", "-n", "50")
    assert "ready" in ctl.ok("logs", "Remote1:web1", "-n", "50")

    assert ctl.ok("stop", "Remote1:web1").strip() == "Remote1 stopped"
    result = ctl("status", "Remote1:web1", "--json")
    assert result.returncode == 3 and json.loads(result.stdout)[0]["state"] == "stopped"


@pytest.mark.slow
def test_logs_follow_over_ssh(remote_ctl: Ctl) -> None:
    ctl = remote_ctl
    ctl.unit("Talk", cls="tests.support.daemons:Talker")
    ctl.ok("start", "Talk")
    follower = Follower(ctl, "Talk:web1")
    with follower:
        pass  # it followed: a marker said through the daemon came back over SSH
    assert follower.proc.returncode == 0

    def remote_followers() -> list:  # `logs -f` that sshd started for us on "web1"
        return [p for p in ctl.processes() if "logs" in _cmdline(p) and "-f" in _cmdline(p)]

    wait_for(lambda: not remote_followers(), timeout=15,
             what="the remote 'logs -f' to end with its SSH session")


def _cmdline(proc) -> list:
    try:
        return proc.cmdline()
    except Exception:
        return []


def test_errors_name_the_host_in_one_line(remote_ctl: Ctl) -> None:
    ctl = remote_ctl
    one_line_error(ctl("call", "Nobody:web1", "echo", "1"), 3, "no daemon named 'Nobody'", "web1")
    one_line_error(ctl("status", "Nobody:web1"), 4, "web1", "unknown unit 'Nobody'")
    one_line_error(ctl("logs", "Nobody", "--host", "web1"), 3, "web1", "no log for 'Nobody'")
    one_line_error(ctl("call", "X:no-such-host.invalid", "echo", "1"), 4, "unknown host")
    env = dict(ctl.env, MALACODA_REMOTE_PYTHON="/nonexistent/python3")
    result = subprocess.run(ctl.argv("status", "--host", "web1"), env=env, capture_output=True,
                            text=True, timeout=60)
    one_line_error(result, 4, "web1: Malacoda is not installed there")


def test_an_unreachable_host_is_a_row_with_its_error(remote_ctl: Ctl) -> None:
    """status across hosts: the host that cannot be asked is a row (state 'unreachable', its
    error), the others' rows are there, the exit code is the worst (4)."""
    ctl = remote_ctl
    ctl.unit("Reached")
    ctl.ok("start", "Reached")
    result = ctl("status", "Reached", "--host", "web1", "--host", "no-such-host.invalid",
                 "--json")
    assert result.returncode == 4, (result.stdout, result.stderr)
    rows = {r["host"]: r for r in json.loads(result.stdout)}
    assert (rows["web1"]["name"], rows["web1"]["state"]) == ("Reached", "running")
    bad = rows["no-such-host.invalid"]
    assert bad["state"] == "unreachable" and "no-such-host.invalid" in bad["message"], bad
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    table = ctl("status", "Reached", "--host", "web1", "--host", "no-such-host.invalid")
    assert table.returncode == 4
    assert any(line.split()[:3] == ["Reached", "no-such-host.invalid", "unreachable"]
               for line in table.stdout.splitlines()), table.stdout
    ctl.ok("stop", "Reached")


def test_keys_commands(local_ctl: Ctl, home: Path) -> None:
    ctl = local_ctl
    out = ctl.ok("keys", "init")
    keys = Keys(Paths(home / "run", home / "log", home / "lib", home / "units", home / "keys"))
    server, client = keys.pair("server"), keys.pair("client")
    assert server.public.decode() in out and client.public.decode() in out
    for path in keys.folder.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    # A key may start with '-', and hold an 'h' that click would read as -h (help).
    other = next(key for key, _ in iter(zmq.curve_keypair, None)
                 if key.startswith(b"-") and b"h" in key)
    assert "authorized laptop" in ctl.ok("keys", "authorize", other.decode(), "--name", "laptop")
    shown = ctl.ok("keys", "show")
    assert "laptop" in shown and other.decode() in shown and server.public.decode() in shown
    one_line_error(ctl("keys", "authorize", "not-a-key"), 2, "not a CURVE public key")
    assert "revoked laptop" in ctl.ok("keys", "revoke", "laptop")
    one_line_error(ctl("keys", "revoke", "laptop"), 2, "not an authorized key")
    ctl.ok("keys", "authorize", other.decode())
    assert "revoked" in ctl.ok("keys", "revoke", other.decode())
    assert keys.authorized() == {}
