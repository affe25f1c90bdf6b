"""runtime helpers checked against real processes and files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from malacoda.errors import ConfigError
from malacoda.runtime import Paths, atomic_write, process_start_time, same_process
from tests.support import wait_for


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_same_process_alive_mismatched_and_exited(child: subprocess.Popen) -> None:
    started = wait_for(lambda: process_start_time(child.pid), what="the child to start")
    uid = os.getuid()
    assert same_process(child.pid, started, uid)
    assert same_process(child.pid, started)  # owner not checked
    assert same_process(child.pid, started + 0.01, uid)  # within the slack of two readings
    assert not same_process(child.pid, started - 1.0, uid)  # the pid now names another process
    assert not same_process(child.pid, started + 1.0, uid)
    assert not same_process(child.pid, started, uid + 1)  # someone else's process
    child.kill()
    wait_for(lambda: not same_process(child.pid, started, uid), what="the zombie to count as gone")
    child.wait(10)
    assert not same_process(child.pid, started, uid)  # reaped


def test_same_process_of_a_pid_that_never_ran() -> None:
    max_pid = int(open("/proc/sys/kernel/pid_max").read())
    assert not same_process(max_pid + 1, 0.0)
    assert not same_process(-1, 0.0)


def test_log_file_is_named_after_the_daemon(home) -> None:
    paths = Paths.default()
    assert paths.log_file("Web.1") == paths.log / "Web.1.log"
    with pytest.raises(ConfigError, match="invalid daemon name"):
        paths.log_file("../escape")


def test_atomic_write_without_replace_never_overwrites(tmp_path):
    target = tmp_path / "key"
    atomic_write(target, b"first", mode=0o600, replace=False)
    assert target.read_bytes() == b"first" and (target.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temporary file left
