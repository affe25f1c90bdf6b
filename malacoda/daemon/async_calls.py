"""The ``async def`` half of the daemon's socket (:class:`~.server.Server`, of which
:class:`AsyncCalls` is a base class).

A call of an ``async def`` method holds a worker only while its coroutine is made; the
coroutine runs on the daemon's event loop (:mod:`~.aioloop`), at most ``_async_calls`` of them
(a class attribute, default :data:`~.aioloop.ASYNC_CALLS`) whose requests hold at most
``queue_bytes`` beyond the first; past either, BUSY. Its reply goes out through the inproc PUSH
socket like any late reply. An ``async def`` generator's stream is produced on the same loop.
"""

from __future__ import annotations

import inspect
import threading
from types import AsyncGeneratorType, CoroutineType
from typing import Any, Callable, List, Tuple

import zmq

from malacoda.daemon.aioloop import ASYNC_CALLS, AsyncGenSource, CallLoop
from malacoda.daemon.replycache import ReplyCache
from malacoda.daemon.streams import StreamHub
from malacoda.wire import protocol as p
from malacoda.wire.frames import send_frames


class AsyncCalls:
    """What the server does for ``async def`` methods: the loop, and the bound on it."""

    # The server's own:
    queue_bytes: int
    replies: ReplyCache
    streams: StreamHub
    _mu: threading.Lock
    _stopping: bool
    _late: int
    _push: Callable[[], zmq.Socket]
    _close_push: Callable[[], None]
    _reply_to: Callable[[p.Request, bytes, int, Any], List[bytes]]

    def _init_async(self, cls: type) -> None:
        # async def calls at once (a class attribute of the daemon), and what their requests hold
        self.async_calls = int(getattr(cls, "_async_calls", ASYNC_CALLS))
        self._async_running = 0
        self._async_bytes = 0
        self.calls = CallLoop(on_exit=self._close_push)  # where async def methods run

    def _start_loop_if_async(self, cls: type) -> None:
        """Start the loop with the server when ``cls`` has an ``async def`` method (or
        generator); else it starts at the first coroutine."""
        if any(inspect.iscoroutinefunction(getattr(cls, name, None))
               or inspect.isasyncgenfunction(getattr(cls, name, None))
               for name in dir(cls) if not name.startswith("_")):
            self.calls.start()

    def _defer(self, request: p.Request, identity: bytes, coro: CoroutineType) -> bool:
        """Hand ``coro`` to the event loop; False (nothing handed) when the loop already runs
        ``async_calls`` calls, or their requests with this one would hold more than
        ``queue_bytes`` (the first is always taken)."""
        with self._mu:
            if self._stopping or self._async_running >= self.async_calls or (
                    self._async_running
                    and self._async_bytes + request.size > self.queue_bytes):
                return False
            self._async_running += 1
            self._async_bytes += request.size
            self._late += 1  # its reply comes through the PULL socket

        def done(status: int, body: Any) -> None:  # in the loop's thread
            reply = self._reply_to(request, identity, status, body)
            with self._mu:
                resent = self.replies.finish(request, reply)
                self._async_running -= 1
                self._async_bytes -= request.size
                self._late += len(resent)
            push = self._push()
            send_frames(push, [identity, *reply])
            for message in resent:
                send_frames(push, message)

        try:
            self.calls.submit(coro, done)
        except RuntimeError:  # the loop has stopped: the daemon is stopping
            with self._mu:
                self._async_running -= 1
                self._async_bytes -= request.size
                self._late -= 1
            return False
        return True

    def _refused(self, coro: CoroutineType) -> Tuple[int, Any]:
        """The BUSY reply of a call :meth:`_defer` did not take (its coroutine closed unrun)."""
        coro.close()  # never run
        busy = RuntimeError(f"daemon busy: {self.async_calls} async calls run (or "
                            f"their requests hold {self.queue_bytes} bytes); try again")
        return p.BUSY, p.error_body(busy)

    def _open_async_stream(self, identity: bytes, rid: bytes,
                           agen: AsyncGeneratorType) -> List[bytes]:  # type: ignore[type-arg]
        """A stream of an ``async def`` generator, produced on the daemon's event loop."""
        return self.streams.open(identity, rid, AsyncGenSource(self.streams, self.calls, agen, rid))
