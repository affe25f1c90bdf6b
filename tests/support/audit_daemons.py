"""Daemons for the CLI audit's tests (issue 14, "Fix on the way")."""

from __future__ import annotations

import sys

from tests.support.daemons import Talker, TestDaemon


class CrashAtStart(TestDaemon):
    """Its main loop raises at once: it is bound and registered, then dies."""

    def _run(self):
        raise RuntimeError("cannot open the database")


class Shouter(Talker):
    """Writes ``size`` bytes with no newline to stdout."""

    def shout(self, size):
        chunk = "x" * 65536
        for _ in range(size // len(chunk)):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return size


class FinishAtOnce(TestDaemon):
    """Its main loop has nothing to do: it returns at once, and the daemon exits 0."""

    def _run(self):
        return None
