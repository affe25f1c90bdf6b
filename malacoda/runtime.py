"""Where things live on one host: folders, the name registry, locks and liveness.

Every file Malacoda writes lives under four folders (see :class:`Paths`); ``MALACODA_HOME``
moves all of them under one folder. Folders are created owner-only (0700) and files 0600.

The registry is one JSON file per running daemon, ``<run>/registry/<name>.json``, written
atomically by the daemon once it is ready and removed when it stops. An entry is trusted only
when the file belongs to us, is not writable by others, and its pid is alive with the recorded
start time and owner; anything else is *stale* and is never used to reach a daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import psutil

from .errors import ConfigError, LookupFailed

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a daemon (it becomes part of file names)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            f"invalid daemon name {name!r}: use letters, digits, '_', '.', '-' "
            "(starting with a letter, at most 128 characters)"
        )
    return name


#: One label of a host name: letters, digits, '-' and '_' (some ``~/.ssh/config`` aliases and
#: internal names have one), neither first nor last a '-'; at most 63 characters.
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_host(host: str, what: str = "") -> str:
    """Return ``host`` if it can be a host name, an IPv4 address or an SSH alias; else a
    :class:`ConfigError` naming it (``what`` says where it was given).

    Labels of letters, digits, '-' and '_' between single dots, 253 characters at most; an
    internationalised name is checked in its IDNA (``xn--``) form. ``..``, ``../../etc`` or an
    option such as ``-oProxyCommand=...`` are refused here, before any lookup, rather than
    failing deep in the resolver (``..`` raised ``UnicodeError``).
    """
    try:
        ascii_form = host.encode("idna").decode("ascii") if isinstance(host, str) else ""
    except UnicodeError:
        ascii_form = ""
    labels = ascii_form[:-1].split(".") if ascii_form.endswith(".") else ascii_form.split(".")
    if not ascii_form or len(ascii_form) > 253 or not all(HOST_LABEL_RE.match(x) for x in labels):
        raise ConfigError(f"{what}{': ' if what else ''}{host!r} is not a host name (letters, "
                          "digits, '-' and '_', with single dots between labels)")
    return host


@dataclass(frozen=True)
class Paths:
    """The folders Malacoda uses on this host, for the current user."""

    run: Path
    log: Path
    lib: Path
    units: Path
    keys: Path

    @classmethod
    def default(cls) -> Paths:
        """Folders from ``MALACODA_HOME``, else the root or per-user locations."""
        home = os.environ.get("MALACODA_HOME")
        if home:
            base = Path(home).expanduser().absolute()
            return cls(base / "run", base / "log", base / "lib", base / "units", base / "keys")
        if os.geteuid() == 0:
            return cls(
                Path("/run/malacoda"),
                Path("/var/log/malacoda"),
                Path("/var/lib/malacoda"),
                Path("/etc/malacoda/units"),
                Path("/etc/malacoda/keys"),
            )
        user_home = Path.home()
        xdg_run = os.environ.get("XDG_RUNTIME_DIR")
        state = user_home / ".local" / "state" / "malacoda"
        config = Path(os.environ.get("XDG_CONFIG_HOME") or user_home / ".config") / "malacoda"
        run = Path(xdg_run) / "malacoda" if xdg_run else state / "run"
        return cls(run, state / "log", state / "lib", config / "units", config / "keys")

    @property
    def registry(self) -> Path:
        return self.run / "registry"

    def log_file(self, name: str) -> Path:
        """The log of the daemon ``name``: ``<log>/<name>.log`` (rotated ones add ``.1`` …)."""
        return self.log / f"{check_name(name)}.log"

    def as_dict(self) -> Dict[str, str]:
        d = {k: str(v) for k, v in asdict(self).items()}
        d["registry"] = str(self.registry)
        return d


def make_dirs(path: Path) -> None:
    """Create ``path`` and each missing parent 0700, whatever the umask (``mkdir -p`` and
    ``Path.mkdir(parents=True)`` make the parents ``0777 & ~umask``: 0777 under ``umask 0``).
    Folders that exist are left as they are."""
    missing = []
    folder = Path(path)
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by someone else: private_dir checks the leaf
        os.chmod(folder, 0o700)  # the umask may have taken bits away, never added: be exact


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) owner-only, or check that an existing one is safe."""
    make_dirs(path)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to you: refusing to use it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path} is writable by other users: run 'chmod go-w {path}'")
    return path


