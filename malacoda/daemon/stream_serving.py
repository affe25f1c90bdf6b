"""The stream half of the daemon's socket (:class:`~.server.Server`, of which
:class:`StreamServing` is a base class).

A call whose result is an iterator opens a stream (:mod:`malacoda.daemon.streams`): its
``credit`` and ``cancel`` messages are handled by the socket's owner, like ``ping``; its
*turns* (producing items) wait for a worker in a queue of their own, taken only after waiting
calls and by at most ``workers - 1`` workers at once; its items are sent by the socket's owner
when a doorbell (an empty frame on the inproc socket) rings. A connection silent for the lease
loses its streams: the socket's owner looks while any stream is open.

The server's lock (``_mu``) guards the turn queue with its own counts of running calls, so that
a free worker weighs a waiting call against a waiting turn in one look.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Optional

import zmq

from malacoda.daemon.streams import Stream, StreamHub
from malacoda.wire import protocol as p
from malacoda.wire.frames import send_routed


class StreamServing:
    """What the server does for streams: the hub, the turn queue and the doorbell."""

    # The server's own, set by Server.__init__ before _init_streams:
    workers: int
    _mu: threading.Lock
    _cv: threading.Condition
    _running: int
    _queue: Deque[Any]

    def _init_streams(self, incarnation: str, workers: int, window: int, lease: float,
                      max_streams: int) -> None:
        # Streams (see malacoda.daemon.streams): their turns wait here for a worker, after calls.
        self.streams = StreamHub(incarnation, window=window, lease=lease,
                                 max_streams=max_streams)
        self.streams.schedule = self._schedule_turn
        self.streams.ring = self._ring
        self._peers = self.streams.heard  # the same dict: not empty while streams are open
        self._turns: Deque[Stream] = collections.deque()
        self._turns_running = 0
        # Stream turns hold at most this many workers: one is always left for calls.
        self.turn_slots = max(1, workers - 1)
        self._doorbell: Optional[zmq.Socket] = None
        self._doorbell_lock = threading.Lock()
        self._next_expiry = 0.0

    def _open_doorbell(self, ctx: zmq.Context, inproc: str) -> None:
        self._doorbell = ctx.socket(zmq.PUSH)
        self._doorbell.setsockopt(zmq.LINGER, 0)
        self._doorbell.connect(inproc)

    def _stream_message(self, router: zmq.Socket, identity: bytes, request: p.Request) -> None:
        """A ``credit`` or ``cancel`` (by the socket's owner: no worker, and unanswered)."""
        if request.op == p.CREDIT:
            refused = self.streams.credit(identity, request.rid, request.body)
            if refused is not None:
                send_routed(router, identity, refused)
        else:
            self.streams.cancel(identity, request.rid)

    def _expire_streams(self) -> None:
        """By the socket's owner while streams are open: clients silent for the lease lose
        their streams (looked at every quarter lease, at most every second)."""
        now = time.monotonic()
        if now > self._next_expiry:
            self._next_expiry = now + min(1.0, self.streams.lease / 4)
            self.streams.expire(now)

    def _schedule_turn(self, stream: Stream) -> None:
        """A stream has credit (or was cancelled): queue a turn for a worker (the hub's lock
        is held; this takes the server's)."""
        with self._mu:
            self._turns.append(stream)
            self._cv.notify()

    def _ring(self) -> None:
        """Items wait to be sent: wake the socket's owner (any thread; the hub's lock held)."""
        with self._doorbell_lock:
            if self._doorbell is not None:
                self._doorbell.send(b"")

    def _turn(self, stream: Stream) -> None:
        again = False
        try:
            again = self.streams.turn(stream)
        finally:
            with self._mu:
                self._running -= 1
                self._turns_running -= 1
                if again:
                    self._turns.append(stream)
                if (self._queue or self._turns) and self._running < self.workers:
                    self._cv.notify()
