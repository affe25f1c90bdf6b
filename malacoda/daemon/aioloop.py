"""The daemon's event loop: where its ``async def`` methods run, without a worker thread each.

A call of an ``async def`` method starts like any call (a worker, or the socket's leader,
decodes it and calls the method, which returns a coroutine at once) and is then handed to this
loop: one thread running asyncio, started with the server when the daemon's class has an
``async def`` method, else at the first coroutine. The worker is free again at once, so a
daemon with ``workers=2`` runs hundreds of calls that await I/O (``asyncio.sleep``, a socket,
a subprocess) at the same time. Plain methods keep running in the workers as before; blocking
code in an ``async def`` method blocks every other coroutine of the loop (as in any asyncio
program): run it with ``await loop.run_in_executor(...)``.

The server bounds what the loop holds (see :mod:`malacoda.daemon.server`): at most ``_async_calls``
calls at once (a class attribute, default :data:`ASYNC_CALLS`) whose requests hold at most the
server's ``queue_bytes`` beyond the first; a call past either gets BUSY and its coroutine is
closed unrun. A hostile flood of calls to a method that awaits for ever so holds a bounded
number of coroutines and bytes.

A coroutine's outcome becomes a reply as a method's return or exception does
(:func:`~malacoda.daemon.dispatch.failure`); the reply goes out through the server's inproc socket like any
late reply. At stop, calls still running after the server's grace are cancelled: their callers
get a ``CancelledError`` (as a :class:`~.errors.RemoteError`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from typing import Any, Callable, Coroutine, Optional

from malacoda.daemon.dispatch import Outcome, failure
from malacoda.wire import protocol as p

log = logging.getLogger(__name__)

#: How many ``async def`` calls a daemon runs at once by default (class attribute
#: ``_async_calls``): each holds a coroutine, its frame and its request, a few KiB for small ones.
ASYNC_CALLS = 1024

Done = Callable[[int, Any], None]


async def _outcome(coro: Coroutine[Any, Any, Any]) -> Outcome:
    """Await ``coro``; its result or exception as ``(status, body)``."""
    try:
        return p.OK, await coro
    except Exception as exc:
        return failure(exc)
    except (SystemExit, KeyboardInterrupt, asyncio.CancelledError) as exc:
        # Raised by the remote code itself, or the cancellation at stop: the caller gets it
        # back; the daemon does not stop for it.
        return p.ERROR, p.error_body(exc, traceback.format_exc())


class CallLoop:
    """An asyncio loop in a thread of its own; :meth:`submit` may be called from any thread.

    ``on_exit`` runs in the loop's thread when it ends (the server closes that thread's
    sockets there)."""

    def __init__(self, on_exit: Optional[Callable[[], None]] = None) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._tasks: set[asyncio.Task[Outcome]] = set()

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the loop's thread if it is not running yet; the loop."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(target=self._main, args=(loop, started),
                                          name="malacoda-asyncio", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, Any], done: Done) -> None:
        """Run ``coro`` on the loop; ``done(status, body)`` is called in the loop's thread when
        it has finished (returned, raised or been cancelled)."""
        self.start().call_soon_threadsafe(self._begin, coro, done)

    def close(self, timeout: float = 1.0) -> None:
        """Cancel what still runs (each gets its reply), stop the loop, wait for its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(self._cancel_all)
        except RuntimeError:  # already closed
            return
        thread.join(timeout)

    # ------------------------------------------------------------------ in the loop's thread

    def _main(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.close()
            finally:
                if self._on_exit is not None:
                    self._on_exit()

    def _begin(self, coro: Coroutine[Any, Any, Any], done: Done) -> None:
        task = asyncio.ensure_future(_outcome(coro))
        self._tasks.add(task)

        def finished(task: asyncio.Task[Outcome]) -> None:
            self._tasks.discard(task)
            try:
                status, body = task.result()
            except BaseException as exc:  # cancelled before it began
                status, body = p.ERROR, p.error_body(exc)
            try:
                done(status, body)
            except Exception:
                log.exception("the reply of an async call could not be sent")

        task.add_done_callback(finished)

    def _cancel_all(self) -> None:
        loop = asyncio.get_event_loop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            loop.stop()
            return

        async def settle() -> None:
            await asyncio.wait(tasks, timeout=0.5)
            loop.stop()

        loop.create_task(settle())
