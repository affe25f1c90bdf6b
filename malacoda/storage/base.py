"""The persister interface (:class:`PstStorage`) and what every backend shares: how often state
is saved, how it is serialised, and the checks on the files it is read from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import dill

from malacoda.errors import ConfigError, StateError
from malacoda.host.files import (
    check_not_writable_by_others,
)
from malacoda.host.paths import Paths

log = logging.getLogger(__name__)

DEFAULT_FREQUENCY = 60.0


def _frequency(value: Any) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"pst frequency must be a positive number of seconds or a timedelta, "
                          f"got {value!r}")
    return float(value)


def check_owned(path: Path, st: Optional[os.stat_result] = None) -> None:
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


def check_folder(folder: Path) -> None:
    """Refuse a state folder that another user owns (root excepted) or others can write:
    whoever can write it can swap the state file, or plant an SQLite ``-wal`` beside it."""
    if folder.is_dir():
        check_not_writable_by_others(folder, "state folder ", "whoever can write it can swap "
                                     "the state file (loading it runs code)", error=StateError)


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
