"""The daemon's socket: a ROUTER served by a leader/followers thread pool.

Handing every request from a socket thread to a worker costs a thread wake-up per call (about
1.6x a raw REQ/REP round trip on a 2-core machine), so the thread that receives a request runs
it itself ("leader"). A *standby* thread watches the leader: when the leader's call is still
running one tick later (a slow call), the standby takes over the socket — which sits idle while
user code runs — and goes on receiving. The standby looks at its own pace, never woken per call:
every ``TICK_CALM`` while calls come and go, every ``TICK_ACTIVE`` once it has seen one
running. The old leader, once its call returns, finds that it no longer owns the socket and
sends its reply through an inproc PUSH socket to whoever does (:mod:`~.outbox`).

At most ``workers`` user calls run at once. A request that finds them all busy waits in a
queue of ``queue`` entries (and ``queue_bytes`` bytes), and one that finds the queue full gets a
BUSY reply at once: a flood cannot grow memory without bound. A re-sent request is answered
from a :class:`~.replycache.ReplyCache` instead of running again. ``ping`` is answered by the
socket's owner without a worker. A request whose caller's timeout has passed before it could
start is dropped unanswered.

A message whose frames together exceed ``max_message`` is refused whole (BAD_REQUEST, nothing
decoded); ZeroMQ itself bounds only each frame. What ZeroMQ holds before a message reaches us
(unfinished messages, and the connections themselves) is watched by a
:class:`~.guard.ConnectionGuard`: at most ``max_connections`` connections, each holding at
most ``max_message`` + max(256 KiB, ``max_message`` / 8) of messages not read yet (the server
counts what it reads from each, :class:`~.peers.PeerBook`), all of them together and the
memory they hold within ``queue_bytes + (workers + 2) * max_message`` (at least 256 MiB)
beyond the daemon's own.

A call whose result is an iterator opens a stream: see :mod:`~.stream_serving`. A call of an
``async def`` method: see :mod:`~.async_calls`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from types import AsyncGeneratorType, CoroutineType
from typing import Callable, Deque, List, Optional, Tuple

import zmq

from malacoda.daemon.async_calls import AsyncCalls
from malacoda.daemon.dispatch import Dispatcher
from malacoda.daemon.guard import (
    EVENTS,
    MAX_CONNECTIONS,
    MIN_HEADROOM,
    ConnectionGuard,
    fds_for_connections,
)
from malacoda.daemon.outbox import Outbox
from malacoda.daemon.peers import PeerBook
from malacoda.daemon.replycache import ReplyCache
from malacoda.daemon.stream_serving import StreamServing
from malacoda.daemon.streams import LEASE, MAX_STREAMS, WINDOW, Stream, is_stream
from malacoda.errors import ProtocolError, UnsupportedVersion
from malacoda.wire import protocol as p
from malacoda.wire.frames import send_frames, send_routed

log = logging.getLogger(__name__)

TICK_ACTIVE = 0.002  # how long a call seen running may go on holding the socket
TICK_CALM = 0.01  # the standby's pace while calls come and go, each found done when it looks
TICK_IDLE = 0.1  # the standby's pace while no call comes (a new call wakes it)
# (Looking every 2 ms whatever the calls made a small call's p50 1.2x slower on 2 CPUs: the
# wake-ups cost the process its CPU placement. A slow call is taken over within about
# TICK_CALM + TICK_ACTIVE.)

_Item = Tuple[bytes, p.Request, float]
#: What _run returns for a call handed to the event loop: its reply comes later.
_DEFERRED: List[bytes] = []
#: The common results, looked up before asking whether a result is an iterator (it never is).
_NEVER_STREAMS = frozenset({str, int, float, bool, type(None), bytes, list, dict, tuple})
_STREAM_OPS = p.STREAM_OPS
_CALL, _PING = p.CALL, p.PING


class Server(Outbox, StreamServing, AsyncCalls):
    """Serves ``dispatcher`` on a ROUTER socket bound to ``address:port`` (0: the kernel picks).

    ``configure(socket)`` runs before the bind (CURVE, socket options); a callable it returns
    runs at :meth:`close`, before the socket's context ends (to stop a ZAP authenticator).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        address: str = "127.0.0.1",
        port: int = 0,
        workers: int = 8,
        queue: int = 64,
        max_message: int = p.MAX_MESSAGE,
        queue_bytes: Optional[int] = None,
        configure: Optional[Callable[[zmq.Socket], object]] = None,
        max_connections: int = MAX_CONNECTIONS,
        max_streams: int = MAX_STREAMS,
        stream_lease: float = LEASE,
        stream_window: int = WINDOW,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.dispatcher = dispatcher
        self.address = address
        self.requested_port = port
        self.workers = workers
        self.queue_size = max(0, queue)
        # The bytes of queued requests, beyond the first: default twice the largest message.
        self.queue_bytes = 2 * max_message if queue_bytes is None else queue_bytes
        self._queued_bytes = 0
        self.max_message = max_message
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections  # the cap in force: see start()
        self._monitor: Optional[zmq.Socket] = None
        self.guard = ConnectionGuard(
            max_connections, max(MIN_HEADROOM, self.queue_bytes + (workers + 2) * max_message))
        # What each connection may hold of requests not delivered yet: one max_message, or
        # with a queue's worth of complete ones behind while the daemon is reading them.
        self.peers = self.guard.peers = PeerBook(max_message, self.queue_bytes,
                                                 self.guard.headroom)
        self._configure = configure
        self._cleanup: Optional[Callable[[], object]] = None
        self.port: Optional[int] = None
        self.endpoint = ""

        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)
        self._leader: Optional[int] = None
        self._standby: Optional[int] = None
        self._leader_busy = False
        self._busy_seq = 0
        self._standby_dozing = False
        # Replies on their way through the PULL socket (counted by their senders before
        # _running drops): while any are, the leader polls both sockets.
        self._late = 0
        self._running = 0
        self._queue: Deque[_Item] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._threads: List[threading.Thread] = []
        self._ctx: Optional[zmq.Context] = None
        self._router: Optional[zmq.Socket] = None
        self._pull: Optional[zmq.Socket] = None
        self._init_outbox()
        self._init_async(type(dispatcher.target))
        # A re-sent call is answered from here, not run twice.
        self.replies = ReplyCache(incarnation=dispatcher.incarnation)
        self._init_streams(dispatcher.incarnation, workers, stream_window, stream_lease,
                           max_streams)
        self.owner_prefix = None  # (the property below: the streams' too)

    @property
    def owner_prefix(self) -> Optional[bytes]:
        """Set for an ``open`` daemon: only callers whose routing id starts with it (its owner)
        get remote tracebacks, of calls and of streams; others get the exception's type and
        message alone."""
        return self.streams.owner_prefix

    @owner_prefix.setter
    def owner_prefix(self, prefix: Optional[bytes]) -> None:
        self.streams.owner_prefix = prefix

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises ``zmq.ZMQError`` on bind."""
        self.max_connections = self.guard.max_connections = min(self.max_connections,
                                                                fds_for_connections())
        ctx = self._ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        router.setsockopt(zmq.RCVHWM, 10000)
        router.setsockopt(zmq.RCVTIMEO, int(TICK_IDLE * 1000))  # the leader's idle wake-up
        if self._configure is not None:
            cleanup = self._configure(router)
            self._cleanup = cleanup if callable(cleanup) else None
        if ":" in self.address:  # an IPv6 address: ZeroMQ binds IPv4 only unless told
            router.setsockopt(zmq.IPV6, 1)
        try:
            host = f"[{self.address}]" if ":" in self.address else self.address
            if self.requested_port:
                router.bind(f"tcp://{host}:{self.requested_port}")
            else:
                router.bind(f"tcp://{host}:0")
        except zmq.ZMQError:
            router.close(0)
            self._run_cleanup()
            ctx.term()
            self._ctx = None
            raise
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._router = router
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(self._inproc)
        self._open_doorbell(ctx, self._inproc)
        self._monitor = router.get_monitor_socket(EVENTS)
        self.guard.port = self.peers.port = self.port
        watcher = threading.Thread(target=self.guard.watch,
                                   args=(self._monitor, lambda: self._stopping),
                                   name="malacoda-connections", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        for i in range(self.workers + 2):
            t = threading.Thread(target=self._thread_main, name=f"malacoda-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._start_loop_if_async(type(self.dispatcher.target))
        return self.port

    def running_calls(self) -> int:
        with self._mu:
            return self._running + len(self._queue) + self._async_running

    def close(self, grace: float = 5.0) -> None:
        """Let calls in progress finish (up to ``grace`` s), deliver their replies, then stop.
        Streams are cancelled first (their generators closed: a ``finally:`` runs); their
        clients see the daemon go away (ConnectionLost), never a silent end."""
        deadline = time.monotonic() + grace
        for stream in self.streams.close_all():
            self.streams.finish_cancelled(stream)
        while self.running_calls() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._mu:
            self._stopping = True
            self._cv.notify_all()
        self._wake.set()
        for t in self._threads:
            # The connection guard is never stuck in a call: wait for it (it looks at its stop
            # flag every IDLE_SAMPLE at least) before its monitor socket is closed below.
            least = 1.0 if t.name == "malacoda-connections" else 0.1
            t.join(timeout=max(least, deadline - time.monotonic()))
        self.calls.close()  # async def calls still running are cancelled (and answered)
        if self._monitor is not None and self._router is not None:
            # The only safe order: monitoring off, the monitor's socket, then the socket.
            try:
                self._router.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._monitor = None
        if self._router is not None:
            self._router.close(linger=500)
        if self._pull is not None:
            self._pull.close(0)
        if self._doorbell is not None:
            self._doorbell.close(0)
        self._run_cleanup()
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = self._router = self._pull = self._doorbell = None
        if not any(t.is_alive() for t in self._threads if t.name == "malacoda-connections"):
            self.peers.close()  # (a guard still running polls its epoll set: left to the GC)

    def _run_cleanup(self) -> None:
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    # ------------------------------------------------------------------ roles

    def _thread_main(self) -> None:
        me = threading.get_ident()
        try:
            while True:
                item: Optional[_Item] = None
                stream: Optional[Stream] = None
                with self._mu:
                    if self._stopping:
                        return
                    if self._leader is None:
                        self._leader = me
                        role = "lead"
                    elif self._queue and self._running < self.workers:
                        item = self._queue.popleft()
                        self._queued_bytes -= item[1].size
                        self._running += 1
                        role = "work"
                    elif (self._turns and self._running < self.workers
                          and self._turns_running < self.turn_slots):
                        stream = self._turns.popleft()
                        self._running += 1
                        self._turns_running += 1
                        role = "turn"
                    elif self._standby is None:
                        self._standby = me
                        role = "standby"
                    else:
                        self._cv.wait(1.0)
                        continue
                try:
                    if role == "lead":
                        self._lead(me)
                    elif role == "work":
                        assert item is not None
                        self._work(item)
                    elif role == "turn":
                        assert stream is not None
                        self._turn(stream)
                    elif self._stand_by(me):
                        self._lead(me)
                except BaseException:  # a bug of ours: the socket must not be left to nobody
                    log.exception("malacoda server thread failed; it goes on serving")
                    with self._mu:
                        if self._leader == me:
                            self._leader, self._leader_busy = None, False
                        if self._standby == me:
                            self._standby = None
                        self._cv.notify_all()
        finally:
            self._close_push()

    def _stand_by(self, me: int) -> bool:
        """Watch the leader; True once this thread has taken over the socket.

        The standby looks every ``TICK_CALM`` while calls keep arriving, every ``TICK_ACTIVE``
        after it found one running, and every ``TICK_IDLE`` while none comes; the leader wakes it
        only when it was dozing, so that a busy daemon does not pay a thread wake-up per call.
        """
        seen = -1
        last_seq = -1
        while True:
            with self._mu:
                if self._stopping:
                    self._standby = None
                    return False
                if self._leader is None:
                    self._leader, self._standby = me, None
                    self._cv.notify()
                    return True
                if self._leader_busy and self._busy_seq == seen:
                    # The leader's call outlived a tick: the socket is ours now.
                    self._leader, self._standby = me, None
                    self._leader_busy = False
                    self._standby_dozing = False
                    self._cv.notify()  # an idle thread becomes the next standby
                    return True
                busy = self._leader_busy
                seen = self._busy_seq if busy else -1
                flowing = self._busy_seq != last_seq
                last_seq = self._busy_seq
                self._standby_dozing = not (busy or flowing)
                self._wake.clear()
            self._wake.wait(TICK_ACTIVE if busy else TICK_CALM if flowing else TICK_IDLE)

    def _lead(self, me: int) -> None:
        router, pull = self._router, self._pull
        assert router is not None and pull is not None
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        poll = poller.poll
        recv = self.peers.recv  # frames.recv_routed, counting what each connection brought
        while not self._stopping:
            # Read in this order: a worker takes a queued request and counts it running in one
            # step, and counts its reply late before it stops counting it running.
            if not self._queue and not self._running and not self._late and not self._peers:
                # Nothing waits or runs elsewhere, so no reply can come through the PULL
                # socket: a plain blocking receive (RCVTIMEO) costs fewer system calls than a poll.
                try:
                    frames = recv(router)
                except zmq.Again:
                    continue
                if not self._incoming(me, router, frames):
                    return  # lost the socket while running a call
                continue
            if self._peers:
                self._expire_streams()
            for source, _ in poll(100):
                if source is router:
                    try:
                        frames = recv(router, zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    if not self._incoming(me, router, frames):
                        return  # lost the socket while running a call
                else:
                    self._forward(router, pull)
        with self._mu:
            self._leader = None
        self._forward(router, pull)

    # ------------------------------------------------------------------ requests

    def _incoming(self, me: int, router: zmq.Socket, frames: List[bytes]) -> bool:
        """Handle one received message; False when this thread lost the socket meanwhile."""
        identity = frames[0]
        if len(frames) > 2 and sum(map(len, frames)) - len(identity) > self.max_message:
            size = sum(map(len, frames)) - len(identity)
            rid = p.peek_request_id(frames[1:])
            del frames[1:]  # not held a moment longer
            error = ProtocolError(f"a request of {size} bytes in its frames together: more than "
                                  f"this daemon reads (max_message {self.max_message} bytes)")
            send_routed(router, identity, self._reply(rid, p.BAD_REQUEST, p.error_body(error)))
            return True
        try:
            request = p.parse_request(frames[1:])
        except ProtocolError as exc:
            status = p.BAD_VERSION if isinstance(exc, UnsupportedVersion) else p.BAD_REQUEST
            rid = p.peek_request_id(frames[1:])
            send_routed(router, identity, self._reply(rid, status, p.error_body(exc)))
            return True
        if self._peers:  # (the connections with streams open)
            self.streams.seen(identity)  # its streams' lease starts again
        op = request.op
        if op != _CALL:  # one look for the common case
            if op == _PING:
                send_routed(router, identity, self._reply(request.rid, p.OK, "pong"))
                return True
            if op in _STREAM_OPS:  # credit and cancel: no worker, and unanswered
                self._stream_message(router, identity, request)
                return True
        if request.buffers:  # their hash, for the reply cache's key: not under the lock
            self.replies.prepare(request)
        mu = self._mu
        with mu:  # the reply cache is guarded by the same lock
            seen = self.replies.begin(request, identity)
            inline = seen is None and self._running < self.workers and not self._queue
            if inline:
                self._running += 1
                self._leader_busy = True
                self._busy_seq += 1
                if self._standby_dozing:  # it sleeps its idle tick: make it watch this call
                    self._standby_dozing = False
                    self._wake.set()
            elif seen is None:
                queued = len(self._queue) < self.queue_size and (
                    not self._queue or self._queued_bytes + request.size <= self.queue_bytes)
                if queued:
                    self._queue.append((identity, request, time.monotonic()))
                    self._queued_bytes += request.size
                    self._cv.notify()
                else:
                    self.replies.abandon(request)
        if not inline:
            if seen is not None:  # a re-sent request: answered (or to be), not run again
                for message in seen:
                    send_frames(router, message)
            elif not queued:
                busy = RuntimeError(f"daemon busy: {self.workers} workers and a queue of "
                                    f"{self.queue_size} are full; try again")
                send_routed(router, identity,
                            self._reply(request.rid, p.BUSY, p.error_body(busy)))
            return True
        # Run it here, now: it has waited for nothing, so its caller's deadline has not passed.
        reply = None
        try:
            reply = self._run(request, identity)
        finally:
            with mu:
                deferred = reply is _DEFERRED  # on the event loop: answered from there
                # copies of it, sent meanwhile
                resent = [] if deferred else self.replies.finish(request, reply)
                self._running -= 1
                still_leader = self._leader == me
                if still_leader:
                    self._leader_busy = False  # (after a take-over the flag is the new leader's)
                elif not deferred:
                    # counted before the leader can see _running drop
                    self._late += (reply is not None) + len(resent)
                if (self._queue or self._turns) and self._running < self.workers:
                    self._cv.notify()
        if deferred:
            return still_leader
        if still_leader:
            send_routed(router, identity, reply)
            for message in resent:
                send_frames(router, message)
            return True
        push = self._push()
        send_frames(push, [identity, *reply])
        for message in resent:
            send_frames(push, message)
        return False

    def _work(self, item: _Item) -> None:
        identity, request, received = item
        reply = None
        resent: List[List[bytes]] = []
        try:
            if (request.timeout_ms is not None
                    and (time.monotonic() - received) * 1000.0 > request.timeout_ms):
                log.debug("dropping %s %r: its caller gave up", request.op, request.name)
            else:
                reply = self._run(request, identity)
        finally:
            with self._mu:
                self._running -= 1
                if reply is not _DEFERRED:
                    resent = self.replies.finish(request, reply)
                    self._late += len(resent) + (reply is not None)
                if self._turns and self._running < self.workers:
                    self._cv.notify()
        if reply is _DEFERRED:
            return
        push = self._push()
        if reply is not None:
            send_frames(push, [identity, *reply])
        for message in resent:
            send_frames(push, message)

    def _run(self, request: p.Request, identity: bytes = b"") -> List[bytes]:
        """Run ``request``; its reply frames, or ``_DEFERRED`` when it is a call of an
        ``async def`` method, handed to the event loop, which sends its reply."""
        status, body = self.dispatcher.handle(request)
        if status == 0 and type(body) not in _NEVER_STREAMS and request.op == _CALL:
            if type(body) is CoroutineType:  # an async def method: run on the daemon's loop
                if self._defer(request, identity, body):
                    return _DEFERRED
                status, body = self._refused(body)
            elif is_stream(body):
                return self.streams.open(identity, request.rid, body)
            elif type(body) is AsyncGeneratorType:  # produced on the daemon's event loop
                return self._open_async_stream(identity, request.rid, body)
        return self._reply_to(request, identity, status, body)
