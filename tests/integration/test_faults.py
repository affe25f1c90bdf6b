"""Faults: kill -9 mid-save, a full disk, damaged state files, a stopped (hung) daemon."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import malacoda
from malacoda.client.proxy import request
from malacoda.errors import StateError
from malacoda.host.paths import Paths
from malacoda.storage import PstFileStorage
from tests.support import InThread, wait_for
from tests.support.fault_daemons import state_is_consistent

KILL_ROUNDS = 30
FAST_SAVES = {"class_name": "PstFileStorage", "frequency": 0.005}


def saver(start_daemon, wait=True, **kwargs):
    return start_daemon("SaverDaemon", wait=wait, module="tests.support.fault_daemons", **kwargs)


def last_saved(output: str) -> int:
    saved = re.findall(r"^saved (\d+)$", output, re.M)
    return int(saved[-1]) if saved else 0


@pytest.mark.slow
def test_kill_9_at_random_instants_never_tears_or_loses_state(start_daemon, home):
    """30 rounds: a daemon saving ~every 5 ms is killed with SIGKILL at a random instant
    (sometimes before it is even ready). The state file then always loads, is consistent (old or
    new, never a mix) and is never older than the last save the daemon reported; the next start
    loads exactly that state."""
    rng = random.Random(5)
    state = home / "lib" / "SaverDaemon.pst"
    storage = PstFileStorage("SaverDaemon", Paths.default())
    expected_load = 0
    saves_survived = 0
    for round_ in range(KILL_ROUNDS):
        ready = rng.random() < 0.8
        proc = saver(start_daemon, wait=ready, pst_config=FAST_SAVES)
        time.sleep(rng.uniform(0.0, 0.4))  # the random instant itself is what is tested
        proc.kill(signal.SIGKILL)
        proc.wait()
        output = proc.output()
        loaded = re.findall(r"^loaded (\d+)$", output, re.M)
        if loaded:
            assert int(loaded[0]) == expected_load, f"round {round_}: loaded {loaded[0]}"
        if not state.exists():
            assert last_saved(output) == 0
            continue
        on_disk = storage.load()  # raises StateError if torn
        assert state_is_consistent(on_disk["pst_state"]), f"round {round_}: a mixed state"
        assert on_disk["pst_state"]["n"] >= last_saved(output), f"round {round_}: lost a save"
        assert on_disk["pst_state"]["n"] >= expected_load
        expected_load = on_disk["pst_state"]["n"]
        saves_survived += 1
    assert saves_survived >= KILL_ROUNDS // 2
    saver(start_daemon, pst_config=FAST_SAVES)  # a start clears what a killed save left
    malacoda.stop("SaverDaemon")
    leftovers = [p.name for p in state.parent.iterdir() if p.name != state.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, mounted for this test (root only)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    path = tmp_path / "small"
    path.mkdir(mode=0o700)
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_disk_full_keeps_the_old_state_and_the_daemon(start_daemon, small_disk, tmp_path):
    state = small_disk / "SaverDaemon.pst"
    log_file = tmp_path / "daemon.log"
    config = {"class_name": "PstFileStorage", "frequency": 0.05, "file_path": str(state)}
    saver(start_daemon, pst_config=config, size=4096, log_file=str(log_file))
    d = malacoda.get("SaverDaemon", timeout=10)
    d.freeze()
    storage = PstFileStorage("SaverDaemon", Paths.default(), file_path=str(state))

    def saved_now():
        return state.exists() and storage.load()["pst_state"]["n"] == d.pst_state["n"]

    wait_for(saved_now, what="the frozen state to be saved")
    before = state.read_bytes()
    filler = fill(small_disk)
    d.pst_extra = b"x" * (256 << 10)  # the next save needs space there is not
    wait_for(lambda: "saving pst state failed" in log_file.read_text(), what="the error logged")
    assert "No space left on device" in log_file.read_text()
    assert state.read_bytes() == before  # the old state stays, whole
    assert storage.load()["pst_extra"] == b""
    assert sorted(p.name for p in small_disk.iterdir()) == ["SaverDaemon.pst", "filler"]
    assert d.pid()  # still serving
    filler.unlink()  # space returns
    wait_for(lambda: storage.load()["pst_extra"] == b"x" * (256 << 10),
             what="the next save to succeed")


def damaged_copies(good: bytes):
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF
    return {
        "truncated": good[: len(good) // 2],
        "checksum": bytes(flipped),
        "empty": b"",
        "garbage": random.Random(300).randbytes(300),
        "header only": good[:48],
    }


@pytest.mark.parametrize("damage", ["truncated", "checksum", "empty", "garbage", "header only"])
def test_damaged_state_file_refuses_the_start_and_is_untouched(start_daemon, home, damage):
    start_daemon()
    d = malacoda.get("TestDaemon")
    d.pst_counter = 3
    malacoda.stop("TestDaemon")
    state = home / "lib" / "TestDaemon.pst"
    state.write_bytes(damaged_copies(state.read_bytes())[damage])
    before = (state.read_bytes(), state.stat().st_mtime_ns, state.stat().st_mode)
    proc = start_daemon(wait=False)
    assert proc.wait(10) != 0
    out = proc.output()
    assert "StateError" in out and str(state) in out and "left untouched" in out, out
    assert (state.read_bytes(), state.stat().st_mtime_ns, state.stat().st_mode) == before
    with pytest.raises(StateError):
        PstFileStorage("TestDaemon", Paths.default()).load()


def test_damaged_sqlite_state_refuses_the_start(start_daemon, home):
    db = home / "lib" / "TestDaemon.sqlite"
    db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db.write_bytes(b"SQLite format 3\0" + random.Random(4080).randbytes(4080))
    os.chmod(db, 0o600)
    before = db.read_bytes()
    proc = start_daemon(wait=False, pst_config={"class_name": "PstSqliteStorage"})
    assert proc.wait(10) != 0
    out = proc.output()
    assert "StateError" in out and str(db) in out, out
    assert db.read_bytes() == before


@pytest.mark.slow
def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def test_stopped_daemon_times_out_then_recovers(start_daemon):
    """SIGSTOP: calls with a timeout time out, a ping goes unanswered, a call without a timeout
    fails after two missed heartbeats instead of hanging; after SIGCONT it serves again."""
    proc = start_daemon()
    d = malacoda.get("TestDaemon")
    assert d.echo(1) == 1
    os.kill(proc.pid, signal.SIGSTOP)
    # kill() returns before every thread has stopped: on a loaded machine the daemon could
    # still answer the next call. Wait until all its threads are in the stopped state.
    wait_for(lambda: _all_threads_stopped(proc.pid), what="the daemon's threads to stop")
    try:
        with pytest.raises(malacoda.CallTimeout):
            d.echo(2, timeout=0.5)
        with pytest.raises(malacoda.CallTimeout):
            request(d, "ping", None, None, 0.5)
        forever = InThread(d.echo, 3).join(30)  # no timeout: the heartbeat must end it
        assert isinstance(forever.error, malacoda.ConnectionLost), forever.value
        assert "did not answer a ping" in str(forever.error)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert d.echo(4, timeout=10) == 4


def test_enospc_is_what_fill_produces(small_disk):
    """The fixture really fills the disk (guards the disk-full test against a no-op)."""
    fill(small_disk)
    with pytest.raises(OSError) as info, open(small_disk / "more", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.ENOSPC
