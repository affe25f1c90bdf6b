"""The name registry of one host, and the lock that keeps a name to one daemon.

The registry is one JSON file per running daemon, ``<run>/registry/<name>.json``, written
atomically by the daemon once it is ready and removed when it stops. An entry is trusted only
when the file belongs to us, is not writable by others, and its pid is alive with the recorded
start time and owner; anything else is *stale* and is never used to reach a daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from malacoda.errors import LookupFailed
from malacoda.host.files import atomic_write, private_dir, remove_leftovers, untrusted
from malacoda.host.paths import Paths, check_name, known_fields
from malacoda.host.process import same_process

log = logging.getLogger(__name__)


class EntryState(str, Enum):
    """What the registry says of a name (:meth:`Registry.read`)."""

    RUNNING = "running"  # a trusted entry whose daemon is alive
    STALE = "stale"  # an entry left by a daemon that died, or one not to be trusted
    ABSENT = "absent"  # no entry

    def __str__(self) -> str:  # printed as its value, as a ``str`` would be
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


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

    def read(self, name: str) -> Tuple[Optional[Entry], EntryState]:
        """``(entry, state)``: state is ``running``, ``stale`` or ``absent``.

        A file we do not own, one writable by others, or one that does not parse is ``stale``
        and its entry is not returned.
        """
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None, EntryState.ABSENT
        except OSError:
            return None, EntryState.STALE
        try:
            st = os.fstat(fd)
            if untrusted(st, self.owner):
                log.warning("ignoring registry entry %s: not owned by us or writable by others", path)
                return None, EntryState.STALE
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(65536)
        finally:
            os.close(fd)
        try:
            entry = Entry.from_json(data)
        except (ValueError, TypeError):
            return None, EntryState.STALE
        if entry.uid != self.owner or not entry.is_alive():
            return entry, EntryState.STALE
        return entry, EntryState.RUNNING

    def lookup(self, name: str) -> Entry:
        """The live entry for ``name``, or :class:`LookupFailed`."""
        entry, state = self.read(name)
        if entry is None or state != EntryState.RUNNING:
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
        if state == EntryState.STALE:
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
