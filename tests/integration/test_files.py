"""Files: owner-only modes whatever the umask, and nothing another user wrote is trusted.

CI runs as root, so "another user" is made with ``os.chown`` to uid 65534 (nobody).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import struct
import subprocess
from pathlib import Path

import pytest

import malacoda
from malacoda.host.paths import Paths
from malacoda.host.process import process_start_time
from malacoda.host.registry import Entry, Registry
from malacoda.security import Keys
from tests.support import RunsCode, wait_for

NOBODY = 65534
UMASK_0 = "import os; os.umask(0)"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def root_only():
    if os.geteuid() != 0:
        pytest.skip("making files owned by another user needs root (CI runs as root)")


def test_run_dir_registry_lock_and_state_are_owner_only_with_umask_0(start_daemon, home):
    start_daemon(prelude=UMASK_0, pst_config={"class_name": "PstFileStorage", "frequency": 0.05})
    d = malacoda.get("TestDaemon")
    d.pst_counter = 1
    state = home / "lib" / "TestDaemon.pst"
    wait_for(state.exists, what="the state file")
    files = [home / "run" / "registry" / "TestDaemon.json", home / "run" / "TestDaemon.lock", state]
    folders = [home / "run", home / "run" / "registry", home / "lib"]
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    malacoda.stop("TestDaemon")


def test_sqlite_state_and_log_file_are_owner_only_with_umask_0(start_daemon, home):
    start_daemon(prelude=UMASK_0, daemonize=True, wait=False,
                 pst_config={"class_name": "PstSqliteStorage", "frequency": 0.05})
    wait_for(lambda: Registry().read("TestDaemon")[1] == "running", what="the detached daemon")
    d = malacoda.get("TestDaemon")
    d.pst_counter = 2
    db = home / "lib" / "TestDaemon.sqlite"
    wait_for(db.exists, what="the database")
    malacoda.stop("TestDaemon")
    made = [p for p in (home / "lib").iterdir()] + [home / "log" / "TestDaemon.log"]
    assert {str(p): mode(p) for p in made} == {str(p): 0o600 for p in made}
    assert mode(home / "log") == 0o700


def test_keys_are_owner_only_with_umask_0(home):
    old = os.umask(0)
    try:
        Keys(Paths.default()).init()
    finally:
        os.umask(old)
    keys = home / "keys"
    assert mode(keys) == 0o700 and mode(keys / "authorized") == 0o700
    made = sorted(keys.glob("*.key*"))
    assert len(made) == 4
    assert {p.name: mode(p) for p in made} == {p.name: 0o600 for p in made}


def test_authorized_key_planted_by_another_user_is_ignored(home):
    import zmq

    keys = Keys(Paths.default())
    keys.init()
    mine, _ = zmq.curve_keypair()
    theirs, _ = zmq.curve_keypair()
    keys.authorize(mine.decode(), label="mine")
    planted = keys.authorized_folder / "intruder.key"
    planted.write_text(f'curve\n    public-key = "{theirs.decode()}"\n')
    os.chown(planted, NOBODY, NOBODY)
    assert keys.is_authorized(mine)
    assert not keys.is_authorized(theirs)
    os.chown(planted, 0, 0)
    os.chmod(planted, 0o666)  # ours, but anyone could have written it
    assert not keys.is_authorized(theirs)


def forged_entry(registry: Registry, name: str, **changes) -> Path:
    """A registry entry that points at this (live) test process, as an attacker would write."""
    entry = Entry(name=name, pid=os.getpid(), port=1, address="127.0.0.1",
                  start_time=process_start_time(os.getpid()), incarnation="forged",
                  uid=os.geteuid(), version="0")
    for key, value in changes.items():
        setattr(entry, key, value)
    registry.write(entry)
    return registry.folder / f"{name}.json"


def test_registry_entries_not_ours_or_of_another_process_are_ignored(home):
    registry = Registry(Paths.default())
    path = forged_entry(registry, "Genuine")
    assert registry.read("Genuine")[1] == "running"  # the control: a faithful entry is trusted

    os.chown(forged_entry(registry, "ByNobody"), NOBODY, NOBODY)
    os.chmod(forged_entry(registry, "Writable"), 0o666)
    forged_entry(registry, "OtherStart", start_time=process_start_time(os.getpid()) - 30)
    forged_entry(registry, "OtherUid", uid=NOBODY)
    forged_entry(registry, "DeadPid", pid=2**22 + 12345)
    for name in ("ByNobody", "Writable", "OtherStart", "OtherUid", "DeadPid"):
        assert registry.read(name)[1] == "stale", name
        with pytest.raises(malacoda.LookupFailed):
            malacoda.get(name)
    link = registry.folder / "Linked.json"
    link.symlink_to(path)
    assert registry.read("Linked")[1] == "stale"


def test_forged_entry_is_replaced_by_the_real_daemon(start_daemon, home):
    registry = Registry(Paths.default())
    os.chown(forged_entry(registry, "TestDaemon"), NOBODY, NOBODY)
    proc = start_daemon()
    entry, state = registry.read("TestDaemon")
    assert state == "running" and entry.pid == proc.pid and entry.incarnation != "forged"
    assert malacoda.get("TestDaemon").echo("real") == "real"


def test_lock_file_planted_by_another_user_does_not_block_or_stay(start_daemon, home):
    run = home / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    lock = run / "TestDaemon.lock"
    lock.write_text("1\n")  # "held by pid 1"
    os.chown(lock, NOBODY, NOBODY)
    proc = start_daemon()
    assert lock.stat().st_uid == os.geteuid() and mode(lock) == 0o600
    assert lock.read_text().strip() == str(proc.pid)


@pytest.mark.parametrize("damage", ["another owner", "group writable"])
def test_unsafe_run_dir_is_refused(start_daemon, home, damage):
    run = home / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    if damage == "another owner":
        os.chown(run, NOBODY, NOBODY)
    else:
        os.chmod(run, 0o770)
    proc = start_daemon(wait=False)
    assert proc.wait(10) != 0
    out = proc.output()
    assert "ConfigError" in out and str(run) in out, out


def malicious_state_file(path: Path, marker: Path) -> None:
    payload = pickle.dumps({"pst_counter": RunsCode(str(marker))})
    header = b"MLCPST1\n" + struct.pack(">Q", len(payload)) + hashlib.sha256(payload).digest()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(header + payload)


@pytest.mark.parametrize("damage", ["another owner", "world writable"])
def test_state_file_another_user_could_write_is_never_loaded(start_daemon, home, tmp_path,
                                                             damage):
    """Loading state runs code (dill): a file someone else could have written is refused."""
    state = home / "lib" / "TestDaemon.pst"
    marker = tmp_path / "LOADED"
    malicious_state_file(state, marker)
    if damage == "another owner":
        os.chown(state, NOBODY, NOBODY)
    else:
        os.chmod(state, 0o666)
    before = state.read_bytes()
    proc = start_daemon(wait=False)
    assert proc.wait(10) != 0
    out = proc.output()
    assert "StateError" in out and str(state) in out, out
    assert not marker.exists()
    assert state.read_bytes() == before


def test_registry_json_is_data_only(home):
    """An entry is parsed as JSON into known fields; unknown keys are dropped."""
    registry = Registry(Paths.default())
    path = forged_entry(registry, "Extra")
    raw = json.loads(path.read_bytes())
    raw["__class__"] = "os.system"
    raw["extra"] = {"__reduce__": "x"}
    path.write_bytes(json.dumps(raw).encode())
    entry, state = registry.read("Extra")
    assert state == "running" and not hasattr(entry, "__reduce__x")
    assert type(entry).__name__ == "Entry"


def fake_monitor(home: Path, **popen) -> subprocess.Popen:
    """A process whose command line says ``malacoda.supervisor.host`` (what a record's supervisor is
    checked for)."""
    return subprocess.Popen(["/bin/sh", "-c", "sleep 60; :", "malacoda.supervisor.host"], **popen)


@pytest.mark.parametrize("forgery", ["another owner", "world writable", "another uid's process"])
def test_forged_status_record_never_gets_a_process_signalled(home, forgery):
    """A status record names the monitor pid that ``stop`` signals: one another user could have
    written, or naming another user's process, is ignored."""
    from malacoda.supervisor import supervise as supervise
    from malacoda.supervisor.monitor import Record, record_path, write_record

    paths = Paths.default()
    victim = fake_monitor(home, user=NOBODY if forgery == "another uid's process" else None)
    try:
        wait_for(lambda: process_start_time(victim.pid), what="the victim to start")
        record = Record(name="Forged", state="running", monitor_pid=victim.pid,
                        monitor_start=process_start_time(victim.pid))
        write_record(paths, record)
        path = record_path(paths, "Forged")
        if forgery == "another owner":
            os.chown(path, NOBODY, NOBODY)
        elif forgery == "world writable":
            os.chmod(path, 0o666)
        assert supervise.status("Forged").state in ("stopped", "stale")
        assert supervise.stop("Forged", stop_timeout=1) == "not running"
        assert victim.poll() is None, "a forged record got a process signalled"
    finally:
        victim.kill()
        victim.wait()


