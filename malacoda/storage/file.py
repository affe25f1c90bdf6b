"""``PstFileStorage``: state in one file, written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path
from typing import Any, Dict, Optional

from malacoda.errors import StateError
from malacoda.host.files import (
    atomic_write,
    make_dirs,
    private_dir,
    remove_leftovers,
)
from malacoda.host.paths import Paths
from malacoda.storage.base import DEFAULT_FREQUENCY, PstStorage, check_folder, check_owned

log = logging.getLogger(__name__)


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
        check_folder(self.path.parent)
        if self.path.parent.is_dir():
            remove_leftovers(self.path)  # of a save that was killed mid-way
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if os.path.islink(self.path):
                check_owned(self.path)  # says it is a link
            raise StateError(f"state file {self.path} cannot be read: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            check_owned(self.path, os.fstat(fd))
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
            check_folder(folder)
        known = getattr(self, "_digest_of", None)
        digest = known[1] if known is not None and known[0] is payload \
            else hashlib.sha256(payload).digest()
        header = self.MAGIC + struct.pack(">Q", len(payload)) + digest
        try:
            atomic_write(self.path, [header, payload])
        except OSError as exc:
            raise StateError(f"saving state to {self.path} failed: {exc}; "
                             "the previous state is kept") from exc