def check_not_writable_by_others(path: Path, what: str = "", why: str = "", fix: str = "",
                                 error: type = ConfigError) -> None:
    """Refuse ``path`` (``what`` names it, ``why`` says what its writer would control) when
    another user owns it (root excepted) or others can write it: raises ``error``.

    The rule for what decides which code runs: unit files and their folders, a unit's ``path``,
    class module and ``workdir``, state folders, ``config.toml``.
    """
    st = path.stat()
    because = f" and {why}" if why else ""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(f"{what}{path} is writable by other users{because}: "
                    + (fix or f"run 'chmod go-w {path}'"))
    if st.st_uid not in (os.geteuid(), 0):
        raise error(f"{what}{path} belongs to uid {st.st_uid}, not to you or root: refusing it")


def untrusted(st: os.stat_result, owner: Optional[int] = None) -> bool:
    """True for a file another user than ``owner`` (default: us) owns, or one others could
    have written."""
    owner = os.geteuid() if owner is None else owner
    return st.st_uid != owner or bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def atomic_write(path: Path, data: Union[bytes, Sequence[bytes]], mode: int = 0o600,
                 replace: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, never a torn one.

    ``data`` is bytes or a sequence of bytes written one after the other (a large file need
    not be joined into one more copy first). Temporary file in the same folder, fsync, rename
    over the target, fsync of the folder. On any error the temporary file is removed and the
    old file is untouched. ``replace=False`` never replaces a file: ``FileExistsError`` when
    ``path`` exists (or appears meanwhile), and then nothing was written.
    """
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: the first writer wins, whole
            os.unlink(tmp)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def host_name() -> str:
    """This host's name in the cluster: ``MALACODA_HOSTNAME``, else ``socket.gethostname()``.

    ``MALACODA_HOSTNAME`` lets several "hosts" share one machine (tests, containers).
    """
    return os.environ.get("MALACODA_HOSTNAME") or socket.gethostname()


def remove_leftovers(path: Path) -> int:
    """Remove the temporary files an :func:`atomic_write` of ``path`` killed mid-way left.

    Call it only while no other process writes ``path`` (its owner holds the name lock).
    """
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.lstat().st_uid == os.geteuid():
                tmp.unlink()
                removed += 1
    return removed


def known_fields(cls: type, raw: Dict[str, Any]) -> Dict[str, Any]:
    """The items of ``raw`` that are fields of dataclass ``cls`` (a newer writer's extra keys
    are dropped, so records written by another version still load)."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def process_start_time(pid: int) -> Optional[float]:
    """The start time of ``pid`` as psutil reports it, or None when it is not alive."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


#: How far apart two readings of one process's start time may be: psutil derives it from
#: boot time and clock ticks, so a recorded value and a fresh one can differ slightly.
START_TIME_SLACK = 0.05


def same_process(pid: int, start_time: float, uid: Optional[int] = None) -> bool:
    """True when ``pid`` is alive (not a zombie), started at ``start_time`` (within
    :data:`START_TIME_SLACK`) and, when ``uid`` is given, runs with that real uid.

    A pid the kernel has since given to another process fails the start-time check, so a
    recorded ``(pid, start_time)`` never leads to signalling or trusting a stranger.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if abs(proc.create_time() - start_time) > START_TIME_SLACK:
            return False
        return uid is None or proc.uids().real == uid
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


#: The exit code of a daemon (``malacoda.runner``, ``malacodactl run``) that stopped as asked but
#: whose final pst save was incomplete: an attribute that cannot be saved, or a persister that
#: failed (EX_IOERR of sysexits.h). The monitor records it and ``malacodactl stop`` exits 1.
PST_INCOMPLETE = 74


@dataclass
class Entry:
    """One running daemon, as it registered itself."""

    name: str
    pid: int
    port: int
    address: str
    start_time: float
    incarnation: str
    uid: int
    version: str
    host: str = ""
    server_key: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)
    #: The daemon's random secret: owner-only daemons take it as the ZAP PLAIN password; an
    #: ``open`` one recognises its owner's connections by it (see docs/protocol.md). Only in
    #: this owner-only file (and over SSH to the owner): never in a cluster entry.
    secret: Optional[str] = field(default=None, repr=False)
    #: True for a daemon started ``open = true``: any local user may call it (NULL mechanism).
    open: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> Entry:
        """An entry from its fields; keys this version does not know are ignored."""
        return cls(**known_fields(cls, raw))

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        return cls.from_dict(json.loads(data))

    def is_alive(self) -> bool:
        """True when the pid lives, started when the entry says, and runs as its uid."""
        return same_process(self.pid, self.start_time, self.uid)


