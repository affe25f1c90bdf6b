"""No code from a place others can write: the current folder, a unit's ``path`` and ``workdir``.

Each planted module writes a marker file when imported: a marker means Malacoda ran code it
should never have found.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from malacoda.host.launch import python_command
from malacoda.testing import write_unit
from tests.support import ROOT, RunsCode
from tests.support.ctl import FAST, Ctl

PLANTED = ("json", "logging", "signal", "zmq")


def plant(folder: Path, markers: Path) -> Path:
    """``json.py``, ``logging.py``, ``signal.py`` and ``zmq.py`` in ``folder``, each writing
    ``markers/<name>`` when imported."""
    folder.mkdir(parents=True, exist_ok=True)
    markers.mkdir(mode=0o700, exist_ok=True)
    for name in PLANTED:
        (folder / f"{name}.py").write_text(
            f"open({str(markers / name)!r}, 'w').write('imported from ' + __file__)\n")
    return folder


def ran(markers: Path) -> list:
    return sorted(p.name for p in markers.iterdir())


def console_script() -> str:
    script = Path(sys.executable).parent / "malacodactl"
    if not script.exists():
        pytest.skip(f"no malacodactl script next to {sys.executable}")
    return str(script)


def test_start_from_a_folder_others_write_runs_none_of_its_modules(ctl: Ctl, tmp_path: Path):
    """``cd /tmp && malacodactl start X``: neither the monitor nor the daemon imports from /tmp,
    nor from the unit's workdir."""
    markers = tmp_path / "markers"
    shared = plant(tmp_path / "shared", markers)
    shared.chmod(0o1777)  # like /tmp
    workdir = plant(tmp_path / "work", markers)
    workdir.chmod(0o700)  # the user's own folder: its stray modules must not shadow either
    ctl.unit("Planted", workdir=str(workdir))
    env = dict(ctl.env, PYTHONPATH=str(ROOT))  # no empty entry: that would be the shell's doing
    started = subprocess.run([console_script(), "--unit-path", str(ctl.conf), "start", "Planted"],
                             cwd=str(shared), env=env, capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, (started.stdout, started.stderr)
        assert ctl.ok("call", "Planted", "echo", "hi") == "hi\n"
        assert ran(markers) == []
    finally:
        ctl("stop", "Planted")
    assert ran(markers) == []


def test_the_systemd_exec_start_takes_no_module_from_the_working_directory(ctl: Ctl,
                                                                           tmp_path: Path):
    """Both forms of ExecStart= (the installed script, and this Python when there is none)
    run in WorkingDirectory= (the unit's workdir) without importing its modules."""
    markers = tmp_path / "markers"
    workdir = plant(tmp_path / "work", markers)
    workdir.chmod(0o700)
    ctl.unit("Planted", workdir=str(workdir))
    bin_dir = str(Path(console_script()).parent)
    for path in (os.pathsep.join([bin_dir, "/usr/bin", "/bin"]), "/usr/bin:/bin"):
        env = dict(ctl.env, PATH=path, PYTHONPATH=str(ROOT))
        printed = subprocess.run(ctl.argv("systemd", "Planted"), env=env, cwd=str(ctl.home),
                                 capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, printed.stderr
        [line] = [x for x in printed.stdout.splitlines() if x.startswith("ExecStart=")]
        argv = shlex.split(line[len("ExecStart="):])
        assert "-m" not in argv, argv
        argv[argv.index("run")] = "check"  # imports Malacoda and the unit's class, then exits
        checked = subprocess.run(argv, env=env, cwd=str(workdir), capture_output=True, text=True,
                                 timeout=60)
        assert checked.returncode == 0, (argv, checked.stdout, checked.stderr)
        assert ran(markers) == [], argv


def test_the_remote_lookup_command_takes_no_module_from_the_remote_home(home: Path,
                                                                      tmp_path: Path):
    """What ``NAME:HOST`` runs over SSH, run here by a shell in a folder of planted modules
    (sshd starts it in the remote user's home)."""
    from malacoda.remote.host import shell_command

    markers = tmp_path / "markers"
    remote_home = plant(tmp_path / "remote-home", markers)
    command = shell_command(sys.executable, "malacoda.remote_lookup", ["Nobody"],
                            {"MALACODA_HOME": str(home), "PYTHONPATH": str(ROOT)})
    done = subprocess.run(["/bin/sh", "-c", command], cwd=str(remote_home), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"state": "absent"' in done.stdout
    assert ran(markers) == []


def test_python_command_drops_only_the_current_folder(tmp_path: Path):
    markers = tmp_path / "markers"
    cwd = plant(tmp_path / "cwd", markers)
    done = subprocess.run(python_command("json.tool", ["--compact"]), input='{"a": [1, 2]}',
                          cwd=str(cwd), capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"a":[1,2]}'
    assert ran(markers) == []


def test_an_empty_or_relative_pythonpath_entry_does_not_reach_the_children(tmp_path: Path):
    """``PYTHONPATH=/opt/lib:`` (an empty entry: the current folder) as the CLI passes it on to
    the monitor and the daemon."""
    from malacoda.supervisor.monitor import PACKAGE_PARENT, package_env

    env = package_env({"PYTHONPATH": os.pathsep.join(["", "/opt/lib", "", "rel"])})
    assert env["PYTHONPATH"].split(os.pathsep) == [PACKAGE_PARENT, "/opt/lib", os.path.abspath("rel")]


@pytest.fixture(scope="module")
def other_user() -> Iterator[int]:
    """The uid of a throwaway local user (created as root, removed after)."""
    if os.geteuid() != 0:
        pytest.skip("creating another local user needs root (CI runs as root)")
    name = "mlcb_other"
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd

        yield pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


def planted_daemon(folder: Path, markers: Path) -> Path:
    """``folder/planted_mod.py``: a daemon module that writes ``markers/planted_mod`` on import."""
    folder.mkdir(parents=True, exist_ok=True)
    markers.mkdir(mode=0o700, exist_ok=True)
    (folder / "planted_mod.py").write_text(
        f"open({str(markers / 'planted_mod')!r}, 'w')\n"
        "from tests.support.daemons import TestDaemon as Planted\n")
    return folder / "planted_mod.py"


@pytest.mark.parametrize("damage", ["path entry 0777", "path entry of another user",
                                    "module file 0666", "module file of another user",
                                    "package folder 0777", "missing path entry under 1777",
                                    "workdir 0777", "workdir of another user"])
def test_code_or_workdir_others_can_write_is_refused(ctl: Ctl, tmp_path: Path, other_user: int,
                                                     damage: str):
    markers = tmp_path / "markers"
    code = tmp_path / "code"
    module = planted_daemon(code, markers)
    keys = {"path": [str(code), str(ROOT)]}
    cls = "planted_mod:Planted"
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    if damage.startswith("path entry"):
        bad = code
    elif damage.startswith("module file"):
        bad = module
    elif damage.startswith("package folder"):
        bad = code / "pkg"
        bad.mkdir()
        (bad / "__init__.py").write_text("")
        module.rename(bad / "planted_mod.py")
        cls = "pkg.planted_mod:Planted"
    elif damage.startswith("missing"):
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        bad = shared
        keys["path"] = [str(shared / "not-yet"), str(code), str(ROOT)]
    else:
        bad = work
        keys["workdir"] = str(work)
    if damage.endswith("another user"):
        os.chown(bad, other_user, other_user)
    elif damage.endswith("0666"):
        bad.chmod(0o666)
    elif damage.endswith("0777"):
        bad.chmod(0o777)
    write_unit(ctl.conf, "Planted", cls=cls, **{**FAST, **keys})
    for command in ("check", "start"):
        result = ctl(command, "Planted")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert str(bad) in lines[0] and "Planted.toml" in lines[0], lines[0]
        assert ("belongs to uid" if damage.endswith("another user") else "writable by other users") \
            in lines[0], lines[0]
        assert ran(markers) == [], command


def test_code_and_workdir_of_our_own_are_used(ctl: Ctl, tmp_path: Path):
    """The control for the test above: the same unit, nothing damaged, starts."""
    markers = tmp_path / "markers"
    code = tmp_path / "code"
    planted_daemon(code, markers)
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    write_unit(ctl.conf, "Planted", cls="planted_mod:Planted",
               **{**FAST, "path": [str(code), str(ROOT)], "workdir": str(work)})
    try:
        ctl.ok("start", "Planted")
        assert ctl.ok("call", "Planted", "echo", "ok") == "ok\n"
        assert ran(markers) == ["planted_mod"]
    finally:
        ctl("stop", "Planted")


# ---------------------------------------------------------------------- state files


def _wal_with_a_row(folder: Path, marker: Path) -> tuple:
    """``(database, wal)`` copies: the database without the row, its ``-wal`` holding it (a
    row dill would load, running code), as a writer that never checkpointed leaves them."""
    import pickle
    import shutil
    import sqlite3

    scratch = folder / "scratch"
    scratch.mkdir(mode=0o700)
    db_path = scratch / "x.sqlite"
    db = sqlite3.connect(str(db_path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE malacoda_pst (name TEXT PRIMARY KEY, payload BLOB NOT NULL)")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA wal_autocheckpoint=0")
    with db:
        db.execute("INSERT INTO malacoda_pst VALUES (?, ?)",
                   ("TestDaemon", pickle.dumps({"pst_counter": RunsCode(str(marker))})))
    copies = folder / "db.copy", folder / "wal.copy"
    shutil.copy(db_path, copies[0])
    shutil.copy(str(db_path) + "-wal", copies[1])
    db.close()
    return copies


@pytest.mark.parametrize("damage", ["-wal of another user", "-wal world writable",
                                    "-shm of another user", "-journal of another user"])
def test_sqlite_files_others_wrote_are_refused_before_sqlite_reads_them(home: Path, tmp_path: Path,
                                                                        other_user: int,
                                                                        damage: str):
    import shutil

    from malacoda import StateError
    from malacoda.host.paths import Paths
    from malacoda.storage import PstSqliteStorage

    marker = tmp_path / "code-ran"
    db_copy, wal_copy = _wal_with_a_row(tmp_path, marker)
    paths = Paths.default()
    lib = paths.lib
    lib.mkdir(mode=0o700)
    db = lib / "TestDaemon.sqlite"
    shutil.copy(db_copy, db)
    db.chmod(0o600)
    suffix = damage.split()[0]
    planted = Path(f"{db}{suffix}")
    if suffix == "-wal":
        shutil.copy(wal_copy, planted)
    else:
        planted.write_bytes(b"")
    planted.chmod(0o600)
    if "another user" in damage:
        os.chown(planted, other_user, other_user)
    else:
        planted.chmod(0o666)
    storage = PstSqliteStorage("TestDaemon", paths)
    with pytest.raises(StateError, match=str(planted)):
        storage.load()
    storage.close()
    assert not marker.exists()


def test_sqlite_control_our_own_wal_is_read(home: Path, tmp_path: Path):
    """The control: the same -wal, ours and private, is read (and its row loaded)."""
    import shutil

    from malacoda.host.paths import Paths
    from malacoda.storage import PstSqliteStorage

    marker = tmp_path / "code-ran"
    db_copy, wal_copy = _wal_with_a_row(tmp_path, marker)
    paths = Paths.default()
    paths.lib.mkdir(mode=0o700)
    db = paths.lib / "TestDaemon.sqlite"
    shutil.copy(db_copy, db)
    shutil.copy(wal_copy, f"{db}-wal")
    storage = PstSqliteStorage("TestDaemon", paths)
    storage.load()
    storage.close()
    assert marker.exists()


def _state_file(path: Path, state: dict) -> None:
    from malacoda.host.paths import Paths
    from malacoda.storage import PstFileStorage

    PstFileStorage(path.stem, Paths.default(), file_path=str(path)).save(state)


def test_a_state_file_swapped_for_a_link_is_refused(home: Path, tmp_path: Path):
    from malacoda import StateError
    from malacoda.host.paths import Paths
    from malacoda.storage import PstFileStorage, PstSqliteStorage

    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    _state_file(folder / "Other.pst", {"pst_who": "other"})
    (folder / "Mine.pst").symlink_to(folder / "Other.pst")
    with pytest.raises(StateError, match="Mine.pst is a symbolic link"):
        PstFileStorage("Mine", Paths.default(), file_path=str(folder / "Mine.pst")).load()
    (folder / "Mine.sqlite").symlink_to(folder / "Other.pst")
    sqlite = PstSqliteStorage("Mine", Paths.default(), file_path=str(folder / "Mine.sqlite"))
    with pytest.raises(StateError, match="Mine.sqlite is a symbolic link"):
        sqlite.load()
    sqlite.close()


@pytest.mark.parametrize("damage", ["0777", "1777", "another user's"])
def test_a_state_file_in_a_folder_others_can_write_is_refused(home: Path, tmp_path: Path,
                                                               other_user: int, damage: str):
    from malacoda import StateError
    from malacoda.host.paths import Paths
    from malacoda.storage import PstFileStorage, PstSqliteStorage

    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    _state_file(folder / "Mine.pst", {"pst_who": "me"})
    sqlite = PstSqliteStorage("Mine", Paths.default(), file_path=str(folder / "Mine.sqlite"))
    sqlite.save({"pst_who": "me"})
    sqlite.close()
    if damage == "another user's":
        os.chown(folder, other_user, other_user)
    else:
        folder.chmod(int(damage, 8))
    for storage in (PstFileStorage("Mine", Paths.default(), file_path=str(folder / "Mine.pst")),
                    PstSqliteStorage("Mine", Paths.default(), file_path=str(folder / "Mine.sqlite"))):
        with pytest.raises(StateError, match=f"{folder}.*(writable by other users|belongs to uid)"):
            storage.load()
        storage.close()
    folder.chmod(0o700)
    os.chown(folder, os.geteuid(), os.getegid())
    assert PstFileStorage("Mine", Paths.default(), file_path=str(folder / "Mine.pst")).load() \
        == {"pst_who": "me"}


# ---------------------------------------------------------------------- folders, config.toml


def as_user(uid: int, home: Path, fn) -> None:
    """Run ``fn()`` in a forked child with ``uid``'s ids, ``umask 0``, ``HOME=home`` and none of
    MALACODA_HOME / XDG_*; fails with the child's traceback."""
    import pwd
    import traceback

    errors = home.parent / f"{home.name}.errors"
    pid = os.fork()
    if pid == 0:  # the child: nothing but os._exit leaves it
        code = 1
        try:
            gid = pwd.getpwuid(uid).pw_gid
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0)
            for var in ("MALACODA_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
                os.environ.pop(var, None)
            os.environ["HOME"] = str(home)
            fn()
            code = 0
        except BaseException:  # noqa: B902 - reported to the parent
            errors.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, errors.read_text() if errors.exists() else status


def test_every_folder_made_is_0700_under_umask_0(other_user: int):
    """A fresh HOME, no MALACODA_HOME: ~/.config, ~/.config/malacoda, ~/.local/state/malacoda
    and the rest are made owner-only, not 0777."""
    import shutil
    import stat
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="mlcb-home-", dir="/tmp"))
    try:
        os.chown(home, other_user, other_user)
        home.chmod(0o700)

        def make_everything() -> None:
            from malacoda.host.files import private_dir
            from malacoda.host.paths import Paths
            from malacoda.host.registry import Registry
            from malacoda.security import Keys

            paths = Paths.default()
            assert str(paths.units).startswith(str(home)), paths
            Keys(paths).init()
            private_dir(paths.log)
            private_dir(paths.lib)
            private_dir(paths.units)
            private_dir(paths.registry)
            assert Registry(paths).names() == []

        as_user(other_user, home, make_everything)
        made = {str(p): stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*") if p.is_dir()}
        for expected in (".config", ".config/malacoda", ".config/malacoda/keys", ".local",
                         ".local/state", ".local/state/malacoda", ".local/state/malacoda/run"):
            assert str(home / expected) in made, sorted(made)
        assert made == {p: 0o700 for p in made}
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("damage", ["writable by others", "another user's"])
def test_a_config_toml_another_user_controls_is_refused(home: Path, other_user: int, damage: str,
                                                       monkeypatch: pytest.MonkeyPatch):
    import malacoda
    from malacoda import cluster

    monkeypatch.delenv("MALACODA_REGISTRY", raising=False)
    config = home / "config.toml"
    config.write_text('registry = "etcd://127.0.0.1:2379"\n')
    config.chmod(0o600)
    assert cluster.load_config() is not None  # the control: ours, private
    if damage == "writable by others":
        config.chmod(0o666)
    else:
        os.chown(config, other_user, other_user)
    with pytest.raises(malacoda.ConfigError, match=f"{config} (is writable by other users|belongs "
                                                   f"to uid {other_user})"):
        cluster.load_config()


# ---------------------------------------------------------------------- secrets in units


def test_a_unit_with_env_values_others_can_read_is_warned_about(ctl: Ctl):
    """``[env]`` is where credentials go: ``check`` and ``start`` warn (one line naming the
    file and the fix) when other users can read it, and still do their work."""
    unit = ctl.unit("Secret", env={"AWS_SECRET_ACCESS_KEY": "hunter2"})
    unit.chmod(0o644)
    checked = ctl("check", "Secret")
    assert checked.returncode == 0, checked.stderr
    warning = checked.stderr.strip().splitlines()
    assert len(warning) == 1 and "warning" in warning[0] and str(unit) in warning[0], warning
    assert "[env]" in warning[0] and f"chmod go-r {unit}" in warning[0], warning
    try:
        started = ctl("start", "Secret")
        assert started.returncode == 0, started.stderr
        assert started.stderr.strip().splitlines() == warning
    finally:
        ctl("stop", "Secret")
    unit.chmod(0o600)  # the control: private, no warning
    assert ctl("check", "Secret").stderr == ""
    plain = ctl.unit("Plain")  # readable, but no [env] values: nothing to warn about
    plain.chmod(0o644)
    assert ctl("check", "Plain").stderr == ""
