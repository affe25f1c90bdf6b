"""logfile.tail: the last lines of a log, read backwards from the end of its files."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from malacoda.supervisor import logfile as logfile


def whole_file_tail(path: Path, lines: int) -> List[str]:
    """What tail returned when it read both files whole: the reference to agree with. Lines
    end at a newline only (a CR inside a line is the daemon's, not a line end), without their
    "\\n" or "\\r\\n"."""
    result: deque = deque(maxlen=max(lines, 0))
    for file in (path.with_name(path.name + ".1"), path):
        if file.exists():
            with open(file, encoding="utf-8", errors="replace", newline="\n") as f:
                result.extend(line.removesuffix("\n").removesuffix("\r") for line in f)
    return list(result)


def test_many_lines_across_the_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "Web.log"
    older = [f"older {i:06d} " + "x" * 40 for i in range(100_000)]
    newer = [f"newer {i:06d}" for i in range(30)]
    log.with_name("Web.log.1").write_text("".join(line + "\n" for line in older))
    log.write_text("".join(line + "\n" for line in newer))
    assert logfile.tail(log, 0) == []
    assert logfile.tail(log, 5) == newer[-5:]
    assert logfile.tail(log, 30) == newer
    assert logfile.tail(log, 1000) == older[-970:] + newer
    assert logfile.tail(log, 10**6) == older + newer
    log.unlink()  # only the rotated file left
    assert logfile.tail(log, 3) == older[-3:]


def test_lines_from_every_rotated_generation(tmp_path: Path) -> None:
    log = tmp_path / "Web.log"
    generations = [[f"gen {g} line {i}" for i in range(10)] for g in range(4)]  # 0 is the live one
    for g, lines in enumerate(generations):
        log.with_name(f"Web.log.{g}" if g else "Web.log").write_text(
            "".join(line + "\n" for line in lines))
    oldest_first = [line for lines in reversed(generations) for line in lines]
    assert logfile.tail(log, 25) == oldest_first[-25:]  # the live file, .1 and half of .2
    assert logfile.tail(log, 1000) == oldest_first
    log.with_name("Web.log.2").unlink()  # the generations end at the first one missing
    assert logfile.tail(log, 1000) == generations[1] + generations[0]


def test_lines_longer_than_a_block(tmp_path: Path) -> None:
    log = tmp_path / "Big.log"
    long_lines = [c * (3 * logfile.BLOCK + 7) for c in "abc"]
    log.write_text("short\n" + "\n".join(long_lines) + "\n" + "last, unterminated")
    assert logfile.tail(log, 1) == ["last, unterminated"]
    assert logfile.tail(log, 3) == long_lines[1:] + ["last, unterminated"]
    assert logfile.tail(log, 5) == ["short", *long_lines, "last, unterminated"]


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    """Lines after a 4 GiB hole: reading the whole file would need gigabytes of memory."""
    log = tmp_path / "Sparse.log"
    with open(log, "wb") as f:
        f.truncate(4 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"".join(b"line %d\n" % i for i in range(100)))
    if log.stat().st_blocks * 512 > 1 << 30:
        pytest.skip("this filesystem has no sparse files")
    assert logfile.tail(log, 3) == ["line 97", "line 98", "line 99"]


PIECES = st.sampled_from([b"a", b"bc", "é".encode(), b"\xe2\x82", b"\xff", b"\n", b"\n", b"\r",
                          b"\r\n", b""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(live=st.lists(PIECES, max_size=40), rotated=st.one_of(st.none(), st.lists(PIECES, max_size=40)),
       lines=st.integers(-1, 12), block=st.integers(1, 9))
def test_agrees_with_reading_the_files_whole(tmp_path: Path, live: List[bytes],
                                             rotated: List[bytes], lines: int, block: int) -> None:
    log = tmp_path / "Any.log"
    log.write_bytes(b"".join(live))
    older = log.with_name("Any.log.1")
    if rotated is None:
        older.unlink(missing_ok=True)
    else:
        older.write_bytes(b"".join(rotated))
    assert logfile.tail(log, lines, block=block) == whole_file_tail(log, lines)


def test_pump_cuts_a_line_without_end_into_pieces_and_rotates_it(tmp_path: Path) -> None:
    """5 MiB without a newline (then two short lines) through a pipe, max_bytes 1 MiB: the line
    arrives cut into lines of at most PIECE bytes (nothing lost, nothing added), across the
    rotated files, none of which grew past max_bytes and a piece, each line with its time."""
    import re
    import threading

    log = tmp_path / "Big.log"
    lf = logfile.LogFile(log, max_bytes=1 << 20, backups=10)
    read_fd, write_fd = os.pipe()
    big = ("é" * (5 << 19)).encode()  # 5 MiB, a character cut at each piece's edge

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(big + b"\nshort\nlast")

    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read_fd, "rb") as stream:
        lf.pump(stream)
    feeder.join()
    lf.close()
    files = sorted(tmp_path.glob("Big.log.*"), key=lambda p: -int(p.suffix[1:])) + [log]
    assert len(files) >= 5
    for file in files:
        assert file.stat().st_size <= (1 << 20) + logfile.PIECE + 64, file
    text = b"".join(f.read_bytes() for f in files).decode()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
    assert re.fullmatch(f"({stamp}é+\n)+{stamp}short\n{stamp}last\n", text)
    pieces = re.findall(f"{stamp}(é+)\n", text)
    assert "".join(pieces) == "é" * (5 << 19)
    assert len(pieces) > 1 and all(len(p.encode()) <= logfile.PIECE for p in pieces)


def test_pump_keeps_a_character_cut_off_by_the_end_of_output(tmp_path: Path) -> None:
    """Output that ends in the middle of a UTF-8 character: the bytes it has are logged (as a
    replacement character), not dropped."""
    log = tmp_path / "Cut.log"
    lf = logfile.LogFile(log)
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as out:
        out.write("done é".encode()[:-1])  # the é's first byte only
    with os.fdopen(read_fd, "rb") as stream:
        lf.pump(stream)
    lf.close()
    assert log.read_text().endswith(" done \ufffd\n")
