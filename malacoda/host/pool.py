"""One pool for the resources a process shares between its proxies: keyed, counted, fork-aware.

A resource is made on first use of its key and shared after that. :meth:`Pool.acquire` counts
its users: each gets a ``release`` function, and the last release takes the resource out of the
pool and closes it (an SSH tunnel, a cluster watch). :meth:`Pool.get` does not count: the
resource stays until :meth:`Pool.close_all` (an SSH connection, the ZeroMQ context). A pool of
``per_process`` resources never hands one made before a fork to the child: the child makes its
own, and leaves the parent's alone (not closed: it is the parent's).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Dict, Generic, Hashable, List, Optional, Tuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Held(Generic[V]):
    __slots__ = ("value", "users", "pid")

    def __init__(self, value: V) -> None:
        self.value = value
        self.users = 0
        self.pid = os.getpid()


class Pool(Generic[K, V]):
    """Shared resources by key. ``close(value)`` is called, outside the pool's lock, when the
    last user of a counted resource releases it and on :meth:`close_all`."""

    def __init__(self, close: Optional[Callable[[V], None]] = None, per_process: bool = False) -> None:
        # Re-entrant: a proxy collected by the GC while this thread holds the lock releases
        # its resources from inside (Proxy.__del__).
        self._mu = threading.RLock()
        self._held: Dict[K, _Held[V]] = {}
        self._close = close
        self._per_process = per_process

    def _take(self, key: K, make: Callable[[], V], fits: Optional[Callable[[V], bool]]) -> _Held[V]:
        """The held resource of ``key`` (under the lock), made anew when there is none, or when
        the one there does not ``fit`` or was made before a fork (its holders keep it)."""
        held = self._held.get(key)
        if (held is None or (fits is not None and not fits(held.value))
                or (self._per_process and held.pid != os.getpid())):
            held = self._held[key] = _Held(make())
        return held

    def get(self, key: K, make: Callable[[], V], fits: Optional[Callable[[V], bool]] = None) -> V:
        """The shared resource of ``key``, made by ``make()`` if needed; not counted."""
        with self._mu:
            return self._take(key, make, fits).value

    def acquire(self, key: K, make: Callable[[], V],
                fits: Optional[Callable[[V], bool]] = None) -> Tuple[V, Callable[[], None]]:
        """The shared resource of ``key`` (made by ``make()`` if needed) and the function that
        releases it: call it once when done (a second call does nothing)."""
        with self._mu:
            held = self._take(key, make, fits)
            held.users += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._mu:
                if self._held.get(key) is not held:
                    return  # replaced or closed meanwhile: not the pool's to close any more
                held.users -= 1
                if held.users > 0:
                    return
                del self._held[key]
            if self._close is not None:
                self._close(held.value)

        return held.value, release

    def find(self, key: K) -> Optional[V]:
        """The resource of ``key`` if the pool holds one now (nothing is made)."""
        with self._mu:
            held = self._held.get(key)
            return None if held is None else held.value

    def close_all(self) -> List[V]:
        """Empty the pool and close every resource it held; returns them."""
        with self._mu:
            held, self._held = list(self._held.values()), {}
        values = [h.value for h in held]
        if self._close is not None:
            for value in values:
                self._close(value)
        return values
