"""Persisters for ``pst*`` attributes: one small interface; file, SQLite and S3 backends.

A daemon's ``pst_config`` names the persister and its options, as in the original::

    pst_config={'class_name': 'PstFileStorage', 'frequency': timedelta(minutes=1),
                'file_path': '/var/lib/app/state.pst'}

``class_name`` is a built-in name (``PstFileStorage``, ``PstSqliteStorage``, ``PstS3Storage``) or
``package.module:Class`` for a subclass of :class:`PstStorage`. ``frequency`` (a
``timedelta`` or seconds, default 60) is how often changed state is saved; every other key goes
to the persister's constructor.

State is serialised with ``dill``, and loading it runs code: a state file that is not ours or
is writable by others is refused before it is read, and state kept in S3 is loaded only with
this host's signature on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import importlib
import importlib.util
import io
import logging
import os
import pickle
import sqlite3
import stat
import struct
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, Union

import dill

from .errors import ConfigError, StateError
from .runtime import (
    Paths,
    atomic_write,
    check_not_writable_by_others,
    host_name,
    make_dirs,
    private_dir,
    remove_leftovers,
    untrusted,
)

log = logging.getLogger(__name__)

DEFAULT_FREQUENCY = 60.0


def _frequency(value: Any) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"pst frequency must be a positive number of seconds or a timedelta, "
                          f"got {value!r}")
    return float(value)


def _check_owned(path: Path, st: Optional[os.stat_result] = None) -> None:
    """Refuse a state file (``st``: its ``fstat``, else it is looked at without following a
    link) that is not ours, that others could write, or that is a link to another file."""
    if st is None:
        st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"state file {path} is a symbolic link: refusing to follow it (it may "
                         "lead to another daemon's state); put the file itself there")
    if st.st_uid != os.geteuid():
        raise StateError(f"state file {path} belongs to uid {st.st_uid}, not to you: refusing to "
                         "load it (loading runs code)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateError(f"state file {path} is writable by other users: refusing to load it; "
                         f"run 'chmod go-w {path}' if you trust it")


def _check_folder(folder: Path) -> None:
    """Refuse a state folder that another user owns (root excepted) or others can write:
    whoever can write it can swap the state file, or plant an SQLite ``-wal`` beside it."""
    if folder.is_dir():
        check_not_writable_by_others(folder, "state folder ", "whoever can write it can swap "
                                     "the state file (loading it runs code)", error=StateError)


#: What SQLite reads besides the database itself: a planted ``-wal`` holding a row is loaded.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class _NeedsDill(Exception):
    pass


class _FastPickler(pickle.Pickler):
    """The C pickler, for state made of importable things only.

    ``dill``'s pickler is written in Python: on a large state it holds the GIL in 5 ms slices
    for a long time and every call the daemon serves meanwhile waits for them. The C pickler
    is several times faster. It stores classes and functions by reference, so anything defined
    in ``__main__`` (which ``dill`` stores by value, to load in another program) goes to dill.
    """

    def reducer_override(self, obj: Any) -> Any:  # not called for plain built-in values
        module = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) \
            else type(obj).__module__
        if module == "__main__" or module is None:
            raise _NeedsDill()
        return NotImplemented


def serialise(state: Dict[str, Any]) -> bytes:
    """``state`` as pickle bytes ``dill.loads`` reads: the C pickler when it can, else dill."""
    buffer = io.BytesIO()
    try:
        _FastPickler(buffer, protocol=4).dump(state)
        return buffer.getvalue()
    except Exception:  # lambdas, locks, __main__ classes…: what dill is for
        return dill.dumps(state, protocol=4)


class PstStorage:
    """The persister interface. Subclass it and implement :meth:`load` and :meth:`write`.

    ``name`` is the daemon's name and ``paths`` its folders; ``frequency`` is in seconds.
    :meth:`save` skips state that has not changed since the last save or load.
    """

    unsaved: Dict[str, str] = {}  # (class defaults: a subclass may skip our __init__)
    _previous: Optional[Dict[str, Any]] = None

    def __init__(self, name: str, paths: Paths, frequency: Any = DEFAULT_FREQUENCY) -> None:
        self.name = name
        self.paths = paths
        self.frequency = _frequency(frequency)
        self._last_digest: Optional[bytes] = None
        self._digest_of: Optional[Tuple[bytes, bytes]] = None
        #: ``{attribute: reason}`` of the pst attributes the last save could not save.
        self.unsaved: Dict[str, str] = {}
        self._previous: Optional[Dict[str, Any]] = None  # the saved state, while some are bad

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, None when nothing was saved yet; :class:`StateError` if unreadable."""
        raise NotImplementedError

    def write(self, payload: bytes) -> None:
        """Store ``payload`` (dill bytes of the state dict) atomically."""
        raise NotImplementedError

    def save(self, state: Dict[str, Any]) -> bool:
        """Save ``state`` if it changed; True when something was written.

        An attribute that cannot be serialised (a socket, a lock in it) does not stop the
        others: they are saved, and it keeps the value it had in the last state saved (or is
        left out, if it was never saved). :attr:`unsaved` then names it with the reason
        (empty when the last save was complete).
        """
        payload = self._still_unsaveable(state) if self.unsaved else None
        if payload is None:
            try:
                payload = serialise(state)
                self.unsaved = {}
                self._previous = None
            except Exception:
                payload = serialise(self._without_unsaveable(state))
        digest = hashlib.sha256(payload).digest()
        if digest == self._last_digest:
            return False
        self._digest_of = (payload, digest)  # spares write() hashing 100 MB a second time
        try:
            self.write(payload)
        finally:
            self._digest_of = None
        self._last_digest = digest
        return True

    def _still_unsaveable(self, state: Dict[str, Any]) -> Optional[bytes]:
        """The payload without the attributes the last save left out, while they still cannot
        be saved and the others can (the cheap way: each of those alone, then the rest); None
        otherwise. Trying the whole state first would cost a failed dill attempt each time."""
        still: Dict[str, str] = {}
        for key in self.unsaved:
            if key in state:
                try:
                    serialise({key: state[key]})
                except Exception as exc:
                    still[key] = f"{type(exc).__name__}: {exc}"
        if not still:
            return None
        kept = {k: v for k, v in state.items() if k not in still}
        previous = self._previous or {}
        kept.update((k, previous[k]) for k in still if k in previous)
        try:
            payload = serialise(kept)
        except Exception:
            return None  # another attribute went bad too: the full search
        self.unsaved = still
        return payload

    def _without_unsaveable(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """``state`` with each attribute that cannot be serialised replaced by its value in
        the state saved last (read back once, and kept while some attribute stays bad)."""
        unsaved: Dict[str, str] = {}
        for key, value in state.items():
            try:
                serialise({key: value})
            except Exception as exc:
                unsaved[key] = f"{type(exc).__name__}: {exc}"
        if not unsaved:  # each alone travels, not together (unlikely): nothing to pick out
            raise StateError(f"pst state of {self.name!r} cannot be serialised")
        if self._previous is None:
            try:
                self._previous = self.load() or {}
            except StateError as exc:
                raise StateError(f"pst attribute {', '.join(unsaved)} of {self.name!r} cannot "
                                 f"be saved, and the state saved last cannot be read to keep "
                                 f"its value ({exc}): nothing was saved") from exc
        kept = {k: v for k, v in state.items() if k not in unsaved}
        for key in unsaved:
            if key in self._previous:
                kept[key] = self._previous[key]
        self.unsaved = unsaved
        return kept

    def _loaded(self, payload: Union[bytes, memoryview], where: str) -> Dict[str, Any]:
        try:
            state = dill.loads(payload)
        except Exception as exc:
            raise StateError(f"state in {where} cannot be loaded ({exc}); it was left untouched: "
                             "move it away to start from defaults") from exc
        if not isinstance(state, dict):
            raise StateError(f"state in {where} is not a dict; it was left untouched")
        self._last_digest = hashlib.sha256(payload).digest()
        return state

    def close(self) -> None:
        """Release resources (files, connections)."""


class PstFileStorage(PstStorage):
    """One file per daemon (default ``<lib>/<name>.pst``), replaced atomically on each save.

    Layout: ``b"MLCPST1\\n"``, the payload's length (8 bytes, big-endian), its SHA-256, then
    the payload. A file that does not match is reported, never overwritten.
    """

    MAGIC = b"MLCPST1\n"

    def __init__(self, name: str, paths: Paths, frequency: Any = DEFAULT_FREQUENCY,
                 file_path: Optional[str] = None) -> None:
        super().__init__(name, paths, frequency)
        self.path = Path(file_path).expanduser() if file_path else paths.lib / f"{name}.pst"

    def load(self) -> Optional[Dict[str, Any]]:
        _check_folder(self.path.parent)
        if self.path.parent.is_dir():
            remove_leftovers(self.path)  # of a save that was killed mid-way
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if os.path.islink(self.path):
                _check_owned(self.path)  # says it is a link
            raise StateError(f"state file {self.path} cannot be read: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            _check_owned(self.path, os.fstat(fd))
            try:
                data = f.read()
            except OSError as exc:
                raise StateError(f"state file {self.path} cannot be read: {exc}") from exc
        head = len(self.MAGIC) + 8 + 32
        if len(data) < head or not data.startswith(self.MAGIC):
            raise StateError(f"state file {self.path} is not a Malacoda state file or is "
                             "truncated; it was left untouched: move it away to start from defaults")
        (length,) = struct.unpack(">Q", data[len(self.MAGIC):len(self.MAGIC) + 8])
        digest = data[len(self.MAGIC) + 8:head]
        payload = data[head:]
        if len(payload) != length or hashlib.sha256(payload).digest() != digest:
            raise StateError(f"state file {self.path} is corrupt (length or checksum mismatch); "
                             "it was left untouched: move it away to start from defaults")
        return self._loaded(payload, str(self.path))

    def write(self, payload: bytes) -> None:
        folder = self.path.parent
        if folder == self.paths.lib:
            private_dir(folder)
        else:
            make_dirs(folder)
            _check_folder(folder)
        known = getattr(self, "_digest_of", None)
        digest = known[1] if known is not None and known[0] is payload \
            else hashlib.sha256(payload).digest()
        header = self.MAGIC + struct.pack(">Q", len(payload)) + digest
        try:
            atomic_write(self.path, [header, payload])
        except OSError as exc:
            raise StateError(f"saving state to {self.path} failed: {exc}; "
                             "the previous state is kept") from exc


class PstSqliteStorage(PstStorage):
    """State in an SQLite database (default ``<lib>/<name>.sqlite``), one row per daemon.

    Several daemons may share one database file; SQLite's transactions make each save atomic.
    """

    def __init__(self, name: str, paths: Paths, frequency: Any = DEFAULT_FREQUENCY,
                 file_path: Optional[str] = None) -> None:
        super().__init__(name, paths, frequency)
        self.path = Path(file_path).expanduser() if file_path else paths.lib / f"{name}.sqlite"
        self._db: Optional[sqlite3.Connection] = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path.parent == self.paths.lib:
                private_dir(self.path.parent)
            _check_folder(self.path.parent)
            existed = os.path.lexists(self.path)
            if existed:
                _check_owned(self.path)
            for suffix in SQLITE_COMPANIONS:  # SQLite reads them too, before any check of ours
                with contextlib.suppress(FileNotFoundError):
                    _check_owned(Path(f"{self.path}{suffix}"))
            try:
                self._db = sqlite3.connect(str(self.path), check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("CREATE TABLE IF NOT EXISTS malacoda_pst "
                                 "(name TEXT PRIMARY KEY, payload BLOB NOT NULL)")
            except sqlite3.DatabaseError as exc:
                self._db = None
                raise StateError(f"state database {self.path} cannot be opened: {exc}; "
                                 "it was left untouched") from exc
            if not existed:
                os.chmod(self.path, 0o600)
        return self._db

    def load(self) -> Optional[Dict[str, Any]]:
        if not os.path.lexists(self.path):
            return None
        try:
            row = self._connect().execute(
                "SELECT payload FROM malacoda_pst WHERE name = ?", (self.name,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {self.path} cannot be read: {exc}") from exc
        return None if row is None else self._loaded(bytes(row[0]), f"{self.path} ({self.name})")

    def write(self, payload: bytes) -> None:
        db = self._connect()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO malacoda_pst (name, payload) VALUES (?, ?)",
                           (self.name, payload))
        except sqlite3.DatabaseError as exc:
            raise StateError(f"saving state to {self.path} failed: {exc}; "
                             "the previous state is kept") from exc

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


class PstS3Storage(PstStorage):
    """State in an S3 object: AWS S3 or any S3-compatible store (MinIO, Ceph, Garage…).

    Options: ``bucket`` (required), ``key`` (default ``malacoda/<host>/<name>.pst``),
    ``endpoint_url`` and ``region`` (default: boto3's, from the environment or ``~/.aws``),
    ``signing_key_file`` (default ``<keys>/pst-signing.key``) and ``timeout`` (seconds per S3
    request, default 30; each is tried up to 3 times). Credentials come from boto3's usual chain
    (environment, ``~/.aws``, an instance role), never from ``pst_config``; they need
    ``s3:GetObject``, ``s3:PutObject`` and ``s3:ListBucket`` (without it S3 answers "access
    denied", not "no such key", before the first save). Needs boto3: ``malacoda[s3]``.

    An S3 PUT replaces an object whole, so a reader sees the old state or the new one, and a
    failed save leaves the old one. The state is dill bytes, and loading dill runs code, so an
    object is loaded only when it carries this host's signature: ``b"MLCPSTS2"``, the version
    (8 bytes, big-endian: the save time in ns, or one more than the last version this host
    knows when that is later), then the HMAC-SHA256 of the magic, the bucket, the object key,
    the version and the payload under a key kept on this host (32 random bytes, private to its
    owner, made at the first save), then the payload. Hosts that share a state object share
    that key file. An object that is not signed so (another daemon's object copied over this
    one's included) stops the start, as a corrupt state file does, and so does an S3 that
    cannot be read: starting from defaults would overwrite the saved state at the first save.

    Rollback: a signed object stays signed, so whoever can write the bucket could put an older
    one back. The highest version this host saved or loaded for the object is remembered in
    ``<folder of the signing key>/pst-versions/<hash of the s3:// URL>`` (0600), and an older
    object is refused. An object of the unversioned format of earlier Malacodas
    (``b"MLCPSTS1"``, no version) is loaded only while no version of it is remembered.
    """

    MAGIC = b"MLCPSTS2"
    UNVERSIONED = b"MLCPSTS1"

    def __init__(self, name: str, paths: Paths, frequency: Any = DEFAULT_FREQUENCY,
                 bucket: Optional[str] = None, key: Optional[str] = None,
                 endpoint_url: Optional[str] = None, region: Optional[str] = None,
                 signing_key_file: Optional[str] = None, timeout: Any = 30.0) -> None:
        super().__init__(name, paths, frequency)
        where = f"pst_config for {name!r}: PstS3Storage"
        if not bucket:
            raise ConfigError(f"{where} needs a 'bucket'")
        try:
            self.timeout = float(timeout)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: timeout {timeout!r} is not a number of seconds") from None
        if not self.timeout > 0:
            raise ConfigError(f"{where}: timeout must be more than 0 seconds")
        if importlib.util.find_spec("boto3") is None:  # said before the daemon detaches
            raise ConfigError(f"{where} needs boto3: pip install 'malacoda[s3]'")
        self.bucket = bucket
        self.key = key or f"malacoda/{host_name()}/{name}.pst"
        self.url = f"s3://{bucket}/{self.key}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.signing_key_file = (Path(signing_key_file).expanduser() if signing_key_file
                                 else paths.keys / "pst-signing.key")
        self._s3: Any = None

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3  # imported only when state lives in S3
            from botocore.config import Config

            config = Config(connect_timeout=min(10.0, self.timeout), read_timeout=self.timeout,
                            retries={"max_attempts": 3, "mode": "standard"})
            try:
                self._s3 = boto3.client("s3", endpoint_url=self.endpoint_url,
                                        region_name=self.region, config=config)
            except Exception as exc:  # a malformed endpoint_url or region
                raise ConfigError(f"pst_config for {self.name!r}: no S3 client for endpoint "
                                  f"{self.endpoint_url!r}, region {self.region!r}: {exc}") from exc
        return self._s3

    def _signing_key(self, create: bool) -> Optional[bytes]:
        """This host's signing key (None if it has none and ``create`` is false)."""
        path = self.signing_key_file
        try:
            if create and not path.exists():
                if path.parent == self.paths.keys:
                    private_dir(path.parent)
                with contextlib.suppress(FileExistsError):  # another daemon made it first
                    atomic_write(path, os.urandom(32), mode=0o600, replace=False)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                    raise StateError(f"signing key {path} must be yours and private (chmod "
                                     "600): anyone who can read it can make this daemon run "
                                     "their code")
                data = f.read()
        except OSError as exc:
            raise StateError(f"signing key {path} cannot be read or made: {exc}") from exc
        if len(data) < 32:
            raise StateError(f"signing key {path} is shorter than 32 bytes; it was left "
                             "untouched: remove it if nothing was saved with it yet")
        return data

    def _signature(self, key: bytes, payload: Any, version: Optional[int] = None) -> bytes:
        """The HMAC of an object; ``version`` None: the unversioned format (``UNVERSIONED``)."""
        mac = hmac.new(key, self.MAGIC if version is not None else self.UNVERSIONED,
                       hashlib.sha256)
        mac.update(f"\0{self.bucket}\0{self.key}\0".encode())
        if version is not None:
            mac.update(struct.pack(">Q", version))
        mac.update(payload)
        return mac.digest()

    @property
    def version_file(self) -> Path:
        """Where the highest version this host saved or loaded of this object is kept."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:32]
        return self.signing_key_file.parent / "pst-versions" / digest

    def _remembered(self) -> int:
        path = self.version_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StateError(f"version file {path} of {self.url} cannot be read: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            if untrusted(os.fstat(fd)):
                raise StateError(f"version file {path} of {self.url} is not yours or others can "
                                 "write it: refusing to trust it (it guards against rollback)")
            text = f.read(64)
        try:
            return int(text)
        except ValueError:
            raise StateError(f"version file {path} of {self.url} is damaged; remove it to trust "
                             "the object in S3 as it is") from None

    def _remember(self, version: int) -> None:
        if version <= self._remembered():
            return
        try:
            atomic_write(private_dir(self.version_file.parent) / self.version_file.name,
                         str(version).encode())
        except OSError as exc:
            raise StateError(f"version file {self.version_file} of {self.url} cannot be "
                             f"written: {exc}") from exc

    def load(self) -> Optional[Dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client()
        try:
            data = s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                last = self._remembered()
                if last:  # deleted: starting from defaults would roll it back to nothing
                    raise StateError(f"state {self.url} does not exist, but this host saved or "
                                     f"loaded version {last} of it: it was deleted; the start is "
                                     "refused. To start from defaults on purpose, remove "
                                     f"{self.version_file}") from exc
                return None  # nothing saved yet
            raise StateError(f"state {self.url} cannot be read: {_s3_reason(exc)}; "
                             "the start is refused, so that no save overwrites it") from exc
        except BotoCoreError as exc:
            raise StateError(f"state {self.url} cannot be read: {exc}; the start is refused, "
                             "so that no save overwrites it") from exc
        key = self._signing_key(create=False)
        if key is None:
            raise StateError(f"state {self.url} exists but there is no signing key "
                             f"{self.signing_key_file} to check it with: copy the key file of "
                             "the host that saved it (or move the object away to start from "
                             "defaults)")
        version: Optional[int] = None
        if data.startswith(self.MAGIC) and len(data) >= len(self.MAGIC) + 8 + 32:
            (version,) = struct.unpack(">Q", data[len(self.MAGIC):len(self.MAGIC) + 8])
            signature, head = data[len(self.MAGIC) + 8:len(self.MAGIC) + 40], len(self.MAGIC) + 40
        elif data.startswith(self.UNVERSIONED) and len(data) >= len(self.UNVERSIONED) + 32:
            signature, head = data[len(self.UNVERSIONED):len(self.UNVERSIONED) + 32], \
                len(self.UNVERSIONED) + 32
        else:
            signature, head = b"", len(data)
        payload = memoryview(data)[head:]
        if not signature or not hmac.compare_digest(signature,
                                                    self._signature(key, payload, version)):
            raise StateError(f"state {self.url} is not signed with {self.signing_key_file} "
                             "for this object (written by someone else, copied from another "
                             "object, or damaged): it is not loaded, since loading runs code, "
                             "and it was left untouched")
        last = self._remembered()
        if (version or 0) < last:
            saved = (f"version {version}" if version is not None
                     else "an unversioned object (of an earlier Malacoda)")
            raise StateError(f"state {self.url} is {saved}, older than version {last} that this "
                             "host last saved or loaded: it was rolled back (an older object put "
                             "back); it is not loaded and was left untouched. If you restored it "
                             f"on purpose, remove {self.version_file}")
        state = self._loaded(payload, self.url)
        self._remember(version or 0)
        return state

    def write(self, payload: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._signing_key(create=True)
        if key is None:
            raise StateError(f"signing key {self.signing_key_file} vanished while it was made")
        version = max(time.time_ns(), self._remembered() + 1)
        body = (self.MAGIC + struct.pack(">Q", version) + self._signature(key, payload, version)
                + payload)
        try:
            self._client().put_object(Bucket=self.bucket, Key=self.key, Body=body)
        except (BotoCoreError, ClientError) as exc:
            reason = _s3_reason(exc) if isinstance(exc, ClientError) else str(exc)
            raise StateError(f"saving state to {self.url} failed: {reason}; the previous "
                             "state is kept") from exc
        self._remember(version)

    def close(self) -> None:
        if self._s3 is not None:
            with contextlib.suppress(Exception):
                self._s3.close()
            self._s3 = None


def _s3_reason(exc: Any) -> str:
    """The S3 error code and message of a botocore ``ClientError``, in one line."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "error"), error.get("Message", "")
    return f"{code}: {message}" if message else str(code)


BUILTIN: Dict[str, Type[PstStorage]] = {
    "PstFileStorage": PstFileStorage,
    "PstSqliteStorage": PstSqliteStorage,
    "PstS3Storage": PstS3Storage,
    "file": PstFileStorage,
    "sqlite": PstSqliteStorage,
    "s3": PstS3Storage,
}


def storage_class(class_name: str) -> Type[PstStorage]:
    """A built-in persister name or ``package.module:Class`` → the class."""
    if class_name in BUILTIN:
        return BUILTIN[class_name]
    if ":" not in class_name:
        raise ConfigError(f"unknown persister {class_name!r}: use one of "
                          f"{', '.join(sorted(BUILTIN))} or 'package.module:Class'")
    module_name, _, attr = class_name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"persister {class_name!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, PstStorage)):
        raise ConfigError(f"persister {class_name!r} is not a subclass of malacoda.PstStorage")
    return cls


def from_config(name: str, paths: Paths, config: Optional[Dict[str, Any]]) -> PstStorage:
    """Build the persister a ``pst_config`` dict describes (None: the file default)."""
    options = dict(config or {})
    cls = storage_class(str(options.pop("class_name", "PstFileStorage")))
    try:
        return cls(name, paths, **options)
    except TypeError as exc:
        raise ConfigError(f"pst_config for {name!r}: {exc}") from exc
