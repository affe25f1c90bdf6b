"""A unit's log file: timestamped lines, rotation by size, and reading it back (``-n``, ``-f``).

The daemon owns the writing end (:func:`capture`): its stdout and stderr (fds 1 and 2) are a
pipe that a thread of its own copies into the file, so that no other process is between the
daemon and its log — a host supervisor killed with ``kill -9`` breaks no pipe of the daemon's
and loses no line of it. Every line the daemon prints (stdout, stderr, Python logging) is
written as ``2026-01-02 03:04:05.678 <line>``, and the supervisor's notes about it as
``… [monitor] <note>`` (:func:`append_line`). A line longer than :data:`PIECE` bytes is cut
into lines of at most that many bytes as it is written, each with its own time. Past ``max_bytes`` the file is
renamed ``<name>.log.1`` (older ones shift up to ``.N``) and a new one is started.
:func:`follow` keeps reading across that rename.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import io
import itertools
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Deque, Iterator, List, Optional

#: The longest line the log holds, in bytes: a longer one is cut into lines of this size.
PIECE = 64 * 1024
#: Lines :meth:`LogFile.last_error` looks back through (the end of a traceback).
RECENT = 40
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*")


def timestamp(now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


#: A unit's log file is rotated past this size by default, keeping this many old ones.
LOG_MAX_BYTES, LOG_BACKUPS = 10 * 1024 * 1024, 5


class LogFile:
    """Appends timestamped lines to ``path``, rotating it past ``max_bytes`` (0: never)."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._recent: Deque[str] = collections.deque(maxlen=RECENT)
        self._file = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "ab", buffering=0)

    def write(self, line: str) -> None:
        """Write one line (a trailing newline is added), with the time in front."""
        with self._lock:
            self._append(f"{timestamp()} {line.rstrip(chr(10))}\n".encode("utf-8", "replace"))

    def _append(self, data: bytes) -> None:
        if self.max_bytes and self._file.tell() + len(data) > self.max_bytes \
                and self._file.tell() > 0:
            self._rotate()
        self._file.write(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._file = self._open()

    def pump(self, stream: BinaryIO, prefix: str = "") -> None:
        """Copy ``stream`` line by line into the log until it ends (run it in a thread).

        Lines are read in pieces of at most :data:`PIECE` bytes and each piece is written as
        a line of its own: output without a newline (200 MiB of it) costs no more memory than
        a piece, is rotated like the rest, and ``logs -n 3`` prints three pieces at most.
        """
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        cut = False  # the last piece was a full one, cut from a longer line
        for raw in iter(lambda: stream.readline(PIECE), b""):
            if cut and raw == b"\n":  # the end of the line just cut: not a line of its own
                cut = False
                continue
            cut = not raw.endswith(b"\n")
            at_end = cut and len(raw) < PIECE  # readline's short piece: the output ended
            text = decoder.decode(raw, final=at_end).rstrip("\n")
            with self._lock:
                self._append(f"{timestamp()} {prefix}{text}\n".encode("utf-8", "replace"))
                self._recent.append(text[:1000])
        rest = decoder.decode(b"", final=True)  # a character cut off by the end of output
        if rest:
            with self._lock:
                self._append(f"{timestamp()} {prefix}{rest}\n".encode("utf-8", "replace"))
        stream.close()

    def last_error(self) -> str:
        """The last line the daemon wrote that names an exception (a traceback's last line),
        else its last line, else ''."""
        with self._lock:
            recent = list(self._recent)
        for line in reversed(recent):
            if _ERROR_LINE.match(line.strip()):
                return line.strip()
        return next((line.strip() for line in reversed(recent) if line.strip()), "")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def append_line(path: Path, line: str) -> None:
    """Append one timestamped line to the log ``path`` (opened and closed again: the file may
    have been rotated by the daemon that writes it since the last line)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{timestamp()} {line.rstrip(chr(10))}\n".encode("utf-8", "replace"))
    finally:
        os.close(fd)


#: The note the supervisor writes before it starts a daemon: :func:`last_error_in` looks only
#: at the lines after the last one.
STARTING = "[monitor] starting "


def last_error_in(path: Path) -> str:
    """The last line the daemon wrote (since the supervisor's last :data:`STARTING` note) that
    names an exception (a traceback's last line), else its last line, else ''."""
    lines = [line[24:] if line[:4].isdigit() else line for line in tail(path, RECENT * 4)]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(STARTING):
            lines = lines[i + 1:]
            break
    recent = [line for line in lines if not line.startswith("[monitor] ")][-RECENT:]
    for line in reversed(recent):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    return next((line.strip() for line in reversed(recent) if line.strip()), "")


class Capture:
    """This process's stdout and stderr going into its log file (see :func:`capture`)."""

    def __init__(self, logfile: LogFile) -> None:
        import sys

        read_end, write_end = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self.logfile = logfile
        self.thread = threading.Thread(target=logfile.pump, args=(os.fdopen(read_end, "rb"),),
                                       name="malacoda-log", daemon=True)
        self.thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Flush what was printed, end the pipe and wait until the thread wrote it all."""
        import sys

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        self.thread.join(timeout)


def capture(path: Path, max_bytes: int, backups: int) -> Capture:
    """Point fds 1 and 2 of this process at a pipe that a thread copies into the log ``path``
    (timestamped, rotated, long lines cut: :meth:`LogFile.pump`) until :meth:`Capture.close`.

    A child process started afterwards inherits the pipe as its stdout and stderr.
    """
    return Capture(LogFile(path, max_bytes, backups))


#: How many bytes :func:`tail` reads at a time, going backwards from the end of a file.
BLOCK = 64 * 1024


def tail(path: Path, lines: int, block: int = BLOCK) -> List[str]:
    """The last ``lines`` lines of the log, reaching back into ``<name>.log.1``, ``.2``, … as
    far as needed and as they go.

    Each file is read backwards from its end, ``block`` bytes at a time, only until it holds
    enough lines: a few lines of a large log cost a few blocks, not the whole file.
    """
    result: List[str] = []
    for generation in itertools.count():
        wanted = max(lines, 0) - len(result)
        if wanted <= 0:
            break
        file = path.with_name(f"{path.name}.{generation}") if generation else path
        if generation and not file.exists():
            break  # the oldest one kept was the one before
        result = _last_lines(file, wanted, block) + result
    return result


def _last_lines(file: Path, count: int, block: int) -> List[str]:
    """The last ``count`` (> 0) lines of ``file`` ([] when it does not exist), split at each
    newline (only there: see :func:`_line`) and decoded as UTF-8 with replacement."""
    try:
        f = open(file, "rb")
    except FileNotFoundError:
        return []
    with f:
        start = f.seek(0, os.SEEK_END)
        chunks: List[bytes] = []
        newlines = 0
        # count + 1 newlines: whatever a block boundary cut (a line, a character, a CR LF) lies
        # before the first of them, so never among the last ``count`` lines.
        while start > 0 and newlines <= count:
            size = min(block, start)
            start -= size
            f.seek(start)
            chunks.append(f.read(size))
            newlines += chunks[-1].count(b"\n")
    data = b"".join(reversed(chunks))
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline="\n")
    return [_line(line) for line in text][-count:]


def _line(text: str) -> str:
    """A line read from a log without its end (``\\n``, or ``\\r\\n``).

    Lines end at a newline only: a ``\\r`` inside a line is the daemon's output, not a line
    break (universal newlines would make ``x\\r[monitor] ... ready`` two lines, the second
    a forgery of the monitor's own); ``malacodactl logs`` shows it as ``\\r``.
    """
    text = text[:-1] if text.endswith("\n") else text
    return text[:-1] if text.endswith("\r") else text


def follow(path: Path, stop: Callable[[], bool] = lambda: False,
           interval: float = 0.1) -> Iterator[str]:
    """Lines appended to ``path`` from now on; keeps following when the file is rotated.

    After a rotation the lines left in the renamed file are read first, then each newer
    generation (``.2`` → ``.1`` → the live file) in turn, so no line is skipped unless more
    than ``backups`` rotations happen between two polls.
    """
    f = _open_at_end(path)
    while not stop():
        line = f.readline() if f else ""
        if line:
            yield _line(line)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            time.sleep(interval)
            continue
        if f is None:
            f = open(path, encoding="utf-8", errors="replace", newline="\n")
            continue
        current = os.fstat(f.fileno())
        if (st.st_ino, st.st_dev) != (current.st_ino, current.st_dev) or st.st_size < f.tell():
            for rest in f:  # what was written to the old file before it was renamed
                yield _line(rest)
            f.close()
            f = _next_generation(path, (current.st_ino, current.st_dev))
            continue
        time.sleep(interval)
    if f:
        f.close()


def _next_generation(path: Path, done: tuple):  # type: ignore[no-untyped-def]
    """The file written after the one whose (inode, device) is ``done``, opened at its start."""
    generations: List[Path] = sorted(path.parent.glob(path.name + ".*"),
                                     key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    generations = [p for p in generations if p.suffix[1:].isdigit()] + [path]
    ids: List[Optional[tuple]] = []
    for candidate in generations:
        try:
            st = os.stat(candidate)
            ids.append((st.st_ino, st.st_dev))
        except FileNotFoundError:
            ids.append(None)
    start = ids.index(done) + 1 if done in ids else 0
    for candidate in generations[start:]:
        try:
            return open(candidate, encoding="utf-8", errors="replace", newline="\n")
        except FileNotFoundError:
            continue
    return None


def _open_at_end(path: Path):  # type: ignore[no-untyped-def]
    try:
        f = open(path, encoding="utf-8", errors="replace", newline="\n")
    except FileNotFoundError:
        return None
    f.seek(0, os.SEEK_END)
    return f
