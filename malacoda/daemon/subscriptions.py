"""The events half of the stream hub: subscriptions (``subscribe``, ``watch``) and what feeds
them (``publish``, attribute writes). See :mod:`malacoda.daemon.events` for the daemon's API
and :mod:`malacoda.daemon.streams` for the streams they become through a proxy.

An :class:`EventSource` needs no worker: it is fed in whatever thread publishes or assigns, and
keeps at most :data:`EVENT_QUEUE` events or :data:`EVENT_BYTES` for a slow reader (the oldest
are dropped and counted as missed).
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Set, Tuple, cast

from malacoda.wire.codec import encode_item

if TYPE_CHECKING:
    from malacoda.daemon.streams import Stream, StreamHub

EVENT_QUEUE = 1024  # events one subscription keeps for a slow reader (then the oldest go)
EVENT_BYTES = 1 << 20  # ... or bytes of them


class EventSource:
    """Events for one subscriber: what ``Malacoda.subscribe`` and ``Malacoda.watch`` return.

    Through a proxy it becomes a stream; in the daemon's own code it is a plain blocking
    iterator. ``latest`` keeps only the newest value (a watch): a slow reader sees the current
    state, not every step.
    """

    def __init__(self, hub: StreamHub, kind: str, key: str, latest: bool = False) -> None:
        self.hub = hub
        self.kind = kind  # "topic" or "attr"
        self.key = key  # the topic prefix or the attribute's name
        self.latest = latest
        self.pending: Deque[Tuple[Any, bytes]] = collections.deque()  # (event, encoded)
        self.pending_bytes = 0
        self.missed = 0
        self.stream: Optional[Stream] = None
        self.closed = False
        self._ready = threading.Condition(hub.lock)

    def offer(self, event: Any, encoded: bytes) -> None:
        """Queue one event (under the hub's lock)."""
        if self.latest:
            self.pending.clear()
            self.pending_bytes = 0
        self.pending.append((event, encoded))
        self.pending_bytes += len(encoded)
        while len(self.pending) > 1 and (len(self.pending) > EVENT_QUEUE
                                         or self.pending_bytes > EVENT_BYTES):
            _, dropped = self.pending.popleft()
            self.pending_bytes -= len(dropped)
            self.missed += 1
        stream = self.stream
        if stream is not None:
            self.hub._feed(stream)
        else:
            self._ready.notify()

    def take(self) -> Tuple[Any, bytes]:
        """The next event, as its reader gets it (under the hub's lock; pending not empty)."""
        event, encoded = self.pending.popleft()
        self.pending_bytes -= len(encoded)
        if self.missed and self.kind == "topic":
            event = dict(event, missed=self.missed)
            encoded = encode_item(event)
        self.missed = 0
        return event, encoded

    def __iter__(self) -> EventSource:
        return self

    def __next__(self) -> Any:
        with self.hub.lock:
            while not self.pending:
                if self.closed:
                    raise StopIteration
                self._ready.wait(1.0)
            return self.take()[0]

    def close(self) -> None:
        self.hub.unsubscribe(self)

    def fed(self) -> None:
        """Called under the hub's lock after the stream took pending events (credit came) and
        when the source is closed: a source that produces on demand (an async generator's,
        :mod:`malacoda.daemon.aioloop`) wakes its producer here. Plain events need nothing."""


class Subscriptions:
    """The event sources of one daemon, by topic prefix and by watched attribute: a base class
    of :class:`~malacoda.daemon.streams.StreamHub` (the only one: ``self`` is a hub), whose lock
    guards them too."""

    lock: threading.Lock  # (the hub's)

    def __init__(self) -> None:
        self.topics: List[EventSource] = []
        self.watchers: Dict[str, List[EventSource]] = {}
        self.on_watch_change: Callable[[Set[str]], None] = lambda names: None

    def subscribe(self, prefix: str) -> EventSource:
        source = EventSource(cast("StreamHub", self), "topic", prefix)
        with self.lock:
            self.topics.append(source)
        return source

    def watch(self, name: str, value: Any) -> EventSource:
        source = EventSource(cast("StreamHub", self), "attr", name, latest=True)
        encoded = encode_item(value)  # a value that cannot travel raises before anything is kept
        with self.lock:
            first = name not in self.watchers
            self.watchers.setdefault(name, []).append(source)
            source.offer(value, encoded)
            names = set(self.watchers)
        if first:
            self.on_watch_change(names)
        return source

    def unsubscribe(self, source: EventSource) -> None:
        with self.lock:
            if source.stream is not None:
                cast("StreamHub", self)._remove(source.stream)
            changed = self._unsubscribe(source)
            names = set(self.watchers)
        if changed:
            self.on_watch_change(names)

    def _unsubscribe(self, source: EventSource) -> bool:
        """Under the lock; True when the set of watched names changed."""
        source.closed = True
        source._ready.notify_all()
        source.fed()
        if source.kind == "topic":
            if source in self.topics:
                self.topics.remove(source)
            return False
        watchers = self.watchers.get(source.key, [])
        if source in watchers:
            watchers.remove(source)
        if not watchers and source.key in self.watchers:
            del self.watchers[source.key]
            return True
        return False

    def publish(self, topic: str, value: Any) -> int:
        """Offer an event to every subscription whose prefix ``topic`` starts with; how many."""
        if not self.topics or topic.startswith("_"):
            return 0
        event = {"topic": topic, "value": value, "missed": 0}
        encoded = encode_item(event)  # raises TypeError for a value that cannot travel
        reached = 0
        with self.lock:
            for source in self.topics:
                if topic.startswith(source.key):
                    source.offer(event, encoded)
                    reached += 1
        return reached

    def changed(self, name: str, value: Any) -> None:
        """The watched attribute ``name`` was assigned ``value``."""
        try:
            encoded = encode_item(value)
        except Exception as exc:
            value = f"<{type(value).__name__}: cannot be sent: {exc}>"
            encoded = encode_item(value)
        with self.lock:
            for source in self.watchers.get(name, ()):
                source.offer(value, encoded)
