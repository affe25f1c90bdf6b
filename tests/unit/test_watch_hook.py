"""The watchers' ``__setattr__`` hook follows the watchers, whatever order threads run in.

The hub tells the daemon that the set of watched attributes changed after it has released its
lock, so two threads' calls can arrive in the other order than their changes were made (seen
with two threads each watching and leaving its own attribute: about one round in a thousand
left the hook installed with nobody watching). Here the calls are held and delivered in that
order, on purpose.
"""

from __future__ import annotations

from typing import List, Set

from malacoda.daemon.events import Events
from malacoda.daemon.streams import StreamHub


class Watched(Events):
    def __init__(self) -> None:
        self.a = 0
        self.b = 0


def _hooked(cls: type) -> bool:
    return getattr(cls.__dict__.get("__setattr__"), "_malacoda_hook", False)


def _daemon():
    d = Watched()
    hub = StreamHub("i" * 16)
    d._malacoda_attach_events(hub)
    held: List[Set[str]] = []
    hub.on_watch_change = held.append  # delivered by hand below, in the order a race gives
    return d, hub, held


def test_a_late_notice_does_not_leave_the_hook_after_the_last_watcher_left():
    d, hub, held = _daemon()
    a, b = hub.watch("a", 0), hub.watch("b", 0)
    for names in held:
        d._malacoda_watched(names)
    held.clear()
    assert _hooked(Watched)
    hub.unsubscribe(a)  # thread 1: its notice ({"b"}) is late...
    hub.unsubscribe(b)  # thread 2: the last watcher left ({})
    late, last = held
    d._malacoda_watched(last)
    d._malacoda_watched(late)
    assert not hub.watchers
    assert not _hooked(Watched), "the hook stayed with nobody watching"


def test_a_late_notice_does_not_take_the_hook_from_a_watcher():
    d, hub, held = _daemon()
    a = hub.watch("a", 0)
    d._malacoda_watched(held.pop())
    hub.unsubscribe(a)  # thread 1: its notice ({}) is late...
    b = hub.watch("b", 0)  # thread 2 watches meanwhile ({"b"})
    late, new = held
    d._malacoda_watched(new)
    d._malacoda_watched(late)
    try:
        assert _hooked(Watched), "a watcher has no hook: it never sees the daemon's writes"
        d.b = 5
        assert b.pending and b.pending[-1][0] == 5
    finally:
        hub.unsubscribe(b)
        d._malacoda_watched(held[-1])
