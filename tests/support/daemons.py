"""Daemon classes the integration tests run in real processes."""

from __future__ import annotations

import functools
import os
import threading
import time

from malacoda import Malacoda, PstStorage


class CustomError(Exception):
    pass


class TestDaemon(Malacoda):
    """A daemon with one of everything the tests need."""

    __test__ = False  # not a pytest test class

    def __init__(self, name=None, daemonize=False, **kwargs):
        self.constant = 10
        self.pst_counter = 0
        self.pst_data = {"a": (1, 2)}
        self.loops = 0
        self.lock = threading.Lock()
        self.produced = 0  # items the latest stream of count() or endless() made
        self.closed_streams = 0  # streams whose generator's finally ran
        super().__init__(name=name, daemonize=daemonize, **kwargs)

    def _run(self):
        while self.running:
            self.loops += 1
            self._wait(0.05)

    def echo(self, value, *rest, **kw):
        """Return what it was given."""
        if rest or kw:
            return [value, list(rest), kw]
        return value

    def add(self, a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    def slow(self, seconds=1.0):
        time.sleep(seconds)
        return f"slept {seconds}"

    def fail_value(self, message="bad value"):
        raise ValueError(message)

    def fail_key(self):
        return {}["missing"]

    def fail_custom(self):
        raise CustomError("custom failure")

    def fail_json(self):
        import json

        return json.loads("{not json")

    def fail_file(self, path="/nonexistent/malacoda-file"):
        with open(path):
            pass

    def fail_timeout(self):
        raise TimeoutError("the daemon's own wait ran out")

    def fail_unicode(self):
        return b"\xff".decode("utf-8")

    def numbers(self):
        return (n for n in range(3))

    async def later(self):
        return 1

    def generator_in_a_list(self):
        return [n for n in range(3)], (n for n in range(3))

    def fail_exit(self, kind="SystemExit"):
        raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[kind](kind)

    def bump(self):
        self.pst_counter += 1
        return self.pst_counter

    def pid(self):
        return os.getpid()

    # streams and events

    def count(self, n, delay=0.0):
        """Yield 0 to n - 1 (a stream)."""
        self.produced = 0
        try:
            for i in range(n):
                if delay:
                    time.sleep(delay)
                self.produced += 1
                yield i
        finally:
            self.closed_streams += 1

    def endless(self, delay=0.0):
        """Yield 0, 1, 2... until the client leaves."""
        self.produced = 0
        try:
            while True:
                if delay:
                    time.sleep(delay)
                self.produced += 1
                yield self.produced - 1
        finally:
            self.closed_streams += 1

    def iterate(self, n):
        """Not a generator function: returns an iterator."""
        return iter(range(n))

    def fail_at(self, n):
        yield from range(n)
        raise ValueError(f"failed at {n}")

    def first_then_wait(self, seconds):
        yield "first"
        time.sleep(seconds)
        yield "second"

    def announce(self, topic, value=None):
        return self.publish(topic, value)

    def announce_many(self, topic, n):
        for i in range(n):
            self.publish(topic, i)
        return n

    def open_streams(self):
        return self._malacoda_hub.count

    def hooked(self):
        """Whether attribute writes go through the watchers' hook now."""
        return getattr(type(self).__dict__.get("__setattr__"), "_malacoda_hook", False)

    def crash(self):
        os._exit(3)


class TwoLoops(TestDaemon):
    """A daemon with a second run method (the original's 'more than one run method')."""

    def __init__(self, **kwargs):
        self.side_loops = 0
        super().__init__(**kwargs)

    def tail(self, n):
        """docs/protocol.md's example: yields "a", "b"..."""
        for i in range(n):
            yield "abcdefghijklmnopqrstuvwxyz"[i % 26]

    def _run_side(self):
        while self.running:
            self.side_loops += 1
            self._wait(0.05)


class SerialDaemon(TestDaemon):
    pass


class CustomStorage(PstStorage):
    """A custom persister, named as 'tests.support.daemons:JsonStorage' in pst_config."""

    def __init__(self, name, paths, frequency=60, folder=None):
        super().__init__(name, paths, frequency)
        from pathlib import Path

        self.path = Path(folder) / f"{name}.custom"

    def load(self):
        if not self.path.exists():
            return None
        return self._loaded(self.path.read_bytes(), str(self.path))

    def write(self, payload):
        self.path.write_bytes(payload)


class HostileDaemon(TestDaemon):
    """Counts the calls it runs, so that tests can tell a call that ran twice."""

    def __init__(self, **kwargs):
        self.tallies = 0
        self.finished = 0
        self.seen = {}
        super().__init__(**kwargs)

    def tail(self, n):
        """docs/protocol.md's example: yields "a", "b"..."""
        for i in range(n):
            yield "abcdefghijklmnopqrstuvwxyz"[i % 26]

    def tally(self, seconds=0.0):
        """Count this call, then take ``seconds``."""
        with self.lock:
            self.tallies += 1
            count = self.tallies
        time.sleep(seconds)
        return count

    def tally_big(self, seconds, size):
        """Count this call, take ``seconds``, count it finished; ``size`` zero bytes back."""
        self.tally(seconds)
        with self.lock:
            self.finished += 1
        return bytes(size)

    def record(self, caller, index, payload=None):
        """Count call ``index`` of ``caller`` and return what identifies it."""
        key = (caller, index)
        with self.lock:
            self.seen[key] = self.seen.get(key, 0) + 1
        return [caller, index, payload]

    def record_stats(self):
        """(distinct calls recorded, calls recorded more than once, total)."""
        with self.lock:
            counts = list(self.seen.values())
        return [len(counts), sum(1 for c in counts if c > 1), sum(counts)]


class PstSocket(TestDaemon):
    """A daemon that can be given a pst attribute no persister can save (a socket)."""

    def __init__(self, **kwargs):
        self.pst_list = None
        self.pst_sock = None
        super().__init__(**kwargs)

    def tail(self, n):
        """docs/protocol.md's example: yields "a", "b"..."""
        for i in range(n):
            yield "abcdefghijklmnopqrstuvwxyz"[i % 26]

    def open_socket(self):
        import socket

        self.pst_sock = socket.socket()
        return "opened"


class Talker(TestDaemon):
    """Prints on request: fills the log for the log tests."""

    def say(self, text, times=1, pause=0.0):
        for i in range(times):
            print(f"{text} {i}", flush=True)
            time.sleep(pause)
        return times


class FailInit(TestDaemon):
    """Its constructor raises before the daemon serves."""

    def __init__(self, **kwargs):
        raise ValueError("bad setting: 42")


class CrashAfterReady(TestDaemon):
    """Serves, then its main loop fails: a crash loop under the monitor (after the half second
    in which an exit counts as a failed start)."""

    def _run(self):
        self._wait(0.5)
        raise RuntimeError("crashed on purpose")


class Stubborn(TestDaemon):
    """Ignores stop() and SIGTERM, and has a child in its process group: only SIGKILL works."""

    def _run(self):
        import signal
        import subprocess
        import sys

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid
        while True:
            time.sleep(0.05)

    def child_pid(self):
        return self.child


class Decorated(TestDaemon):
    """Methods made by decorators, not plain functions."""

    @functools.lru_cache  # noqa: B019 - the daemon object lives as long as its cache
    def square(self, x):
        """The square of x, remembered."""
        return x * x

    @functools.singledispatchmethod
    def kind(self, value):
        return "something"

    @kind.register
    def _kind_int(self, value: int):
        return "an int"

    def _plus(self, a, b):
        return a + b

    plus_one = functools.partialmethod(_plus, 1)

    system = os.system  # a callable the class holds: not a method of the daemon's

    @functools.cached_property
    def computed(self):
        return 7


class Chatty(TestDaemon):
    """Prints all the time: its output meets the broken log pipe the moment its monitor dies."""

    def _run(self):
        while self.running:
            print(f"chatty {self.loops}", flush=True)
            self.loops += 1
            self._wait(0.05)


class OwnTimeout(TestDaemon):
    """A method with a ``timeout`` parameter of its own."""

    def fetch(self, url, timeout=10):
        return [url, timeout]

    def nap(self, seconds, timeout=None):
        time.sleep(seconds)
        return timeout


class SlowInit(TestDaemon):
    """Its constructor takes 100 s: never ready within any test's start_timeout. With
    ``ignore_term`` it also ignores SIGTERM, so only the SIGKILL at stop_timeout ends it."""

    def __init__(self, ignore_term=False, **kwargs):
        import signal

        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(100)
        super().__init__(**kwargs)

    def tail(self, n):
        """docs/protocol.md's example: yields "a", "b"..."""
        for i in range(n):
            yield "abcdefghijklmnopqrstuvwxyz"[i % 26]


class Defaced(Talker):
    """Daemon docs with \x1b]0;pwned\x07 a window title and a \x1b[2J clear-screen in them."""

    def banner(self):
        """Returns a greeting.\r[monitor] forged line"""
        return "hello"


class StreamDaemon(TestDaemon):
    """TestDaemon with a short stream lease (``lease`` seconds) and small limits to test."""

    def __init__(self, lease=1.0, max_streams=None, **kwargs):
        self._stream_lease = lease
        if max_streams is not None:
            self._max_streams = max_streams
        super().__init__(**kwargs)

    def tail(self, n):
        """docs/protocol.md's example: yields "a", "b"..."""
        for i in range(n):
            yield "abcdefghijklmnopqrstuvwxyz"[i % 26]
