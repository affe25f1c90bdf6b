"""Recent replies by request id, so that a re-sent request is answered, never run twice.

A client whose connection drops mid-call does not know whether its call ran. It re-sends the
same frames (same request id) once it is connected again; the daemon then answers from this
cache instead of executing the request again:

- a request seen before and finished: the cached reply goes out at once;
- a request seen before and still executing: nothing runs; the reply goes to every sender of
  that id once it is ready;
- anything else runs as usual.

Only ``call`` and ``set`` are remembered (``get``, ``describe`` and ``ping`` change nothing, so
running them again is harmless). A request is the same request when its id, operation, name,
timeout and body are equal, so a client reusing an id for another request is not answered with a stale
reply. The cache is bounded three ways (see :data:`MAX_ENTRIES`, :data:`MAX_BYTES`,
:data:`TTL`); the oldest replies go first. Requests still executing are bounded by the
server's worker pool and queue. Not thread-safe on its own: the server calls it under the lock
that already guards its queue (one lock per call instead of two).
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Dict, List, Optional, OrderedDict, Tuple

from . import protocol as p

MAX_ENTRIES = 1024  # replies remembered
MAX_BYTES = 64 << 20  # their total size; a larger single reply is sent, never remembered
SMALL_HEAD = 512  # first frames up to this size are the key as they are, not hashed
TTL = 60.0  # seconds a reply is remembered after it was sent

_REMEMBERED = (p.CALL, p.SET)

Message = List[bytes]
_NONE: List[Message] = []  # shared, never appended to


def request_key(request: p.Request) -> bytes:
    """What makes two requests the same request: the whole first frame (id, operation, name,
    timeout and body) and the buffers' lengths.

    Computed once per request (``begin`` and ``finish`` both need it) and kept on it.
    """
    key = request.cache_key
    if key is None:
        head = request.head
        if len(head) <= SMALL_HEAD and not request.buffers:
            key = head  # small: the frame itself (cheaper than a hash)
        else:
            h = hashlib.blake2b(head, digest_size=16)
            for buffer in request.buffers:
                h.update(len(buffer).to_bytes(8, "big"))
            key = b"\1" + request.rid + h.digest()
        request.cache_key = key
    return key


class ReplyCache:
    """The replies of recent ``call``/``set`` requests and the requests still running."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 ttl: float = TTL) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._done: OrderedDict[bytes, Tuple[float, int, Message]] = collections.OrderedDict()
        # Keys of requests running now -> the identities of re-senders waiting for them.
        self._running: Dict[bytes, Optional[List[bytes]]] = {}
        self._bytes = 0
        self._first_expiry = 0.0  # when the oldest reply remembered expires
        self.hits = 0  # re-sent requests answered without running them

    def begin(self, request: p.Request, identity: bytes) -> Optional[List[Message]]:
        """None: run ``request``. Otherwise the messages to send now (maybe none): it ran."""
        if request.op not in _REMEMBERED:
            return None
        key = request.cache_key or request_key(request)
        done = self._done.get(key)
        if done is not None:
            if done[0] > time.monotonic():
                self.hits += 1
                return [[identity, *done[2]]]
            self._expire(time.monotonic())  # it is out of date, and so are older ones
        running = self._running
        if key in running:
            self.hits += 1
            waiting = running[key]
            if waiting is None:
                running[key] = [identity]
            else:
                waiting.append(identity)
            return _NONE
        running[key] = None  # running, nobody else waits for it (yet)
        return None

    def finish(self, request: p.Request, frames: Optional[Message]) -> List[Message]:
        """Remember ``frames`` (None: dropped unanswered); the messages for re-senders."""
        if request.op not in _REMEMBERED:
            return _NONE
        key = request.cache_key or request_key(request)
        running = self._running
        if key not in running:
            return _NONE
        waiting = running.pop(key)
        if frames is None:
            return _NONE
        size = len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
        if size <= self.max_bytes and self.max_entries > 0:
            now = time.monotonic()
            done = self._done
            done[key] = (now + self.ttl, size, frames)
            self._bytes += size
            while len(done) > self.max_entries:  # full: the oldest goes (the usual case)
                self._bytes -= done.popitem(last=False)[1][1]
            if self._bytes > self.max_bytes or now >= self._first_expiry:
                self._expire(now)
        return [[identity, *frames] for identity in waiting] if waiting else _NONE

    def abandon(self, request: p.Request) -> None:
        """``request`` will not run after all (the daemon was busy): forget it."""
        if request.op in _REMEMBERED:
            self._running.pop(request.cache_key or request_key(request), None)

    def __len__(self) -> int:
        return len(self._done)

    @property
    def size(self) -> int:
        """Bytes of the replies remembered now."""
        return self._bytes

    def _expire(self, now: float) -> None:
        done = self._done
        while done:
            key, (expires, size, _) = next(iter(done.items()))
            if expires > now and len(done) <= self.max_entries and self._bytes <= self.max_bytes:
                self._first_expiry = expires  # nothing to look at before then
                return
            del done[key]
            self._bytes -= size
        self._first_expiry = now + self.ttl
