"""runtime helpers checked against real processes and files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from malacoda.errors import ConfigError
from malacoda.host.files import atomic_write
from malacoda.host.paths import Paths
from malacoda.host.process import process_start_time, same_process
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


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_registry_of_another_user_trusts_only_that_users_own_entries(tmp_path, child) -> None:
    """Root reads another user's registry with owner=UID: an entry counts only when the file
    belongs to that user, is not writable by others, and says that user's uid."""
    import json

    from malacoda.host.registry import Entry, Registry

    other = 65534  # nobody
    run = tmp_path / "run"
    (run / "registry").mkdir(parents=True)
    paths = Paths(run, run, run, run, run)
    entry_file = run / "registry" / "X.json"
    start = process_start_time(child.pid)
    assert start is not None

    def plant(uid_in_entry: int, file_owner: int, mode: int = 0o600) -> None:
        entry = Entry(name="X", pid=child.pid, port=1, address="127.0.0.1", start_time=start,
                      incarnation="i", uid=uid_in_entry, version="0", secret="s")
        entry_file.write_text(json.dumps(entry.__dict__))
        os.chown(entry_file, file_owner, file_owner)
        os.chmod(entry_file, mode)

    plant(other, other)  # nobody's entry, but the child runs as root: its pid check fails
    assert Registry(paths, owner=other).read("X")[1] == "stale"
    plant(0, other)  # a file of nobody's claiming root's daemon
    assert Registry(paths, owner=other).read("X")[1] == "stale"
    assert Registry(paths, owner=0).read("X")[1] == "stale"
    plant(0, 0, 0o666)  # root's, writable by others
    assert Registry(paths, owner=0).read("X")[1] == "stale"
    plant(0, 0)
    assert Registry(paths, owner=0).read("X")[1] == "running"
    assert Registry(paths, owner=other).read("X")[1] == "stale"
