"""The daemon's side of streams: methods that yield, and the events of publish/subscribe/watch.

A call whose result is an iterator opens a :class:`Stream` (docs/protocol.md, "Streams"). It
starts with no credit; each ``credit`` the client sends lets the daemon produce that many more
items, so it never runs more than the client's window ahead, and never holds more than
``window`` items of one stream. Who produces:

- an **iterator** (a generator method's result, or any object with ``__next__``) runs the
  daemon's code, so it is driven in *turns* on the server's workers: a turn produces up to the
  stream's credit, or for :data:`TURN_SLICE` seconds, then gives its worker back. The server
  counts a turn as one running call and lets turns hold at most ``workers - 1`` workers, and a
  free worker takes a waiting call before a waiting turn: streams cannot starve calls. Any
  iterator will do (an adapter can make one of an async generator).
- an **event source** (:class:`~.subscriptions.EventSource`: what ``subscribe`` and ``watch`` return) is fed
  by ``publish`` and attribute writes, in whatever thread makes them; it needs no worker.

Items are encoded where they are produced and queued on their stream; the server's socket
owner sends them (:meth:`StreamHub.drain`) when it is rung — once when a stream's queue goes
from empty to not empty, so a fast producer's items travel many to a reply while the previous
batch goes out, and a slow producer's items leave one by one at once.

Bounds (a hostile client must not grow the daemon): ``max_streams`` open streams, at most
:data:`MAX_PER_PEER` per connection; per stream ``window`` items and :data:`MAX_QUEUED_BYTES`
queued; per subscription :data:`~.subscriptions.EVENT_QUEUE` events or
:data:`~.subscriptions.EVENT_BYTES` (the oldest are dropped and counted as missed); a
connection silent for the lease loses its streams.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from malacoda.daemon.subscriptions import EventSource, Subscriptions
from malacoda.errors import ProtocolError
from malacoda.wire import protocol as p
from malacoda.wire.codec import decode, encode_item

log = logging.getLogger(__name__)

WINDOW = 1024  # the most credit one stream keeps (items produced ahead of its client)
LEASE = 10.0  # seconds a connection may be silent before its streams are closed
MAX_STREAMS = 1024  # open streams in one daemon
MAX_PER_PEER = 64  # open streams of one connection
TURN_SLICE = 0.02  # seconds one turn of a stream may hold its worker
MAX_BATCH = 64 << 10  # bytes of items in one ITEMS reply
MAX_QUEUED_BYTES = 1 << 20  # bytes of produced, unsent items of one stream: then it waits

Key = Tuple[bytes, bytes]  # (connection's routing id, stream id)


class Stream:
    """One open stream: its source, credit and the encoded items not sent yet.

    The producer's path takes no lock per item (CPython's GIL makes each ``deque.append``,
    attribute read and write atomic): ``produced`` and ``bytes_in`` have one writer (the
    producer), ``granted``, ``sent`` and ``bytes_out`` another (the socket's owner, or ``credit``
    under the hub's lock). The moves between running and parked take the hub's lock, so that a
    credit arriving as the producer parks is never lost.
    """

    __slots__ = ("key", "source", "events", "granted", "produced", "sent", "queue",
                 "bytes_in", "bytes_out", "dirty", "final", "scheduled", "cancelled",
                 "finished")

    def __init__(self, key: Key, source: Any) -> None:
        self.key = key
        self.source = source
        self.events: Optional[EventSource] = source if isinstance(source, EventSource) else None
        self.granted = 0  # items granted in all (credit)
        self.produced = 0  # items produced in all: granted - produced is the credit left
        self.sent = 0  # items taken off the queue to be sent (the index of the next batch)
        self.queue: Deque[bytes] = collections.deque()  # encoded items not sent yet
        self.bytes_in = 0
        self.bytes_out = 0
        self.dirty = False  # in the hub's list of streams with something to send
        self.final: Optional[List[bytes]] = None  # END or ERROR, once produced
        self.scheduled = False  # in the turn queue or in a turn (iterators only)
        self.cancelled = False
        self.finished = False  # the source is closed (nothing more will be produced)

    def can_produce(self) -> bool:
        return (self.granted > self.produced
                and self.bytes_in - self.bytes_out <= MAX_QUEUED_BYTES)


class StreamHub(Subscriptions):
    """Every open stream of one daemon. ``schedule(stream)`` queues a turn on a worker;
    ``ring()`` tells the socket's owner that items wait (it then calls :meth:`drain`)."""

    def __init__(self, incarnation: str, window: int = WINDOW, lease: float = LEASE,
                 max_streams: int = MAX_STREAMS, max_per_peer: int = MAX_PER_PEER) -> None:
        self.incarnation = incarnation
        self.window = window
        self.lease = lease
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self.lock = threading.Lock()
        Subscriptions.__init__(self)  # topics, watchers, on_watch_change
        self.streams: Dict[Key, Stream] = {}
        self.per_peer: Dict[bytes, int] = {}
        self.heard: Dict[bytes, float] = {}  # connection -> when it last sent anything
        self.schedule: Callable[[Stream], None] = lambda stream: None
        self.ring: Callable[[], None] = lambda: None
        self._dirty: Deque[Stream] = collections.deque()
        self._rung = False
        #: An ``open`` daemon's owner's routing-id prefix (the server's): a stream's ERROR
        #: carries its traceback only to connections whose routing id starts with it.
        self.owner_prefix: Optional[bytes] = None

    @property
    def count(self) -> int:
        return len(self.streams)

    # ------------------------------------------------------------------ opening, credit

    def open(self, identity: bytes, rid: bytes, source: Any) -> List[bytes]:
        """Open a stream of ``source`` for a call's reply; the reply's frames (STREAM, or BUSY
        when the limits are reached: then ``source`` is closed)."""
        key = (identity, rid)
        with self.lock:
            refused = None
            if len(self.streams) >= self.max_streams:
                refused = (f"daemon busy: {self.max_streams} streams are open (max_streams); "
                           "close some, or try again")
            elif self.per_peer.get(identity, 0) >= self.max_per_peer:
                refused = (f"daemon busy: this connection has {self.max_per_peer} streams open; "
                           "close some first")
            elif key in self.streams:
                refused = "a stream with this id is open already"
            if refused is None:
                stream = Stream(key, source)
                self.streams[key] = stream
                self.per_peer[identity] = self.per_peer.get(identity, 0) + 1
                self.heard[identity] = time.monotonic()
                if stream.events is not None:
                    stream.events.stream = stream
        if refused is not None:
            _close_source(source, self)
            return p.reply_frames(rid, p.BUSY, self.incarnation,
                                  p.error_body(RuntimeError(refused)))
        return p.reply_frames(rid, p.STREAM, self.incarnation,
                              {"window": self.window, "lease": int(self.lease * 1000)})

    def credit(self, identity: bytes, rid: bytes, body: bytes) -> Optional[List[bytes]]:
        """A ``credit`` request; the frames of an error reply, or None (credit is unanswered)."""
        try:
            n = decode(body)
        except ProtocolError as exc:
            return p.reply_frames(rid, p.BAD_REQUEST, self.incarnation, p.error_body(exc))
        if type(n) is not int or n < 0:
            error = ProtocolError("a credit is a uint: the number of items granted")
            return p.reply_frames(rid, p.BAD_REQUEST, self.incarnation, p.error_body(error))
        with self.lock:
            stream = self.streams.get((identity, rid))
            if stream is None:
                lost = LookupError(f"no stream {rid.hex()}: it ended, was cancelled, its lease "
                                   "ran out, or the daemon restarted")
                return p.reply_frames(rid, p.ERROR, self.incarnation, p.error_body(lost))
            stream.granted = min(stream.granted + n, stream.produced + self.window)
            if stream.events is not None:
                self._feed(stream)
            elif not stream.scheduled and not stream.finished and stream.can_produce():
                stream.scheduled = True
                self.schedule(stream)
        return None

    def cancel(self, identity: bytes, rid: bytes) -> None:
        with self.lock:
            stream = self.streams.get((identity, rid))
            if stream is None:
                return
            changed = self._cancel(stream)
            names = set(self.watchers)
        if changed:
            self.on_watch_change(names)

    def _cancel(self, stream: Stream) -> bool:
        """Under the lock: nothing more is sent; the source is closed by a turn (an
        iterator's finally runs in a worker) or here (an event source). True when the
        watched attributes changed."""
        if stream.cancelled:
            return False
        stream.cancelled = True  # the socket's owner sends nothing more of it
        stream.final = None
        if stream.events is not None:
            self._remove(stream)
            return self._unsubscribe(stream.events)
        if not stream.scheduled:
            stream.scheduled = True
            self.schedule(stream)  # the turn closes it
        return False

    def seen(self, identity: bytes) -> None:
        """Any message of ``identity``: its streams' lease starts again."""
        if identity in self.heard:
            self.heard[identity] = time.monotonic()

    def expire(self, now: float) -> int:
        """Cancel the streams of connections silent for longer than the lease."""
        silent = [i for i, t in list(self.heard.items()) if now - t > self.lease]
        if not silent:
            return 0
        gone, changed = 0, False
        with self.lock:
            for stream in [s for s in self.streams.values() if s.key[0] in silent]:
                changed = self._cancel(stream) or changed
                gone += 1
            for identity in silent:
                if identity not in self.per_peer:
                    self.heard.pop(identity, None)
            names = set(self.watchers)
        if changed:
            self.on_watch_change(names)
        if gone:
            log.info("closed %d streams whose clients were silent for %.0f s (lease)",
                     gone, self.lease)
        return gone

    def close_all(self) -> List[Stream]:
        """The daemon stops: cancel every stream; the iterators not in a turn, to close now."""
        idle = []
        with self.lock:
            for stream in list(self.streams.values()):
                was_scheduled = stream.scheduled
                stream.scheduled = True  # no turn is queued for it from now on
                self._cancel(stream)
                if not was_scheduled and stream.events is None:
                    idle.append(stream)
            names = set(self.watchers)
        self.on_watch_change(names)
        return idle

    # ------------------------------------------------------------------ producing

    def turn(self, stream: Stream) -> bool:
        """Produce items of an iterator stream, in a worker; True when it wants another turn
        at once (its slice ran out with credit left)."""
        it = stream.source
        queue = stream.queue
        deadline = time.monotonic() + TURN_SLICE
        error: Optional[Dict[str, Any]] = None
        ended = False
        encode, monotonic, append = encode_item, time.monotonic, queue.append
        made = 0
        produced, limit = stream.produced, stream.granted
        while not stream.cancelled:
            if produced >= limit or (not made & 15 and not stream.can_produce()):
                limit = stream.granted  # (only credit() raises it)
                if not stream.can_produce():
                    with self.lock:  # park, unless credit (or a drain) came meanwhile
                        if stream.cancelled:
                            break
                        if not stream.can_produce():
                            stream.scheduled = False
                            return False
                    limit = stream.granted
                continue
            try:
                encoded = encode(next(it))
            except StopIteration:
                ended = True
                break
            except Exception as exc:  # the daemon's code raised, or an item cannot be sent
                error = p.error_body(exc, traceback.format_exc())
                break
            append(encoded)
            stream.bytes_in += len(encoded)
            produced += 1
            stream.produced = produced
            if not stream.dirty:
                self._mark(stream)
            made += 1
            if not made & 63 and monotonic() > deadline:
                return True  # the worker goes to others; the stream stays scheduled
        rid = stream.key[1]
        with self.lock:
            stream.finished = True
            if stream.cancelled or not (ended or error):
                self._remove(stream)
            else:
                if error is not None:
                    stream.final = self.error_frames(stream.key, error)
                else:
                    stream.final = p.reply_frames(rid, p.END, self.incarnation, stream.produced)
                if not stream.dirty:
                    self._mark(stream)
        _close_source(it, self)
        return False

    def error_frames(self, key: Key, error: Dict[str, Any]) -> List[bytes]:
        """The ERROR ending the stream ``key``: without its traceback for a connection that
        is not an ``open`` daemon's owner's (as the server does for a call's error)."""
        identity, rid = key
        if (self.owner_prefix is not None and error.get("traceback")
                and not identity.startswith(self.owner_prefix)):
            error = {**error, "traceback": ""}
        return p.reply_frames(rid, p.ERROR, self.incarnation, error)

    def _feed(self, stream: Stream) -> None:
        """Under the lock: move an event stream's pending events into its queue, as its
        credit allows."""
        events = stream.events
        assert events is not None
        added = False
        while stream.granted > stream.produced and events.pending and not stream.cancelled:
            _, encoded = events.take()
            stream.queue.append(encoded)
            stream.bytes_in += len(encoded)
            stream.produced += 1
            added = True
        if added and not stream.dirty:
            self._mark(stream)
        events.fed()

    def _mark(self, stream: Stream) -> None:
        """``stream`` has something to send: list it, and ring once for all that are listed
        (any thread; no lock needed: see :class:`Stream`)."""
        stream.dirty = True
        self._dirty.append(stream)
        if not self._rung:
            self._rung = True
            self.ring()

    def drain(self, send: Callable[[bytes, List[bytes]], None]) -> None:
        """In the socket's owner (the only thread that takes items off the queues): send every
        queued item and final reply."""
        self._rung = False  # before looking: a stream marked from now on rings again
        dirty = self._dirty
        batches = []
        while dirty:
            try:
                stream = dirty.popleft()
            except IndexError:
                break
            stream.dirty = False  # before reading: an item queued from now on marks it again
            if stream.cancelled:
                continue
            final = stream.final  # read before the items: every item before it is queued
            queue = stream.queue
            n = len(queue)
            if not n and final is None:
                continue
            items = [queue.popleft() for _ in range(n)]
            stream.bytes_out += sum(map(len, items))
            first = stream.sent
            stream.sent += n
            if final is not None:
                with self.lock:
                    stream.final = None
                    self._remove(stream)
            elif (stream.events is None and not stream.scheduled and not stream.finished
                  and stream.can_produce()):
                with self.lock:  # it had parked for its queue's size
                    if not stream.scheduled and not stream.finished and not stream.cancelled:
                        stream.scheduled = True
                        self.schedule(stream)
            batches.append((stream.key, first, items, final))
        for (identity, rid), first, items, final in batches:
            start, size = 0, 0
            for i, item in enumerate(items):
                if size and size + len(item) > MAX_BATCH:
                    send(identity, p.items_frames(rid, self.incarnation, first + start,
                                                  items[start:i]))
                    start, size = i, 0
                size += len(item)
            if start < len(items):
                send(identity, p.items_frames(rid, self.incarnation, first + start,
                                              items[start:]))
            if final is not None:
                send(identity, final)

    def _remove(self, stream: Stream) -> None:
        """Under the lock."""
        if self.streams.pop(stream.key, None) is None:
            return
        identity = stream.key[0]
        left = self.per_peer.get(identity, 1) - 1
        if left:
            self.per_peer[identity] = left
        else:
            self.per_peer.pop(identity, None)
            self.heard.pop(identity, None)

    def finish_cancelled(self, stream: Stream) -> None:
        """A turn found ``stream`` cancelled: close its iterator (its finally runs here)."""
        with self.lock:
            stream.finished = True
            self._remove(stream)
        _close_source(stream.source, self)


def _close_source(source: Any, hub: StreamHub) -> None:
    if isinstance(source, EventSource):
        hub.unsubscribe(source)
        return
    close = getattr(source, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        log.exception("closing a stream's iterator failed")


def is_stream(value: Any) -> bool:
    """Whether a call's result streams: an iterator (it has ``__next__``)."""
    return hasattr(type(value), "__next__")

