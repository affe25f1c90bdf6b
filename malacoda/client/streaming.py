"""The client's side of streams: :class:`RemoteIterator`, what a streaming call returns.

::

    for line in d.tail(100):        # items as the daemon yields them
        ...
    with d.tail(100) as lines:      # or close it early: the generator's finally runs remotely
        first = next(lines)

Credit (docs/protocol.md, "Streams"): the iterator grants its ``window`` at the start and tops
it up by what its consumer took each time half of it is used, so that at most ``window`` items
are buffered here or produced ahead in the daemon, whatever the two speeds. Leaving early —
``break`` (the loop drops the iterator), :meth:`RemoteIterator.close`, or the iterator
garbage-collected — sends a ``cancel``. A background thread pings each connection with open
streams every quarter lease, so a consumer that takes its time keeps its streams, and a client
that dies loses them within the lease. ``timeout`` bounds the wait for each item
(:class:`~.errors.CallTimeout`; the stream stays open). The daemon going away, restarting, or
losing items on the way raises :class:`~.errors.ConnectionLost`: a stream never ends silently.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from malacoda.client.stream_channel import StreamChannel
from malacoda.errors import CallTimeout, ConnectionLost, ProtocolError
from malacoda.wire import protocol as p

WINDOW = 1024  # items a client lets the daemon run ahead (cut to the daemon's own window)
KEEPALIVE_MAX = 5.0  # seconds between keep-alive pings at most
FLUSH_EVERY = 0.25  # seconds: how soon a cancel from a __del__ goes out when nobody reads


def opened_stream(opened: Any) -> Tuple[int, int]:
    """The daemon's window and lease from a STREAM reply's body (ProtocolError if malformed)."""
    if not isinstance(opened, dict):
        raise ProtocolError(f"malformed STREAM reply: {opened!r}")
    theirs, lease = opened.get("window"), opened.get("lease")
    if type(theirs) is not int or theirs < 1 or type(lease) is not int or lease < 1:
        raise ProtocolError(f"malformed STREAM reply: {opened!r}")
    return theirs, lease


class StreamConsumer:
    """What the synchronous :class:`RemoteIterator` and the asyncio ``AsyncStream`` share: how
    one reply of their stream (from its own daemon incarnation) is taken in. ITEMS are checked
    (their form, no gap, no more than granted) and queued; END ends the stream; an ERROR raises
    the remote exception, or ConnectionLost when the daemon no longer knows the stream (its
    lease ran out). A subclass has ``_label``, ``_next``, ``_granted``, ``_items``,
    ``_cancel()``, ``_end()`` and ``_error_of()``."""

    _label: str
    _next: int
    _granted: int
    _items: Any
    _error_of: Callable[[Any], BaseException]  # an ERROR reply's body -> the exception to raise

    def _cancel(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _take_in(self, reply: p.Reply) -> None:
        status = reply.status
        if status == p.ITEMS:
            value = reply.value()
            if (type(value) is not list or len(value) != 2 or type(value[0]) is not int
                    or type(value[1]) is not list):
                self._cancel()
                raise ProtocolError(f"{self._label}: malformed ITEMS reply")
            first, items = value
            if first != self._next:
                self._cancel()
                raise ConnectionLost(f"{self._label}: items {self._next} to {first - 1} of the "
                                     "stream were lost on the way")
            if first + len(items) > self._granted:  # a hostile daemon: never buffered
                self._cancel()
                raise ProtocolError(f"{self._label}: the daemon sent more items than granted "
                                    f"({first + len(items)} of {self._granted})")
            self._next += len(items)
            self._items.extend(items)
            return
        self._end()
        if status == p.END:
            return
        value = reply.value()
        if status == p.ERROR:
            if isinstance(value, dict) and value.get("type") == "LookupError" \
                    and str(value.get("message", "")).startswith("no stream"):
                raise ConnectionLost(f"{self._label}: the daemon lost the stream: "
                                     f"{value.get('message')}")
            raise self._error_of(value)
        message = value.get("message", "") if isinstance(value, dict) else value
        raise ProtocolError(f"{self._label}: {p.STATUS_NAMES.get(status, status)}: {message}")


class RemoteIterator(StreamConsumer):
    """The items of one stream, in order. Safe to share between threads (one item each)."""

    def __init__(self, channel: StreamChannel, rid: bytes, incarnation: str, opened: Any,
                 timeout: Optional[float], label: str, owner: Any,
                 error_of: Callable[[Any], BaseException], window: int = WINDOW) -> None:
        theirs, lease = opened_stream(opened)
        self._channel = channel
        self._rid = rid
        self._incarnation = incarnation
        self._timeout = timeout
        self._label = label
        self._owner = owner  # the proxy: its connection must outlive the stream
        self._error_of = error_of
        self._window = max(1, min(window, theirs))
        self._half = max(1, self._window // 2)
        self._lease = lease / 1000.0
        self._items: Deque[Any] = collections.deque()
        self._next = 0  # the index of the next item expected from the daemon
        self._taken = 0  # items taken since the last credit
        self._granted = 0  # items granted in all: a daemon sending more is refused
        self._over = False
        self._closed_here = False
        self._lock = threading.Lock()
        # at most a window of ITEMS (each of one item or more), the end, and the answers to
        # credits sent as it came
        self._waiter = channel.open_stream(rid, limit=self._window + 4)
        _keeper.add(self)
        self._post(p.CREDIT, self._window)

    def _post(self, op: str, body: Any) -> None:
        if op == p.CREDIT:
            self._granted += body
        self._channel.post(p.request_frames(self._rid, op, None, body, None))

    def __iter__(self) -> RemoteIterator:
        return self

    def __next__(self) -> Any:
        with self._lock:
            items = self._items
            while not items:
                if self._over:
                    raise StopIteration
                self._receive()
            self._taken += 1
            if self._taken >= self._half and not self._over:
                self._post(p.CREDIT, self._taken)  # top up what was taken: the window again
                self._taken = 0
            return items.popleft()

    def _receive(self) -> None:
        """Wait for the next message of the stream and take it in (items, end or error)."""
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            reply = self._channel.receive(self._waiter, deadline)
        except ProtocolError:  # the daemon sent more than the credit allows
            self._cancel()
            raise
        except ConnectionLost as lost:
            self._end()
            if self._closed_here:
                return  # close() in another thread: the iteration ends
            raise ConnectionLost(f"{self._label}: the stream was cut: {lost}") from None
        if reply is None:
            raise CallTimeout(f"{self._label}: no item within {timeout:.3g} s (the stream is "
                              "still open)")
        if reply.incarnation != self._incarnation:
            self._end()
            raise ConnectionLost(f"{self._label}: the daemon restarted during the stream")
        self._take_in(reply)

    def _end(self) -> None:
        """The stream is over (ended, failed or lost): no credit, no cancel."""
        if not self._over:
            self._over = True
            self._channel.close_stream(self._waiter)
            _keeper.discard(self)

    def _cancel(self) -> None:
        if not self._over:
            self._post(p.CANCEL, None)
            self._end()

    def close(self) -> None:
        """Leave the stream: the daemon closes its iterator (a generator's ``finally`` runs).
        Any thread: one waiting for an item meanwhile gets StopIteration."""
        if not self._over:
            self._closed_here = True
            self._cancel()
            self._waiter.fail(ConnectionLost("closed by its consumer"))
        self._items.clear()

    @property
    def closed(self) -> bool:
        return self._over and not self._items

    def __enter__(self) -> RemoteIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # No lock here (the collector may run this in the middle of the channel's own code):
        # post() takes none when the socket is busy, it queues and nudges.
        try:
            if not self._over:
                self._over = True
                self._channel.post_from_finalizer(
                    p.request_frames(self._rid, p.CANCEL, None, None, None), self._waiter)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._over else "open"
        return f"<malacoda.RemoteIterator {self._label} ({state})>"


class _KeepAlive:
    """One background thread for the process: pings every connection that has open streams
    each quarter of the shortest lease (at most :data:`KEEPALIVE_MAX`), and sends what a
    ``post`` left queued (a cancel from a ``__del__`` while nobody read)."""

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[RemoteIterator] = weakref.WeakSet()
        self._channels: weakref.WeakSet[StreamChannel] = weakref.WeakSet()  # ever had a stream
        self._mu = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()

    def add(self, stream: RemoteIterator) -> None:
        with self._mu:
            self._streams.add(stream)
            self._channels.add(stream._channel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="malacoda-keepalive",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def discard(self, stream: RemoteIterator) -> None:
        self._streams.discard(stream)

    def _run(self) -> None:
        idle_since = last_ping = time.monotonic()
        while True:
            self._flush_all()  # cancels queued by a __del__
            streams = list(self._streams)
            now = time.monotonic()
            if streams:
                idle_since = now
                # at the pace of the shortest lease open now (a stream just opened may have
                # a shorter one than those before it)
                if now - last_ping >= min(KEEPALIVE_MAX, *(s._lease / 4 for s in streams)):
                    last_ping = now
                    self._ping(streams)
            elif now - idle_since > 30.0:
                with self._mu:
                    if not self._streams:
                        self._thread = None
                        return
            del streams  # no strong reference while waiting: a dropped iterator must go
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()


    def _flush_all(self) -> None:
        for channel in list(self._channels):
            try:
                channel.flush_outbox()
            except Exception:  # closed meanwhile
                pass

    @staticmethod
    def _ping(streams: List[RemoteIterator]) -> None:
        """Ping each connection of ``streams`` once."""
        channels: Dict[int, StreamChannel] = {id(s._channel): s._channel for s in streams}
        for channel in channels.values():
            try:
                channel.keep_alive()
            except Exception:  # a channel closed meanwhile: its streams fail on their own
                pass


_keeper = _KeepAlive()
