"""One DEALER socket to one daemon endpoint, shareable by many threads.

ZeroMQ sockets are not thread-safe, and handing every call to an I/O thread costs a thread
wake-up each way. So the calling thread does the I/O itself when nobody else is: it sends its
request and reads replies until its own arrives ("reader"). Other threads meanwhile queue their
requests in an outbox and nudge the reader through a pipe; the reader sends them, and hands
every reply it reads to the waiter whose request id it carries. When the reader's own reply has
come it passes the role to a waiting thread. Replies to ids nobody waits for (calls that timed
out) are dropped, so a timeout never poisons the next call.

Requests go out only over a connection that is up (``IMMEDIATE``): a request that finds none
waits for one until its deadline and is then withdrawn, never left queued in the socket to run
when the daemon appears after its caller gave up.

A socket monitor reports a dropped connection (the daemon died): every waiting call then fails
with :class:`~.errors.ConnectionLost` instead of waiting for ever, and the channel is marked
broken so that its proxy resolves the name again. A call without a timeout also pings the
daemon when nothing has arrived for ``heartbeat`` seconds, and fails when two heartbeats pass
unanswered (a hung or unreachable daemon).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Deque, Dict, List, Optional

import zmq

from malacoda.client.link import LINK_EVENTS, close_monitored, configure_dealer, context, link_error
from malacoda.client.waiter import Waiter
from malacoda.errors import CallTimeout, ConnectionLost, ProtocolError
from malacoda.wire import codec
from malacoda.wire import protocol as p
from malacoda.wire.frames import (
    COPY_BELOW,
    NOBLOCK,
    RCVMORE,
    get_option,
    recv_frames,
    recv_one,
    recv_rest,
    send_one,
    try_send,
)

HEARTBEAT = 5.0
REPLY_BYTES_PER_ITEM = 64  # a reply decodes into max_message / 64 container items (1 Mi) at most
DIRECT_WAIT = 0.02  # how long a lone caller blocks in a plain receive before it polls
LINK_QUIET = 0.01  # seconds without a reply after which a call first reads the link's news
# (a kill and restart of a Python daemon, new registry entry included, was measured at 88 ms:
# 0.1 s let a call go out on the dead link; nothing restarts within 10 ms)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)

class NotSent(ConnectionLost):
    """The link was found down before the request left: it is safe to send it elsewhere."""


class Channel:
    """A DEALER connected to ``endpoint``; ``request`` may be called from any thread."""

    def __init__(
        self,
        endpoint: str,
        curve: Optional[Dict[str, bytes]] = None,
        heartbeat: float = HEARTBEAT,
        max_message: int = p.MAX_MESSAGE,
        plain: Optional[bytes] = None,
        owner_token: Optional[bytes] = None,
    ) -> None:
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        # What one reply may hold: max_message bytes in all its frames (each frame is refused
        # by ZeroMQ past it, the whole reply here), and container items in proportion, so that
        # a hostile daemon's reply cannot decode into many times its size (a 16 MB reply of
        # empty arrays was 1.1 GiB of Python objects).
        self.max_message = max_message
        self._max_items = max(codec.MAX_REQUEST_ITEMS, max_message // REPLY_BYTES_PER_ITEM)
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, int(DIRECT_WAIT * 1000))
        configure_dealer(sock, endpoint, curve, max_message, plain, owner_token)
        self._client_key = curve["public"].decode() if curve else "<client key>"
        self._curve = curve is not None
        self._monitor = sock.get_monitor_socket(LINK_EVENTS)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError:
            close_monitored(sock, self._monitor)
            raise
        self._sock = sock
        self._io = threading.Lock()
        self._mu = threading.Lock()
        self._pending: Dict[bytes, Waiter] = {}
        self._outbox: Deque[List[bytes]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._polling_out = False  # the poller also watches sock for POLLOUT (a backlog)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self.broken: Optional[BaseException] = None
        self._closed = False
        self._pid = os.getpid()  # in a fork's child the channel is the parent's: never touched
        self._ping_seq = 0
        self._last_heard = 0.0

    # ------------------------------------------------------------------ public

    def request(self, frames: List[bytes], rid: bytes, timeout: Optional[float]) -> p.Reply:
        """Send ``frames`` and wait for the reply with id ``rid``.

        Raises :class:`NotSent` when the link is found down before anything was sent,
        :class:`~.errors.ConnectionLost` when it drops while waiting, and
        :class:`~.errors.CallTimeout` after ``timeout`` seconds.
        """
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if self._io.acquire(blocking=False):
            # Nobody is reading: this thread sends and reads itself, without any hand-off.
            try:
                if self._closed:
                    raise NotSent(f"the connection to {self.endpoint} was closed")
                # Unread link news (the daemon went away since we last heard from it)? Only
                # worth a look after a pause: a restart takes far longer than LINK_QUIET.
                if (now - self._last_heard > LINK_QUIET
                        and self._monitor.getsockopt(_EVENTS) & _POLLIN):
                    self._read_monitor()
                if self.broken is not None:
                    raise NotSent(str(self.broken))
                sock = self._sock
                if len(frames) == 1:  # a small request: one frame (see frames.send_frames)
                    try:
                        send_one(sock, frames[0], NOBLOCK, len(frames[0]) < COPY_BELOW)
                    except zmq.Again:
                        self._send_when_connected(frames, deadline, timeout)
                elif not try_send(sock, frames):
                    self._send_when_connected(frames, deadline, timeout)
                reply = None
                if not self._pending and (deadline is None or deadline - now >= DIRECT_WAIT):
                    reply = self._recv_direct(sock, rid, now)
                if reply is None:
                    reply = self._read_until(rid, deadline, None)
            finally:
                self._io.release()
                if self._pending:
                    self._pass_reader_role()
        else:
            reply = self._wait_as_follower(frames, rid, deadline)
        if reply is None:
            raise CallTimeout(f"no reply from {self.endpoint} within {timeout} s")
        return reply

    def _send_when_connected(self, frames: List[bytes], deadline: Optional[float],
                             timeout: Optional[float]) -> None:
        """Send ``frames`` once the socket takes them: it has no connection yet (``IMMEDIATE``),
        or its send queue is full.

        Raises :class:`~.errors.CallTimeout` when ``deadline`` passes first: the request was
        not sent and never will be. Raises :class:`NotSent` when the link fails, or when a call
        without a deadline finds no connection for two heartbeats; the channel is then broken,
        so that its proxy resolves the name again.
        """
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLOUT)
        poller.register(self._monitor, zmq.POLLIN)
        give_up = deadline if deadline is not None else time.monotonic() + 2 * self.heartbeat
        while True:
            left = give_up - time.monotonic()
            if left <= 0:
                break
            for source, _ in poller.poll(max(1, int(min(left, self.heartbeat) * 1000))):
                if source is self._monitor:
                    self._read_monitor()
                    if self.broken is not None:
                        raise NotSent(str(self.broken))
                elif try_send(self._sock, frames):
                    return
        if deadline is not None:
            raise CallTimeout(f"no connection to {self.endpoint} within {timeout} s: the "
                              "request was not sent")
        gone = (f"no connection to {self.endpoint} for {2 * self.heartbeat:.0f} s (the "
                "daemon is stopped, hung or unreachable)")
        # Others' requests may have gone out before the queue filled: for them the link is
        # lost (a re-send is checked against the daemon's incarnation), ours never left.
        self._fail_all(ConnectionLost(gone))
        raise NotSent(f"{gone}; the request was not sent")

    def poll_broken(self) -> Optional[BaseException]:
        """Read pending monitor events without waiting; the error if the link dropped."""
        if self.broken is None and self._io.acquire(blocking=False):
            try:
                if not self._closed:
                    self._read_monitor()
            finally:
                self._io.release()
                if self._pending:
                    self._pass_reader_role()
        return self.broken

    def close(self) -> None:
        if self._pid != os.getpid():
            self.abandon()
            return
        with self._io:
            if self._closed:
                return
            self._closed = True
            self._fail_all(ConnectionLost(f"the connection to {self.endpoint} was closed"))
            close_monitored(self._sock, self._monitor)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def abandon(self) -> None:
        """In a fork's child: never touch this channel again, not even to close it. Its ZeroMQ
        sockets and locks belong to the parent (a lock may have been held at the fork); only
        the child's copies of the wake-up pipe are closed."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        # Dropped without close(): close in the order close() uses. Left to the garbage
        # collector, the monitor socket may go first, and a monitored socket closed after its
        # monitor was seen to wedge the process's ZeroMQ context (no socket of it sent again).
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ reader role

    def _wait_as_follower(self, frames: List[bytes], rid: bytes,
                          deadline: Optional[float]) -> Optional[p.Reply]:
        """Another thread reads: queue the request for it, wait, and take over when it is done."""
        waiter = Waiter()
        with self._mu:
            if self.broken is not None:
                raise NotSent(str(self.broken))
            self._pending[rid] = waiter
            first = not self._outbox
            self._outbox.append(frames)
        try:
            if first:  # the reader sends the whole outbox when woken: one nudge serves all
                self._nudge()
            while not waiter.done:
                if self._io.acquire(blocking=False):
                    try:
                        if self._closed:
                            raise ConnectionLost(f"the connection to {self.endpoint} was closed")
                        self._flush()
                        if not waiter.done:
                            waiter.reply = self._read_until(rid, deadline, waiter)
                    except ConnectionLost as lost:  # as the reader: the error is ours too
                        waiter.error = lost
                    finally:
                        self._io.release()
                        self._pass_reader_role(waiter)
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                # Bounded: a reader role released between our try and our sleep is taken
                # on the next round even if its wake-up went to someone else.
                waiter.sleep(0.05 if remaining is None else min(remaining, 0.05))
        finally:
            with self._mu:
                self._pending.pop(rid, None)
                try:
                    self._outbox.remove(frames)  # still unsent: withdrawn, it will never run
                    unsent = True
                except ValueError:
                    unsent = False
        if waiter.error is not None:
            if unsent and isinstance(waiter.error, ConnectionLost):
                raise NotSent(str(waiter.error))  # it never left: safe to send elsewhere
            raise waiter.error
        if waiter.reply is None and unsent:
            raise CallTimeout(f"no connection to {self.endpoint} within the call's timeout: "
                              "the request was not sent")
        return waiter.reply

    def _nudge(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is already pending) or closed

    def _pass_reader_role(self, me: Optional[Waiter] = None) -> None:
        with self._mu:
            for other in self._pending.values():
                if not other.done and other is not me and other.wants_role:
                    other.wake()
                    return

    def _flush(self) -> bool:
        """Send what the other threads queued; False if some must wait for the connection."""
        while True:
            with self._mu:
                if not self._outbox:
                    return True
                frames = self._outbox[0]
                # Sent under the lock, so that a waiter that gives up either finds its request
                # still queued (and withdraws it) or knows it went out.
                if not try_send(self._sock, frames):
                    return False
                self._outbox.popleft()

    def _read_until(self, rid: bytes, deadline: Optional[float],
                    waiter: Optional[Waiter]) -> Optional[p.Reply]:
        """As the reader: send what others queue, deliver their replies, return ours.

        None when ``deadline`` passes first; raises ConnectionLost when the link drops.
        """
        sock, monitor = self._sock, self._monitor
        poller = self._poller
        poll = poller.poll
        quiet_since = time.monotonic()
        pinged = False
        while True:
            if waiter is not None and waiter.done:
                return waiter.reply
            if self._polling_out != bool(self._outbox):
                # Requests queued that the socket did not take yet (no link): watch for it.
                self._polling_out = not self._polling_out
                poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if self._polling_out else 0))
            if deadline is None:
                wait = self.heartbeat
            else:
                wait = min(self.heartbeat, deadline - time.monotonic())
                if wait <= 0:
                    return None
            events = poll(max(1, int(wait * 1000)))
            if not events:
                if deadline is None:
                    if pinged and time.monotonic() - quiet_since >= 2 * self.heartbeat:
                        self._fail_all(ConnectionLost(
                            f"the daemon at {self.endpoint} did not answer a ping for "
                            f"{2 * self.heartbeat:.0f} s (hung, stopped or unreachable)"))
                        raise self.broken  # type: ignore[misc]
                    if not pinged:
                        self._ping()
                        pinged = True
                continue
            for source, what in events:
                if source is sock:
                    if what & zmq.POLLOUT:
                        self._flush()
                    while what & zmq.POLLIN:  # every reply that is in, with one poll
                        try:
                            reply = self._read_reply(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        quiet_since, pinged = self._last_heard, False
                        if reply is None:
                            continue
                        if reply.rid == rid:
                            return reply
                        self._deliver(reply)
                elif source is monitor:
                    self._read_monitor()
                    if self.broken is not None:
                        raise self.broken
                else:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self._flush()

    def _recv_direct(self, sock: zmq.Socket, rid: bytes, started: float) -> Optional[p.Reply]:
        """The common case, cheaply: a blocking receive of up to ``DIRECT_WAIT`` seconds.

        A poll of the socket, the link monitor and the wake-up pipe costs several system
        calls; a plain receive one. None when the reply is not in by then (a slow call, other
        threads waiting): the full loop takes over. (What :meth:`_read_reply` does, inline:
        this runs once per call.)
        """
        while True:
            try:
                head = recv_one(sock, 0)  # RCVTIMEO is DIRECT_WAIT
            except zmq.Again:
                return None
            frames = recv_rest(sock, head) if get_option(sock, RCVMORE) else [head]
            self._last_heard = heard = time.monotonic()
            try:
                reply = p.parse_reply(frames, self.max_message, self._max_items)
            except ProtocolError:
                reply = None
            if reply is not None:
                if reply.rid == rid:
                    return reply
                self._deliver(reply)  # another thread's, if it began waiting meanwhile
            if self._pending or heard - started > DIRECT_WAIT:
                return None

    def _deliver(self, reply: p.Reply) -> None:
        """Hand ``reply`` to the thread waiting for it; nobody waits for a timed-out call's."""
        with self._mu:
            other = self._pending.get(reply.rid)
        if other is not None:
            other.reply = reply
            other.wake()

    def _read_reply(self, flags: int = 0) -> Optional[p.Reply]:
        """One message from the daemon, as a reply (None if it is not one); notes the time.

        Raises ``zmq.Again`` when none came (``NOBLOCK``, or the socket's RCVTIMEO passed).
        """
        frames = recv_frames(self._sock, flags)
        self._last_heard = time.monotonic()
        try:
            return p.parse_reply(frames, self.max_message, self._max_items)
        except ProtocolError:
            return None

    def _ping(self) -> None:
        self._ping_seq += 1
        rid = b"\xffping" + self._ping_seq.to_bytes(8, "big")
        try_send(self._sock, p.request_frames(rid, p.PING, None, None, None))  # not if no link

    def _read_monitor(self) -> None:
        while True:
            try:
                event = recv_frames(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            lost = link_error(event, self.endpoint, self._curve, self._client_key)
            if lost is not None:
                self._fail_all(lost)

    def _fail_all(self, error: BaseException) -> None:
        with self._mu:
            if self.broken is None:  # the first cause is the cause (auth failure, then disconnect)
                self.broken = error
            waiters = list(self._pending.values())
        for w in waiters:
            w.fail(error)