def test_faithful_status_record_is_used(home):
    """The control for the test above: our own record naming our own monitor is trusted."""
    from malacoda.supervisor.monitor import Record, read_record, write_record

    paths = Paths.default()
    victim = fake_monitor(home)
    try:
        wait_for(lambda: process_start_time(victim.pid), what="the process to start")
        write_record(paths, Record(name="Mine", state="running", monitor_pid=victim.pid,
                                   monitor_start=process_start_time(victim.pid)))
        assert read_record(paths, "Mine").monitor_alive()
    finally:
        victim.kill()
        victim.wait()


def test_curve_on_loopback_for_a_shared_host(start_daemon):
    """Every local user can connect to a loopback port; ``curve=True`` closes that: only
    authorized client keys get in, and this user's proxy finds the key in the registry."""
    from malacoda.client.channel import Channel
    from malacoda.wire.protocol import request_frames

    keys = Keys(Paths.default())
    pairs = keys.init()
    keys.authorize(pairs["client"].public.decode())
    start_daemon(curve=True)
    entry = Registry().lookup("TestDaemon")
    assert entry.address == "127.0.0.1" and entry.server_key == pairs["server"].public.decode()
    assert malacoda.get("TestDaemon", timeout=10).echo("mine") == "mine"
    stranger = Channel(f"tcp://127.0.0.1:{entry.port}")  # another local user: no key
    try:
        rid = b"s" * 16
        with pytest.raises(malacoda.ConnectionLost):
            stranger.request(request_frames(rid, "ping", None, None, None), rid, 10)
    finally:
        stranger.close()


def test_curve_on_loopback_without_keys_is_refused(start_daemon):
    proc = start_daemon(curve=True, wait=False)
    assert proc.wait(20) != 0
    out = proc.output()
    assert "curve = true requires CURVE keys" in out and "malacodactl keys init" in out, out
