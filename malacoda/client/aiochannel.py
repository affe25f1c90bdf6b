"""One DEALER to one daemon endpoint, driven by an asyncio loop: shared by all its tasks.

The asyncio twin of :class:`~malacoda.client.channel.Channel`, without its threads: a call sends its request
at once (a non-blocking send from the calling task) and awaits a future kept under its request
id; one reader task receives replies and settles the futures by id, as many as have arrived per
wake-up. Many concurrent awaits so share one connection and no call holds a thread. A reply
nobody waits for (the call timed out, or its task was cancelled) is dropped.

As in the synchronous channel: requests go out only over a connection that is up
(``IMMEDIATE``); one that finds none waits in an outbox, from which a timeout or a cancellation
withdraws it (it never runs). A socket monitor reports a dropped or refused link: every waiting
call then fails with :class:`~malacoda.errors.ConnectionLost`
(:class:`~malacoda.client.channel.NotSent` for those never sent), and the channel is marked
broken so that its proxy resolves the name again. While a call without a timeout waits, the
daemon is pinged after ``heartbeat`` quiet seconds, and the calls fail once two heartbeats
pass unanswered.

The DEALER is driven by the event loop itself, as zmq.asyncio drives its sockets inside:
the loop watches the socket's ``ZMQ_FD``, and on a wake-up the channel reads ``ZMQ_EVENTS``,
receives every reply that is in and sends what waits in the outbox. (pyzmq's zmq.asyncio
sockets, with a future per operation and flag enums per look at the events, cost more per call
than the whole round trip's Python code; see docs/benchmarks.md.) That descriptor signals
edge-triggered, and a send may consume the signal of a reply that arrived meanwhile, so after
sends the channel looks at the events once more, once per loop iteration however many requests
went out in it. The link monitor's socket is watched the same way, and read before a request
goes out after a quiet spell (as the synchronous channel does), so that a request is not sent
into a link that is known to be gone.
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from typing import TYPE_CHECKING, Deque, Dict, List, Optional, Set, Tuple, cast

import zmq

from malacoda.client.channel import HEARTBEAT, LINK_QUIET, REPLY_BYTES_PER_ITEM, NotSent
from malacoda.client.link import LINK_EVENTS, configure_dealer, context, link_error
from malacoda.errors import CallTimeout, ConnectionLost, ProtocolError
from malacoda.wire import codec
from malacoda.wire import protocol as p
from malacoda.wire.frames import NOBLOCK, get_option, recv_frames, try_send

if TYPE_CHECKING:
    from malacoda.client.aiostream import AsyncStream

_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)
OUTBOX_LOOK = 0.05  # seconds between looks for a link while requests wait for one
KEEPALIVE_MAX = 5.0  # seconds between keep-alive pings while streams are open, at most


class AsyncChannel:
    """A DEALER connected to ``endpoint``, used by the tasks of the running event loop.

    Made inside a coroutine (it belongs to the loop running it); :meth:`request` may be awaited
    by any number of tasks of that loop at once.
    """

    def __init__(
        self,
        endpoint: str,
        curve: Optional[Dict[str, bytes]] = None,
        heartbeat: float = HEARTBEAT,
        max_message: int = p.MAX_MESSAGE,
        plain: Optional[bytes] = None,
        owner_token: Optional[bytes] = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        self.max_message = max_message
        self._max_items = max(codec.MAX_REQUEST_ITEMS, max_message // REPLY_BYTES_PER_ITEM)
        self._curve = curve is not None
        self._client_key = curve["public"].decode() if curve else "<client key>"
        sock = context().socket(zmq.DEALER)
        monitor: Optional[zmq.Socket] = None
        self._fd: Optional[int] = None
        self._monitor_fd: Optional[int] = None
        try:
            configure_dealer(sock, endpoint, curve, max_message, plain, owner_token)
            monitor = sock.get_monitor_socket(LINK_EVENTS)
            sock.connect(endpoint)
        except zmq.ZMQError:
            self._sock, self._monitor = sock, monitor
            self._close_sockets()
            raise
        assert monitor is not None
        self._sock, self._monitor = sock, monitor
        fd = cast(int, sock.getsockopt(zmq.FD))
        self._fd = fd
        self.loop.add_reader(fd, self._on_events)
        monitor_fd = cast(int, monitor.getsockopt(zmq.FD))
        self._monitor_fd = monitor_fd
        self.loop.add_reader(monitor_fd, self._on_link_events)
        self._looking = False  # a look at the socket's events is scheduled
        self._pending: Dict[bytes, asyncio.Future[p.Reply]] = {}
        # Open streams by stream id, weakly: a stream its consumer dropped (``break``) is
        # collected, and its __del__ cancels it.
        self._streams: Dict[bytes, weakref.ref[AsyncStream]] = {}
        self._posts = 0  # messages posted without a reply awaited (credit, cancel)
        self._keeper: Optional[asyncio.Task[None]] = None
        self._outbox: Dict[bytes, List[bytes]] = {}  # not sent yet (no link): in order
        self._untimed = 0  # calls waiting without a timeout: the heartbeat watches for them
        # (deadline, future) of calls with a timeout, in deadline order; see _arm
        self._deadlines: Deque[Tuple[float, asyncio.Future[p.Reply]]] = collections.deque()
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self.broken: Optional[BaseException] = None
        self.closed = False
        self._last_heard = time.monotonic()
        self._link_looked = 0.0  # when request() last looked at the link's news
        self._tasks: Set[asyncio.Task[None]] = set()
        self._sender: Optional[asyncio.Task[None]] = None
        self._watchdog: Optional[asyncio.Task[None]] = None
        self._ping_seq = 0
        # A ZeroMQ socket's descriptor signals only once a read found its queue empty: read
        # both now, or the first events would never wake the loop (and a daemon's death
        # after them neither: found by a test that waited for it, idle, for 10 s).
        self._on_link_events()
        self._on_events()

    # ------------------------------------------------------------------ public

    async def request(self, frames: List[bytes], rid: bytes,
                      timeout: Optional[float]) -> p.Reply:
        """Send ``frames`` and await the reply with id ``rid``.

        Raises :class:`~malacoda.client.channel.NotSent` when the link is found down before the request left,
        :class:`~malacoda.errors.ConnectionLost` when it drops while waiting, and
        :class:`~malacoda.errors.CallTimeout` after ``timeout`` seconds. Cancelling the awaiting task
        abandons the call: a request still in the outbox is withdrawn, a late reply dropped.
        """
        if self.closed:
            raise NotSent(f"the connection to {self.endpoint} was closed")
        # Unread link news (the daemon went away since we last heard from it)? Only worth a
        # look after a pause, as in the synchronous channel; and once per pause, not per
        # request (a thousand requests of one loop iteration look once).
        now = time.monotonic()
        if now - self._last_heard > LINK_QUIET and now - self._link_looked > LINK_QUIET:
            self._link_looked = now
            if cast(int, get_option(cast(zmq.Socket, self._monitor), _EVENTS)) & _POLLIN:
                self._on_link_events()
        if self.broken is not None:
            raise NotSent(str(self.broken))
        future: asyncio.Future[p.Reply] = self.loop.create_future()
        pending = self._pending
        pending[rid] = future
        if not self._outbox and try_send(self._sock, frames):
            if not self._looking:  # see the module's docstring: no reply waits unseen
                self._looking = True
                self.loop.call_soon(self._on_events)
        else:
            self._outbox[rid] = frames
            if self._sender is None:
                self._sender = self._spawn(self._send_later())
        timer = None
        if timeout is None:
            self._untimed += 1
            if self._watchdog is None:
                self._watchdog = self._spawn(self._heartbeat())
        else:
            timer = self._arm(self.loop.time() + timeout, future)
        try:
            return await future
        except _Expired:
            if rid in self._outbox:
                raise CallTimeout(f"no connection to {self.endpoint} within {timeout} s: the "
                                  "request was not sent") from None
            raise CallTimeout(f"no reply from {self.endpoint} within {timeout} s") from None
        finally:
            del pending[rid]
            if future.done() and not future.cancelled():
                future.exception()  # seen (a task cancelled as it failed): nothing logged at GC
            if self._outbox:
                self._outbox.pop(rid, None)  # still unsent: withdrawn, it will never run
            if timeout is None:
                self._untimed -= 1
            elif timer is not None:
                timer.cancel()

    def _arm(self, deadline: float, future: asyncio.Future[p.Reply]
             ) -> Optional[asyncio.TimerHandle]:
        """Expire ``future`` at ``deadline`` (loop time). Calls of one timeout come in the
        order of their deadlines: those wait in one queue behind one loop timer, which costs
        less than a timer each (made, pushed on the loop's heap, cancelled: a thousand calls
        at once made a thousand). A deadline earlier than the last queued gets a timer of its
        own, which is returned (to cancel)."""
        queue = self._deadlines
        while queue and queue[0][1].done():  # answered calls leave from the front
            queue.popleft()
        if len(queue) > 2 * len(self._pending) + 64:  # a slow call at the front holds many
            queue = self._deadlines = collections.deque(e for e in queue if not e[1].done())
        if queue and deadline < queue[-1][0]:
            return self.loop.call_at(deadline, _expire, future)
        queue.append((deadline, future))
        first = queue[0][0]
        sweeper = self._sweeper
        if sweeper is None or first < sweeper.when():  # (armed for calls gone since)
            if sweeper is not None:
                sweeper.cancel()
            self._sweeper = self.loop.call_at(first, self._sweep)
        return None

    def _sweep(self) -> None:
        """The first queued deadline came: expire what is due, wait for the next."""
        self._sweeper = None
        queue, now = self._deadlines, self.loop.time()
        while queue and (queue[0][0] <= now or queue[0][1].done()):
            _, future = queue.popleft()
            _expire(future)
        if queue:
            self._sweeper = self.loop.call_at(queue[0][0], self._sweep)

    # ------------------------------------------------------------------ streams

    def open_stream(self, rid: bytes, stream: AsyncStream) -> None:
        """Deliver every later message to ``rid`` to ``stream`` until :meth:`close_stream`;
        while streams are open, ping the daemon every quarter lease (their lease)."""
        if self.broken is not None:
            raise ConnectionLost(str(self.broken))
        self._streams[rid] = weakref.ref(stream)
        if self._keeper is None:
            self._keeper = self._spawn(self._keep_alive())

    def close_stream(self, rid: bytes) -> None:
        self._streams.pop(rid, None)

    def post(self, frames: List[bytes]) -> None:
        """Send ``frames`` (a credit or a cancel: never answered) now, or as soon as the link
        takes them; dropped if the link is broken (the daemon forgets the stream anyway)."""
        if self.closed or self.broken is not None:
            return
        if not self._outbox and try_send(self._sock, frames):
            if not self._looking:
                self._looking = True
                self.loop.call_soon(self._on_events)
            return
        self._posts += 1
        self._outbox[b"\x00post" + self._posts.to_bytes(8, "big")] = frames
        if self._sender is None:
            self._sender = self._spawn(self._send_later())

    async def _keep_alive(self) -> None:
        """Ping every quarter of the shortest lease (at most KEEPALIVE_MAX s) while streams
        are open: a consumer that takes its time keeps its streams."""
        try:
            while self._streams and not self.closed and self.broken is None:
                streams = [ref() for ref in self._streams.values()]
                interval = min([KEEPALIVE_MAX, *(s.lease / 4 for s in streams if s is not None)])
                del streams  # no strong reference while asleep: a dropped stream must go
                await asyncio.sleep(interval)
                self._ping_seq += 1
                rid = b"\xffkeep" + self._ping_seq.to_bytes(8, "big")
                self.post(p.request_frames(rid, p.PING, None, None, None))
        finally:
            self._keeper = None

    def close(self) -> None:
        """Fail every waiting call (ConnectionLost), stop the tasks, close the sockets."""
        if self.closed:
            return
        self.closed = True
        self._fail_all(ConnectionLost(f"the connection to {self.endpoint} was closed"))
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._deadlines.clear()
        self._close_sockets()

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_events(self) -> None:
        """The socket may have news: receive every reply that is in, send what the outbox
        holds while the socket takes it; until the events show nothing more to do."""
        self._looking = False
        if self.closed:
            return
        sock, take = self._sock, self._take
        while True:
            events = cast(int, get_option(sock, _EVENTS))
            progressed = False
            if events & _POLLIN:
                try:
                    while True:
                        take(recv_frames(sock, NOBLOCK))
                except zmq.Again:
                    pass
                progressed = True
            if self._outbox and events & _POLLOUT:
                for rid in list(self._outbox):
                    if not try_send(sock, self._outbox[rid]):
                        break
                    del self._outbox[rid]
                    progressed = True
            if not progressed:
                return

    def _take(self, frames: List[bytes]) -> None:
        self._last_heard = time.monotonic()
        try:
            reply = p.parse_reply(frames, self.max_message, self._max_items)
        except ProtocolError:
            return
        future = self._pending.get(reply.rid)
        if future is not None:
            if not future.done():
                future.set_result(reply)
            return
        ref = self._streams.get(reply.rid)
        stream = None if ref is None else ref()
        if stream is not None:
            stream.deliver(reply)

    def _on_link_events(self) -> None:
        """Read the link monitor's events: a drop or a refusal fails the waiting calls."""
        monitor = self._monitor
        if self.closed or monitor is None:
            return
        while True:
            try:
                event = recv_frames(monitor, NOBLOCK)
            except zmq.Again:
                return
            lost = link_error(event, self.endpoint, self._curve, self._client_key)
            if lost is not None:
                self._fail_all(lost)
            else:
                self._on_events()  # connected: the outbox may go now

    async def _send_later(self) -> None:
        """While the outbox holds requests: look for the link now and then (its connection
        also wakes the socket); after two heartbeats without one, fail (the link is broken:
        the proxy resolves the name again)."""
        give_up = time.monotonic() + 2 * self.heartbeat
        try:
            while self._outbox and self.broken is None and not self.closed:
                if time.monotonic() >= give_up:
                    gone = (f"no connection to {self.endpoint} for {2 * self.heartbeat:.0f} s "
                            "(the daemon is stopped, hung or unreachable)")
                    self._fail_all(ConnectionLost(gone))
                    return
                await asyncio.sleep(OUTBOX_LOOK)
                self._on_events()
        finally:
            self._sender = None

    async def _heartbeat(self) -> None:
        """While calls without a timeout wait: ping after a quiet heartbeat, fail after two."""
        quiet_from = time.monotonic()
        pinged = False
        try:
            while self._untimed and self.broken is None:
                await asyncio.sleep(self.heartbeat / 2)
                quiet = time.monotonic() - max(quiet_from, self._last_heard)
                if self._last_heard > quiet_from:
                    quiet_from, pinged = self._last_heard, False
                if quiet >= 2 * self.heartbeat and pinged:
                    self._fail_all(ConnectionLost(
                        f"the daemon at {self.endpoint} did not answer a ping for "
                        f"{2 * self.heartbeat:.0f} s (hung, stopped or unreachable)"))
                    return
                if quiet >= self.heartbeat and not pinged:
                    self._ping_seq += 1
                    rid = b"\xffping" + self._ping_seq.to_bytes(8, "big")
                    try_send(self._sock, p.request_frames(rid, p.PING, None, None, None))
                    self._on_events()
                    pinged = True
        finally:
            self._watchdog = None

    # ------------------------------------------------------------------ failure

    def _fail_all(self, error: ConnectionLost) -> None:
        if self.broken is None:  # the first cause is the cause (auth failure, then disconnect)
            self.broken = error
        for rid, future in list(self._pending.items()):
            if not future.done():
                future.set_exception(NotSent(str(error)) if rid in self._outbox else error)
        for ref in list(self._streams.values()):
            stream = ref()
            if stream is not None:
                stream.fail(error)

    def _close_sockets(self) -> None:
        """Off the loop; then monitoring off, the monitor's socket, then the socket: the only
        safe order."""
        sock, monitor = self._sock, self._monitor
        if not self.loop.is_closed():
            for fd in (self._fd, self._monitor_fd):
                if fd is not None:
                    self.loop.remove_reader(fd)
        self._fd = self._monitor_fd = None
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        if monitor is not None:
            monitor.close(0)
        sock.close(0)


class _Expired(Exception):
    """A call's timer ran out (turned into CallTimeout by the awaiting call)."""


def _expire(future: asyncio.Future[p.Reply]) -> None:
    if not future.done():
        future.set_exception(_Expired())
