"""One DEALER socket to one daemon endpoint, shareable by many threads.

ZeroMQ sockets are not thread-safe, and handing every call to an I/O thread costs a thread
wake-up each way. So the calling thread does the I/O itself when nobody else is: it sends its
request and reads replies until its own arrives ("reader"). Other threads meanwhile queue their
requests in an outbox and nudge the reader through a pipe; the reader sends them, and hands
every reply it reads to the waiter whose request id it carries. When the reader's own reply has
come it passes the role to a waiting thread. Replies to ids nobody waits for (calls that timed
out) are dropped, so a timeout never poisons the next call.

A socket monitor reports a dropped connection (the daemon died): every waiting call then fails
with :class:`~.errors.ConnectionLost` instead of waiting for ever, and the channel is marked
broken so that its proxy resolves the name again. A call without a timeout also pings the
daemon when nothing has arrived for ``heartbeat`` seconds, and fails when two heartbeats pass
unanswered (a hung or unreachable daemon).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Deque, Dict, List, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as p
from .errors import CallTimeout, ConnectionLost, ProtocolError

HEARTBEAT = 5.0

_context_lock = threading.Lock()
_context: Optional[zmq.Context] = None
_context_pid = 0


def context() -> zmq.Context:
    """This process's ZeroMQ context, made anew after a fork (zmq is not fork-safe)."""
    global _context, _context_pid
    with _context_lock:
        if _context is None or _context_pid != os.getpid():
            _context = zmq.Context()
            _context_pid = os.getpid()
        return _context


class _Waiter:
    __slots__ = ("event", "reply", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Optional[p.Reply] = None
        self.error: Optional[BaseException] = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class Channel:
    """A DEALER connected to ``endpoint``; ``request`` may be called from any thread."""

    def __init__(
        self,
        endpoint: str,
        curve: Optional[Dict[str, bytes]] = None,
        heartbeat: float = HEARTBEAT,
        max_message: int = p.MAX_MESSAGE,
    ) -> None:
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        if curve:
            sock.curve_secretkey = curve["secret"]
            sock.curve_publickey = curve["public"]
            sock.curve_serverkey = curve["server"]
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )
        sock.connect(endpoint)
        self._sock = sock
        self._io = threading.Lock()
        self._mu = threading.Lock()
        self._pending: Dict[bytes, _Waiter] = {}
        self._outbox: Deque[List[bytes]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self.broken: Optional[BaseException] = None
        self._closed = False
        self._ping_seq = 0

    # ------------------------------------------------------------------ public

    def request(self, frames: List[bytes], rid: bytes, timeout: Optional[float]) -> p.Reply:
        """Send ``frames`` and wait for the reply with id ``rid``."""
        waiter = _Waiter()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mu:
            if self.broken is not None:
                raise self.broken
            self._pending[rid] = waiter
            self._outbox.append(frames)
        try:
            while not waiter.done:
                if self._io.acquire(blocking=False):
                    try:
                        self._read_until(waiter, deadline)
                    finally:
                        self._io.release()
                        self._pass_reader_role(waiter)
                    break
                self._nudge()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                waiter.event.wait(remaining)
                waiter.event.clear()
        finally:
            with self._mu:
                self._pending.pop(rid, None)
        if waiter.error is not None:
            raise waiter.error
        if waiter.reply is None:
            raise CallTimeout(f"no reply from {self.endpoint} within {timeout} s")
        return waiter.reply

    def poll_broken(self) -> Optional[BaseException]:
        """Read pending monitor events without waiting; the error if the link dropped."""
        if self.broken is None and self._io.acquire(blocking=False):
            try:
                self._read_monitor()
            finally:
                self._io.release()
        return self.broken

    def close(self) -> None:
        with self._io:
            if self._closed:
                return
            self._closed = True
            self._fail_all(ConnectionLost(f"the connection to {self.endpoint} was closed"))
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._sock.close(0)
            os.close(self._wake_r)
            os.close(self._wake_w)

    # ------------------------------------------------------------------ reader role

    def _nudge(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is already pending) or closed

    def _pass_reader_role(self, waiter: _Waiter) -> None:
        with self._mu:
            for other in self._pending.values():
                if other is not waiter and not other.done:
                    other.event.set()
                    return

    def _flush(self) -> None:
        while True:
            with self._mu:
                if not self._outbox:
                    return
                frames = self._outbox.popleft()
            self._sock.send_multipart(frames, copy=len(frames[-1]) < 65536)

    def _read_until(self, waiter: _Waiter, deadline: Optional[float]) -> None:
        if self._closed:
            raise ConnectionLost(f"the connection to {self.endpoint} was closed")
        self._flush()
        quiet_since = time.monotonic()
        pinged = False
        while not waiter.done:
            now = time.monotonic()
            wait = self.heartbeat if deadline is None else min(self.heartbeat, deadline - now)
            if wait <= 0:
                return
            events = dict(self._poller.poll(max(1, int(wait * 1000))))
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                self._flush()
            if self._monitor in events:
                self._read_monitor()
            if self._sock in events:
                self._read_replies()
                quiet_since, pinged = time.monotonic(), False
            elif not events and deadline is None:
                if time.monotonic() - quiet_since >= 2 * self.heartbeat and pinged:
                    self._fail_all(ConnectionLost(
                        f"the daemon at {self.endpoint} did not answer a ping for "
                        f"{2 * self.heartbeat:.0f} s (hung, stopped or unreachable)"))
                    return
                if not pinged:
                    self._ping_seq += 1
                    rid = b"\xffping" + self._ping_seq.to_bytes(8, "big")
                    self._sock.send_multipart(p.request_frames(rid, p.PING, None, None, None))
                    pinged = True

    def _read_replies(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = p.parse_reply(frames)
            except ProtocolError:
                continue
            with self._mu:
                waiter = self._pending.get(reply.rid)
            if waiter is not None:
                waiter.reply = reply
                waiter.event.set()

    def _read_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_DISCONNECTED:
                self._fail_all(ConnectionLost(f"the daemon at {self.endpoint} went away"))
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self._fail_all(ConnectionLost(
                    f"the daemon at {self.endpoint} refused the connection "
                    "(CURVE authentication failed: is this client's key authorized?)"))

    def _fail_all(self, error: BaseException) -> None:
        with self._mu:
            self.broken = error
            waiters = list(self._pending.values())
        for w in waiters:
            if not w.done:
                w.error = error
                w.event.set()
