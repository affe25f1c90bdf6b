"""Files and folders written safely: owner-only folders, atomic writes, checks that nobody
else can write what we read, and the pipes that carry a unit's text to its processes.

Folders are created owner-only (0700) and files 0600.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

from malacoda.errors import ConfigError

log = logging.getLogger(__name__)


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
