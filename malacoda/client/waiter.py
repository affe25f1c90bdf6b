"""A thread waiting for its reply on a :class:`~malacoda.client.channel.Channel`."""

from __future__ import annotations

import threading
from typing import Optional

from malacoda.wire import protocol as p


class Waiter:
    """A thread waiting for its reply; ``wake`` is a one-shot signal (a lock, the cheapest)."""

    __slots__ = ("_signal", "reply", "error")
    wants_role = True  # a thread sleeps on it: it can take the reader's role when woken

    def __init__(self) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self.reply: Optional[p.Reply] = None
        self.error: Optional[BaseException] = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None

    def wake(self) -> None:
        try:
            self._signal.release()
        except RuntimeError:
            pass  # already signalled and not consumed yet

    def sleep(self, timeout: Optional[float]) -> None:
        """Wait for a wake (consuming it) or ``timeout`` seconds."""
        self._signal.acquire(timeout=-1 if timeout is None else max(0.0, timeout))

    def fail(self, error: BaseException) -> None:
        """Wake the waiting thread with ``error`` (nothing if it is done already)."""
        if not self.done:
            self.error = error
            self.wake()
