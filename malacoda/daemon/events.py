"""Events of a daemon: ``publish``, and the ``subscribe`` and ``watch`` streams.

::

    class Shop(Malacoda):
        def order(self, what):
            self.publish("orders.new", what)     # every subscriber of "orders" gets it
            self.pst_orders += 1                 # every watcher of pst_orders sees the new value

    for ev in d.subscribe("orders"):             # a stream: {"topic", "value", "missed"}
        ...
    for n in d.watch("pst_orders"):              # its value now, then after each assignment
        ...

**Watching costs nothing while nobody watches.** An attribute write in the daemon's code
(``self.x += 1``) is Python's own ``object.__setattr__``; only while some attribute is watched
does the daemon's class get a ``__setattr__`` that also tells the watchers (installed by the
first watcher, removed with the last; a ``__setattr__`` of the class's own is kept and called).
Measured in docs/benchmarks.md (``python -m bench.watchcost``). Only assignments are seen: an
in-place change (``self.items.append(x)``) is not one; assign the attribute again, or publish.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Set

from malacoda.daemon.dispatch import _is_method, _public_identifier
from malacoda.daemon.streams import StreamHub
from malacoda.daemon.subscriptions import EventSource
from malacoda.errors import AccessDenied

_hook_lock = threading.Lock()


class Events:
    """The event methods of :class:`~malacoda.Malacoda` (a base class of it)."""

    _malacoda_hub: Optional[StreamHub] = None

    def publish(self, topic: str, value: Any = None) -> int:
        """Send ``value`` to every subscriber whose prefix ``topic`` starts with; returns how
        many there were. Never blocks: a slow subscriber's oldest events are dropped (it is
        told how many it missed). Not reachable through a proxy."""
        if type(topic) is not str:
            raise TypeError(f"a topic is a str, not {type(topic).__name__}")
        hub = self._malacoda_hub
        return 0 if hub is None else hub.publish(topic, value)

    def subscribe(self, prefix: str = "") -> EventSource:
        """Stream the events published with a topic that starts with ``prefix`` (``""``: all),
        each ``{"topic": str, "value": ..., "missed": int}`` (``missed``: events dropped just
        before this one because the subscriber did not keep up)."""
        if type(prefix) is not str:
            raise TypeError(f"a topic prefix is a str, not {type(prefix).__name__}")
        if prefix.startswith("_"):
            raise AccessDenied(f"{prefix!r}: topics starting with '_' are private")
        return self._malacoda_events().subscribe(prefix)

    def watch(self, name: str) -> EventSource:
        """Stream the value of the attribute ``name``: its value now, then its new value each
        time it is assigned (through a proxy or in the daemon's code); a slow watcher gets the
        newest value, not every step."""
        hub = self._malacoda_events()
        if not _public_identifier(name):
            raise AccessDenied(f"{name!r} is not reachable: private, dotted or reserved names "
                               "cannot be used through a proxy")
        if _is_method(type(self), name):
            raise TypeError(f"{name!r} is a method: only attributes can be watched")
        value = getattr(self, name)  # AttributeError for a missing one, as get
        return hub.watch(name, value)

    def _malacoda_events(self) -> StreamHub:
        hub = self._malacoda_hub
        if hub is None:
            raise RuntimeError("the daemon does not serve yet: no events before it is ready")
        return hub

    def _malacoda_attach_events(self, hub: StreamHub) -> None:
        self._malacoda_hub = hub
        hub.on_watch_change = self._malacoda_watched

    def _malacoda_watched(self, names: Set[str]) -> None:
        """The set of watched attributes changed: install or remove the class's hook.

        ``names`` is the hub's view when it changed, told after the hub's lock was released:
        another thread's later change may have been told first. So the hook follows what is
        watched now (read under this lock): the last notice to run sees the last change."""
        cls = type(self)
        hub = self._malacoda_hub
        with _hook_lock:
            if hub is not None:
                with hub.lock:
                    names = set(hub.watchers)
            installed = cls.__dict__.get("__setattr__")
            hooked = getattr(installed, "_malacoda_hook", False)
            if names and not hooked:
                cls.__setattr__ = _hook(cls, self)  # type: ignore[method-assign]
            elif not names and hooked:
                original = installed._malacoda_original  # type: ignore[union-attr]
                if original is None:
                    delattr(cls, "__setattr__")
                else:
                    cls.__setattr__ = original  # type: ignore[method-assign]


def _hook(cls: type, daemon: Events) -> Callable[[Any, str, Any], None]:
    own = cls.__dict__.get("__setattr__")  # the class's own, kept and called
    inherited = own if own is not None else super(cls, cls).__setattr__  # type: ignore[misc,arg-type]
    hub = daemon._malacoda_hub
    assert hub is not None
    watchers = hub.watchers

    def __setattr__(self: Any, name: str, value: Any) -> None:
        inherited(self, name, value)
        if name in watchers and self is daemon:
            hub.changed(name, value)

    __setattr__._malacoda_hook = True  # type: ignore[attr-defined]
    __setattr__._malacoda_original = own  # type: ignore[attr-defined]
    return __setattr__
