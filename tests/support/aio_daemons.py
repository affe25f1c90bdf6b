"""Daemon classes with ``async def`` methods, for the asyncio tests (tests/integration/test_aio.py)."""

from __future__ import annotations

import asyncio
import threading

from tests.support.daemons import TestDaemon


class AsyncDaemon(TestDaemon):
    """TestDaemon and coroutine methods that await, count how many run at once, and fail."""

    __test__ = False

    def __init__(self, **kwargs):
        self.active = 0
        self.most = 0
        self.naps = 0
        super().__init__(**kwargs)

    async def nap(self, seconds=0.2):
        """Sleep on the daemon's event loop; the seconds slept."""
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.active -= 1
        self.naps += 1
        return seconds

    async def where(self):
        """The thread that runs this coroutine, and whether a loop is running there."""
        asyncio.get_running_loop()
        return threading.current_thread().name

    async def afail_key(self):
        await asyncio.sleep(0)
        return {}["missing"]

    async def afail_file(self, path="/nonexistent/malacoda-file"):
        await asyncio.sleep(0)
        with open(path):
            pass

    async def pair(self, a, b):
        await asyncio.sleep(0)
        return (a, b)

    async def own_timeout(self, timeout=5):
        """A method with a parameter named timeout: the keyword is its own."""
        return timeout

    async def forever(self):
        await asyncio.Event().wait()

    # async generators: streams produced on the daemon's event loop

    async def acount(self, n, pause=0.0):
        """Yield 0 to n - 1, awaiting ``pause`` seconds before each."""
        self.produced = 0
        try:
            for i in range(n):
                if pause:
                    await asyncio.sleep(pause)
                self.produced += 1
                yield i
        finally:
            self.closed_streams += 1

    async def aendless(self, pause=0.01):
        """Yield 0, 1, 2... until the client leaves; counts the closings."""
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(pause)
        finally:
            self.closed_streams += 1

    async def afail_at(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        raise ValueError(f"failed at {n}")

    async def await_events(self, seconds):
        """A coroutine that announces events while it sleeps."""
        for i in range(3):
            await asyncio.sleep(seconds)
            self.publish("orders.new", i)
        return 3


class FewAsync(AsyncDaemon):
    """At most 4 ``async def`` calls at once."""

    _async_calls = 4


class FewStreams(AsyncDaemon):
    """At most 4 streams open at once, and a 1 s lease."""

    _max_streams = 4
    _stream_lease = 1.0
