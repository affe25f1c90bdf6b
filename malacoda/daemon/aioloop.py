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

An ``async def`` generator method streams (docs/protocol.md, "Streams"): its generator is
driven on this loop too, by :class:`AsyncGenSource`, which pulls the next item only while the
stream has credit and nothing waits to be sent, so it never runs more than the client's window
ahead, and holds no worker at all (not even for turns, as a plain generator's items do); its
stream counts against ``max_streams`` like any other. Cancelling the stream (the client leaves
early, its lease runs out, the daemon stops) cancels the generator where it awaits: its
``finally:`` runs.

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
from typing import Any, AsyncGenerator, Callable, Coroutine, Dict, Optional

from malacoda.daemon.dispatch import Outcome, failure
from malacoda.daemon.streams import StreamHub
from malacoda.daemon.subscriptions import EventSource
from malacoda.wire import protocol as p
from malacoda.wire.codec import encode_item

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
        self._tasks: set[asyncio.Task[Any]] = set()

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

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop as a task of its own (cancelled at :meth:`close`)."""
        self.start().call_soon_threadsafe(self._begin_task, coro)

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

    def _begin_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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


class AsyncGenSource(EventSource):
    """The items of an async generator a method returned, for its stream: produced on the
    daemon's loop one at a time, each only once the stream has credit for it.

    An :class:`~malacoda.daemon.streams.EventSource` to the stream hub (it feeds its stream the
    way events do, without a worker), whose producer waits for demand: it pulls the next item
    when its stream has credit and no item is pending, so at most the credit granted (and
    never more than the stream's window) is produced ahead of the client. The hub's
    :meth:`fed` wakes it when credit comes, and when the stream is closed (then the generator
    is cancelled where it awaits, and closed: its ``finally:`` runs).
    """

    def __init__(self, hub: StreamHub, calls: CallLoop, agen: AsyncGenerator[Any, None],
                 rid: bytes) -> None:
        super().__init__(hub, "agen", "<async generator>")
        self.agen = agen
        self.rid = rid
        self.loop = calls.start()
        self._demand: Optional[asyncio.Event] = None  # made and used in the loop's thread
        self._waiting = False  # the producer waits for demand (under the hub's lock)
        self._demand_wait = False  # ... and awaits it now (not inside the generator)
        self._task: Optional[asyncio.Task[None]] = None
        calls.spawn(self._produce())

    def fed(self) -> None:  # under the hub's lock, in any thread
        if self._waiting or self.closed:
            self._waiting = False
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has stopped: the daemon is stopping
                pass

    def _wake(self) -> None:
        if self._demand is not None:
            self._demand.set()
        task = self._task
        if self.closed and task is not None and not self._demand_wait:
            task.cancel()  # it awaits inside the generator: cancel it there

    async def _produce(self) -> None:
        self._task = asyncio.current_task()
        demand = self._demand = asyncio.Event()
        hub, agen = self.hub, self.agen
        try:
            while True:
                with hub.lock:
                    if self.closed:
                        return
                    stream = self.stream
                    ready = (stream is not None and stream.granted > stream.produced
                             and not self.pending)
                    if not ready:
                        self._waiting = True
                        demand.clear()
                if not ready:
                    self._demand_wait = True
                    try:
                        await demand.wait()
                    finally:
                        self._demand_wait = False
                    continue
                try:
                    item = await agen.__anext__()
                    encoded = encode_item(item)
                except StopAsyncIteration:
                    self._finish(None)
                    return
                except Exception as exc:  # the daemon's code raised, or an item cannot travel
                    self._finish(p.error_body(exc, traceback.format_exc()))
                    return
                with hub.lock:
                    if self.closed:
                        return
                    self.offer(item, encoded)
        except asyncio.CancelledError:
            pass  # the stream was closed (or the daemon stops)
        finally:
            try:
                await agen.aclose()
            except BaseException:  # noqa: B902 - its own error at close: logged, not raised
                log.exception("closing an async generator's stream failed")

    def _finish(self, error: Optional[Dict[str, Any]]) -> None:
        """The generator ended (or raised): its stream's END (or ERROR) follows its items."""
        hub = self.hub
        with hub.lock:
            stream = self.stream
            if stream is None or stream.cancelled or self.closed:
                return
            stream.finished = True
            if error is not None:
                stream.final = hub.error_frames(stream.key, error)
            else:
                stream.final = p.reply_frames(self.rid, p.END, hub.incarnation, stream.produced)
            if not stream.dirty:
                hub._mark(stream)
