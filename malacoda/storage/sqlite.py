"""``PstSqliteStorage``: state in a SQLite database, one row per daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, Optional

from malacoda.errors import StateError
from malacoda.host.files import (
    private_dir,
)
from malacoda.host.paths import Paths
from malacoda.storage.base import DEFAULT_FREQUENCY, PstStorage, check_folder, check_owned

log = logging.getLogger(__name__)


#: What SQLite reads besides the database itself: a planted ``-wal`` holding a row is loaded.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


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
            check_folder(self.path.parent)
            existed = os.path.lexists(self.path)
            if existed:
                check_owned(self.path)
            for suffix in SQLITE_COMPANIONS:  # SQLite reads them too, before any check of ours
                with contextlib.suppress(FileNotFoundError):
                    check_owned(Path(f"{self.path}{suffix}"))
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