class Registry:
    """The local name registry: ``<run>/registry/<name>.json`` per running daemon.

    ``owner`` is the uid whose entries are trusted here (default: ours); root reads another
    user's registry with ``owner`` set to that user's uid.
    """

    def __init__(self, paths: Optional[Paths] = None, owner: Optional[int] = None) -> None:
        self.paths = paths or Paths.default()
        self.owner = os.geteuid() if owner is None else owner

    @property
    def folder(self) -> Path:
        return self.paths.registry

    def _file(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}.json"

    def write(self, entry: Entry) -> None:
        private_dir(self.paths.run)
        private_dir(self.folder)
        remove_leftovers(self._file(entry.name))
        atomic_write(self._file(entry.name), entry.to_json())

    def read(self, name: str) -> Tuple[Optional[Entry], str]:
        """``(entry, state)``: state is ``running``, ``stale`` or ``absent``.

        A file we do not own, one writable by others, or one that does not parse is ``stale``
        and its entry is not returned.
        """
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None, "absent"
        except OSError:
            return None, "stale"
        try:
            st = os.fstat(fd)
            if untrusted(st, self.owner):
                log.warning("ignoring registry entry %s: not owned by us or writable by others", path)
                return None, "stale"
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(65536)
        finally:
            os.close(fd)
        try:
            entry = Entry.from_json(data)
        except (ValueError, TypeError):
            return None, "stale"
        if entry.uid != self.owner or not entry.is_alive():
            return entry, "stale"
        return entry, "running"

    def lookup(self, name: str) -> Entry:
        """The live entry for ``name``, or :class:`LookupFailed`."""
        entry, state = self.read(name)
        if entry is None or state != "running":
            raise LookupFailed(f"no daemon named {name!r} is running on this host")
        return entry

    def remove(self, name: str, incarnation: Optional[str] = None) -> None:
        """Remove ``name``'s entry (only if it is ``incarnation``'s, when given)."""
        path = self._file(name)
        if incarnation is not None:
            entry, _ = self.read(name)
            if entry is None or entry.incarnation != incarnation:
                return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def clean_stale(self, name: str) -> bool:
        """Remove ``name``'s entry if it is stale; True when something was removed."""
        entry, state = self.read(name)
        if state == "stale":
            with contextlib.suppress(FileNotFoundError):
                self._file(name).unlink()
            return True
        return False

    def names(self) -> List[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def entries(self) -> Iterator[Tuple[str, Optional[Entry], str]]:
        for name in self.names():
            entry, state = self.read(name)
            yield name, entry, state


class NameLock:
    """An exclusive ``flock`` on ``<run>/<name>.lock``, held for a daemon's lifetime.

    The kernel drops it when the process dies, so a killed daemon never blocks its successor.
    The lock file records the holder's pid for error messages.
    """

    def __init__(self, paths: Paths, name: str, suffix: str = "lock") -> None:
        self.path = private_dir(paths.run) / f"{check_name(name)}.{suffix}"
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
                log.warning("replacing %s: it is not ours (uid %d)", self.path, st.st_uid)
                os.unlink(self.path)  # another user's file never holds our lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> Optional[int]:
        """The pid written by whoever holds the lock, if it can be read."""
        try:
            text = self.path.read_text().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def text_pipe(text: str) -> int:
    """The read end of a pipe holding ``text`` (a unit file as it was loaded) for a child
    process, which passes it in ``pass_fds`` (it is nobody else's: not inheritable) and reads it
    with :func:`read_pipe`; the caller closes it once the child started."""
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, False)

    def write() -> None:  # in a thread: a unit larger than the pipe's buffer must not block
        with os.fdopen(write_end, "wb") as out, contextlib.suppress(OSError):
            out.write(text.encode("utf-8"))

    threading.Thread(target=write, name="malacoda-unit", daemon=True).start()
    return read_end


def read_pipe(fd: int) -> str:
    """All that the pipe ``fd`` (from :func:`text_pipe`) holds, and it closed."""
    with os.fdopen(fd, "rb") as source:
        return source.read().decode("utf-8", "replace")


def other_users_registries() -> Iterator[Registry]:
    """For root: every other user's registry at its default place (``/run/user/UID/malacoda``
    or ``~/.local/state/malacoda/run``), each trusting only that user's entries.

    A daemon started with a ``MALACODA_HOME`` of its own is not found this way: root names
    that folder with ``MALACODA_HOME`` instead. Empty for any user but root.
    """
    if os.geteuid() != 0:
        return
    import pwd

    seen = set()
    for user in pwd.getpwall():
        if user.pw_uid == 0:
            continue
        home = Path(user.pw_dir)
        for run in (Path(f"/run/user/{user.pw_uid}/malacoda"), home / ".local/state/malacoda/run"):
            if run in seen or not (run / "registry").is_dir():
                continue
            seen.add(run)
            yield Registry(Paths(run, run, run, run, run), owner=user.pw_uid)
