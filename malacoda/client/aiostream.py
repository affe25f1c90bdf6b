"""The asyncio side of streams: :class:`AsyncStream`, what a streaming call gives an AsyncProxy.

::

    async for line in d.tail(100):          # items as the daemon yields them
        ...
    async with d.tail(100) as lines:        # or leave early: the generator's finally runs
        first = await lines.__anext__()

The wire is the streams extension (docs/protocol.md, "Streams"), handled as the synchronous
:class:`~malacoda.client.streaming.RemoteIterator` handles it: the stream grants its window at
the start and tops it up by what its consumer took each time half of it is used, so that at
most a window of items is buffered here or produced ahead in the daemon; items must come in
order (a gap is :class:`~malacoda.errors.ConnectionLost`); the daemon going away or restarting
mid-stream is ConnectionLost, never a silent end; ``timeout`` bounds the wait for each item
(:class:`~malacoda.errors.CallTimeout`; the stream stays open). Leaving early —
:meth:`AsyncStream.aclose`, ``async with``, or the stream garbage-collected (``break`` out of
``async for`` drops it) — sends a ``cancel``. The channel pings the daemon every quarter lease
while streams are open, so a consumer that takes its time keeps them.

Replies are delivered to the stream by the channel's reader (:meth:`AsyncStream.deliver`), in
the loop's thread; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, Callable, Deque, Optional

from malacoda.client.streaming import StreamConsumer, opened_stream
from malacoda.errors import CallTimeout, ConnectionLost
from malacoda.wire import protocol as p

if TYPE_CHECKING:
    from malacoda.client.aiochannel import AsyncChannel

WINDOW = 1024  # items a client lets the daemon run ahead (cut to the daemon's own window)


class AsyncStream(StreamConsumer):
    """The items of one stream, in order: an async iterator (``async for``)."""

    def __init__(self, channel: AsyncChannel, rid: bytes, incarnation: str, opened: Any,
                 timeout: Optional[float], label: str,
                 error_of: Callable[[Any], BaseException], window: int = WINDOW) -> None:
        theirs, lease = opened_stream(opened)
        self._channel = channel
        self._rid = rid
        self._incarnation = incarnation
        self._timeout = timeout
        self._label = label
        self._error_of = error_of
        self._window = max(1, min(window, theirs))
        self._half = max(1, self._window // 2)
        self.lease = lease / 1000.0
        self._items: Deque[Any] = collections.deque()
        self._next = 0  # the index of the next item expected from the daemon
        self._taken = 0  # items taken since the last credit
        self._granted = 0  # items granted in all: a daemon sending more is refused
        self._over = False  # no more messages will come (ended, failed, lost, closed)
        self._error: Optional[BaseException] = None  # raised once the items before it are out
        self._waiter: Optional[asyncio.Future[bool]] = None
        channel.open_stream(rid, self)
        self._post(p.CREDIT, self._window)

    # ------------------------------------------------------------------ the consumer's side

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        items = self._items
        while not items:
            if self._error is not None:
                raise self._error
            if self._over:
                raise StopAsyncIteration
            loop = self._channel.loop
            waiter = self._waiter = loop.create_future()
            timer = None if self._timeout is None else loop.call_later(
                self._timeout, _wake, waiter, True)
            try:
                if await waiter:
                    raise CallTimeout(f"{self._label}: no item within {self._timeout:.3g} s "
                                      "(the stream is still open)")
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        self._taken += 1
        if self._taken >= self._half and not self._over:
            self._post(p.CREDIT, self._taken)  # top up what was taken: the window again
            self._taken = 0
        return items.popleft()

    async def aclose(self) -> None:
        """Leave the stream: the daemon closes its iterator (a generator's ``finally`` runs)."""
        self.close()

    def close(self) -> None:
        """:meth:`aclose`, from synchronous code of the loop's thread."""
        if not self._over:
            self._post(p.CANCEL, None)
            self._end()
        self._items.clear()

    @property
    def closed(self) -> bool:
        return self._over and not self._items

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_over", True):
            return
        channel = self._channel
        try:
            try:
                running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is channel.loop or not channel.loop.is_running():
                self._over = True
                self._post(p.CANCEL, None)
                channel.close_stream(self._rid)
            else:  # collected in another thread: the loop's own thread sends the cancel
                channel.loop.call_soon_threadsafe(self.close)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._over else "open"
        return f"<malacoda.aio.AsyncStream {self._label} ({state})>"

    # ------------------------------------------------------------------ the channel's side

    def deliver(self, reply: p.Reply) -> None:
        """A message of this stream came (the channel's reader calls this)."""
        if self._over:
            return
        try:
            self._take_in(reply)
        except BaseException as exc:  # noqa: B902 - kept for the consumer
            self._error = exc
            self._end()
        self._wake_consumer()

    def fail(self, lost: BaseException) -> None:
        """The link dropped (or the channel was closed): the stream was cut."""
        if self._over:
            return
        self._error = ConnectionLost(f"{self._label}: the stream was cut: {lost}")
        self._end()
        self._wake_consumer()

    def _take_in(self, reply: p.Reply) -> None:
        if reply.incarnation != self._incarnation:
            raise ConnectionLost(f"{self._label}: the daemon restarted during the stream")
        super()._take_in(reply)

    def _wake_consumer(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def _post(self, op: str, body: Any) -> None:
        if op == p.CREDIT:
            self._granted += body
        self._channel.post(p.request_frames(self._rid, op, None, body, None))

    def _cancel(self) -> None:
        if not self._over:
            self._post(p.CANCEL, None)
            self._end()

    def _end(self) -> None:
        """The stream is over: no more credit or cancel, and the channel forgets it."""
        if not self._over:
            self._over = True
            self._channel.close_stream(self._rid)


def _wake(waiter: asyncio.Future[bool], timed_out: bool) -> None:
    if not waiter.done():
        waiter.set_result(timed_out)
