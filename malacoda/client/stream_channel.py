"""A :class:`~.channel.Channel` that also carries streams (docs/protocol.md, "Streams").

A stream is many replies to one request id: :class:`StreamWaiter` queues them for its
consumer, and to the channel's reader it looks like any waiter (a reply delivered to it is
queued; ``reply`` hands out the oldest). The consumer reads the socket itself when nobody else
does (:meth:`StreamChannel.receive`), as a caller does for its reply. Credit, cancel and the
keep-alive ping are sent without waiting for anything (:meth:`StreamChannel.post`); a cancel
from a ``__del__`` takes no lock it could wait for (:meth:`StreamChannel.post_from_finalizer`).
"""

from __future__ import annotations

import collections
import os
import time
from typing import Deque, List, Optional

from malacoda.client.channel import Channel
from malacoda.client.waiter import Waiter
from malacoda.errors import ConnectionLost, ProtocolError
from malacoda.wire import protocol as p
from malacoda.wire.frames import try_send


class StreamWaiter(Waiter):
    """A stream's messages, as they come: many replies to one id (see malacoda.client.streaming).

    To the channel it looks like a waiter: a reply delivered to it is queued, and ``reply``
    hands out the oldest queued one. The daemon sends at most the credit granted, so the
    queue is bounded by the stream's window.
    """

    __slots__ = ("queue", "rid", "wants_role", "limit")

    def __init__(self, rid: bytes, limit: Optional[int] = None) -> None:
        super().__init__()
        self.rid = rid
        # the most messages a daemon keeping to the credit can have queued here (a hostile
        # one sending more fails the stream rather than grow this queue)
        self.limit = limit
        self.queue: Deque[p.Reply] = collections.deque()
        self.wants_role = False  # True while its consumer waits in StreamChannel.receive

    @property  # type: ignore[override]
    def done(self) -> bool:
        return bool(self.queue) or self.error is not None

    @property  # type: ignore[override]
    def reply(self) -> Optional[p.Reply]:
        return self.queue.popleft() if self.queue else None

    @reply.setter
    def reply(self, value: Optional[p.Reply]) -> None:
        if value is not None:
            if self.limit is not None and len(self.queue) >= self.limit:
                if self.error is None:
                    self.error = ProtocolError("the daemon sent more messages than the "
                                               "stream's credit allows")
                return
            self.queue.append(value)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.wake()


class StreamChannel(Channel):
    """A channel whose proxy can stream: every method of :class:`Channel`, and these."""

    def open_stream(self, rid: bytes, limit: Optional[int] = None) -> StreamWaiter:
        """Receive every later message to ``rid`` (a stream the daemon opened) until
        :meth:`close_stream`."""
        waiter = StreamWaiter(rid, limit)
        with self._mu:
            if self.broken is not None:
                raise ConnectionLost(str(self.broken))
            self._pending[rid] = waiter
        return waiter

    def close_stream(self, waiter: StreamWaiter) -> None:
        with self._mu:
            if self._pending.get(waiter.rid) is waiter:
                del self._pending[waiter.rid]
        if self._pending:
            self._pass_reader_role()

    def receive(self, waiter: StreamWaiter, deadline: Optional[float]) -> Optional[p.Reply]:
        """The next message of a stream: read the socket as the reader, or wait for the one
        who does. None when ``deadline`` passes first; raises ConnectionLost."""
        waiter.wants_role = True
        try:
            return self._receive(waiter, deadline)
        finally:
            waiter.wants_role = False

    def _receive(self, waiter: StreamWaiter, deadline: Optional[float]) -> Optional[p.Reply]:
        while True:
            reply = waiter.reply
            if reply is not None:
                return reply
            if waiter.error is not None:
                raise waiter.error
            if self._io.acquire(blocking=False):
                try:
                    if self._closed:
                        raise ConnectionLost(f"the connection to {self.endpoint} was closed")
                    self._flush()
                    if not waiter.done:
                        reply = self._read_until(waiter.rid, deadline, waiter)
                        if reply is None and not waiter.done:
                            return None
                        if reply is not None:
                            return reply
                except ConnectionLost as lost:
                    waiter.fail(lost)
                finally:
                    self._io.release()
                    self._pass_reader_role(waiter)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            waiter.sleep(0.05 if remaining is None else min(remaining, 0.05))

    def post(self, frames: List[bytes]) -> None:
        """Send ``frames`` without waiting for anything (a credit, a cancel, a keep-alive):
        at once when nobody reads, else through the reader. Any thread; no lock is taken
        when another thread reads, so it may run in a ``__del__``."""
        if self._closed or self._pid != os.getpid():
            return
        if self._io.acquire(blocking=False):
            try:
                if not self._closed and not try_send(self._sock, frames):
                    self._outbox.append(frames)  # no link now: the reader sends it later
            finally:
                self._io.release()
                if self._pending:
                    self._pass_reader_role()
            return
        self._outbox.append(frames)
        self._nudge()

    def post_from_finalizer(self, frames: List[bytes], waiter: StreamWaiter) -> None:
        """What a ``__del__`` may do: take no lock it could wait for (the collector may run it
        in a thread that holds one of ours). Forget ``waiter`` and send ``frames`` if the
        socket is free, else queue them: the reader sends them when nudged, or the keep-alive
        thread within a quarter second."""
        if self._closed or self._pid != os.getpid():
            return
        if self._pending.get(waiter.rid) is waiter:
            self._pending.pop(waiter.rid, None)
        # The socket's lock, if free, is free of this thread too: send now. (Not the reader
        # role's hand-over: that takes _mu; a follower takes the role itself within 50 ms.)
        if self._io.acquire(blocking=False):
            try:
                if not self._closed and try_send(self._sock, frames):
                    return
            finally:
                self._io.release()
        self._outbox.append(frames)
        self._nudge()

    def flush_outbox(self) -> None:
        """Send what :meth:`post_from_finalizer` queued, if nobody reads now."""
        if self._outbox and not self._closed and self._io.acquire(blocking=False):
            try:
                if not self._closed:
                    self._flush()
            finally:
                self._io.release()
                if self._pending:
                    self._pass_reader_role()

    def keep_alive(self) -> None:
        """Renew the daemon's leases on this connection's streams (a ping), and send what
        :meth:`post` left queued when nobody was reading."""
        self._ping_seq += 1
        rid = b"\xffkeep" + self._ping_seq.to_bytes(8, "big")
        self.post(p.request_frames(rid, p.PING, None, None, None))
        self.flush_outbox()
