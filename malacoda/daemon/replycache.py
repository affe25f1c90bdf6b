"""Recent replies by request id, so that a re-sent request is answered, never run twice.

A client whose connection drops mid-call does not know whether its call ran. It re-sends the
same frames (same request id) once it is connected again; the daemon then answers from this
cache instead of executing the request again:

- a request seen before and finished: the cached reply goes out at once — or, when that reply
  was not kept (see :data:`MAX_REPLY`, :data:`MAX_BYTES`), a GONE reply: it ran, its result is
  lost;
- a request seen before and still executing: nothing runs; the reply goes to every sender of
  that id once it is ready — up to :data:`MAX_WAITERS` of them; a copy beyond those is
  answered BUSY at once (5 million copies of one running request grew its list of waiters
  to 736 MB);
- anything else runs as usual.

Only ``call`` and ``set`` are remembered (``get``, ``describe`` and ``ping`` change nothing, so
running them again is harmless), and only with an id of :data:`MIN_ID` bytes or more: the
protocol asks such ids to be unique across clients (random bytes), while a client numbering its
requests 1, 2, 3 must not be answered with another client's reply. A request is the same request
when its id, operation, name, body and buffer frames are equal (its timeout may differ: a
re-send carries the caller's remaining time), so a client reusing an id for another
request is not answered with a stale reply. What ran is remembered for :data:`TTL` seconds, the
last :data:`MAX_ENTRIES` requests; of their replies only the newest :data:`MAX_BYTES`, each at
most :data:`MAX_REPLY`, are kept. Holding large replies costs every later call: each one
received lands in memory the CPU caches have lost (a 1 MiB echo took 1.6x as long with 64 MiB of
replies kept). Requests still executing are bounded by the server's worker pool and queue. Not
thread-safe on its own: the server calls it under the lock that already guards its queue (one
lock per call instead of two).
"""

from __future__ import annotations

import collections
import hashlib
import time
import zlib
from typing import Deque, Dict, List, Optional, OrderedDict, Tuple

from malacoda.wire import protocol as p

MAX_ENTRIES = 4096  # requests remembered as run (their keys: at most 512 bytes each)
SMALL_HEAD = 512  # a request of one frame up to this size is its own key (without timeout)
MAX_BYTES = 8 << 20  # the replies kept of them, newest first
MAX_REPLY = 256 << 10  # a larger reply is never kept (its request is still remembered)
TTL = 60.0  # seconds a request is remembered after it ran

MAX_WAITERS = 8  # re-senders waiting for one running request; more copies get BUSY
MIN_ID = 8  # shorter request ids are not unique across clients: never remembered

_REMEMBERED = (p.CALL, p.SET)

Message = List[bytes]
_NONE: List[Message] = []  # shared, never appended to


def request_key(request: p.Request) -> bytes:
    """What makes two requests the same request: the id, operation, name and body, and every
    buffer frame's content — not the timeout (a re-send carries the caller's remaining time, and
    is the same request whatever it is).

    Requests of one small frame are their own key (cheaper than a hash: 0.3 µs); others are
    the id and a hash of the rest (0.2 ms a MiB of buffers). Computed once per request
    (``begin`` and ``finish`` both need it) and kept on it.
    """
    key = request.cache_key
    if key is None:
        op = request.op.encode()
        name = b"\xff" if request.name is None else request.name.encode()  # never UTF-8
        parts = (len(request.rid).to_bytes(1, "big"), request.rid, len(op).to_bytes(4, "big"),
                 op, len(name).to_bytes(4, "big"), name, request.body)
        if not request.buffers and len(request.head) <= SMALL_HEAD:
            key = b"".join(parts)
        else:
            # The first frame's parts under SHA-256; each buffer frame as its length and CRC-32
            # (0.2 ms a MiB, the GIL released; SHA-256 took 0.6 ms and doubled the time of a
            # 16 MiB echo). Two requests differ here only when a client reuses an id of 8 bytes
            # or more, which the protocol forbids: its different buffer of the same length is
            # then told apart but for a 2**-32 chance.
            h = hashlib.sha256()
            for part in parts:
                h.update(part)
            for buffer in request.buffers:
                h.update(len(buffer).to_bytes(8, "big"))
                h.update(zlib.crc32(buffer).to_bytes(4, "big"))
            key = b"\0" + request.rid + h.digest()[:16]  # b"\0": never a small key's start
        request.cache_key = key
    return key


class ReplyCache:
    """The replies of recent ``call``/``set`` requests and the requests still running.

    ``incarnation`` is the daemon's, for the GONE replies this cache makes.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 max_reply: int = MAX_REPLY, ttl: float = TTL, incarnation: str = "") -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_reply = min(max_reply, max_bytes)
        self.ttl = ttl
        self.incarnation = incarnation
        # key -> (expires, size of the reply kept, the reply or None when it was not kept)
        self._done: OrderedDict[bytes, Tuple[float, int, Optional[Message]]] = \
            collections.OrderedDict()
        self._kept: Deque[bytes] = collections.deque()  # keys in _done with a reply, oldest first
        # Keys of requests running now -> the identities of re-senders waiting for them.
        self._running: Dict[bytes, Optional[List[bytes]]] = {}
        self._bytes = 0
        self._first_expiry = 0.0  # when the oldest entry expires
        self.hits = 0  # re-sent requests answered without running them

    def begin(self, request: p.Request, identity: bytes) -> Optional[List[Message]]:
        """None: run ``request``. Otherwise the messages to send now (maybe none): it ran."""
        if request.op not in _REMEMBERED or len(request.rid) < MIN_ID:
            return None
        key = request.cache_key or request_key(request)
        done = self._done.get(key)
        if done is not None:
            if done[0] > time.monotonic():
                self.hits += 1
                reply = done[2]
                if reply is None:
                    reply = self._gone(request)
                return [[identity, *reply]]
            self._expire(time.monotonic())  # it is out of date, and so are older ones
        running = self._running
        if key in running:
            self.hits += 1
            waiting = running[key]
            if waiting is None:
                running[key] = [identity]
            elif len(waiting) < MAX_WAITERS:
                waiting.append(identity)
            else:
                return [[identity, *self._busy(request)]]
            return _NONE
        running[key] = None  # running, nobody else waits for it (yet)
        return None

    def finish(self, request: p.Request, frames: Optional[Message]) -> List[Message]:
        """Remember ``frames`` (None: dropped unanswered); the messages for re-senders."""
        if request.op not in _REMEMBERED or len(request.rid) < MIN_ID:
            return _NONE
        key = request.cache_key or request_key(request)
        running = self._running
        if key not in running:
            return _NONE
        waiting = running.pop(key)
        if frames is None:
            return _NONE
        size = len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
        now = time.monotonic()
        done = self._done
        if size <= self.max_reply:
            done[key] = (now + self.ttl, size, frames)
            self._kept.append(key)
            self._bytes += size
            while self._bytes > self.max_bytes:  # the oldest replies kept make room
                self._forget_reply(self._kept.popleft())
        else:
            done[key] = (now + self.ttl, 0, None)  # it ran; its reply is too large to keep
        while len(done) > self.max_entries:  # full: the oldest goes (the usual case)
            self._drop_oldest()
        if now >= self._first_expiry:
            self._expire(now)
        return [[identity, *frames] for identity in waiting] if waiting else _NONE

    def prepare(self, request: p.Request) -> None:
        """Compute ``request``'s key now, before the server takes its lock: hashing its buffer
        frames takes about 0.2 ms a MiB (zlib releases the GIL meanwhile)."""
        if request.op in _REMEMBERED and len(request.rid) >= MIN_ID and request.cache_key is None:
            request_key(request)

    def abandon(self, request: p.Request) -> None:
        """``request`` will not run after all (the daemon was busy): forget it."""
        if request.op in _REMEMBERED and len(request.rid) >= MIN_ID:
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
            expires = next(iter(done.values()))[0]
            if expires > now:
                self._first_expiry = expires  # nothing to look at before then
                return
            self._drop_oldest()
        self._first_expiry = now + self.ttl

    def _drop_oldest(self) -> None:
        _, (_, size, reply) = self._done.popitem(last=False)
        if reply is not None:  # the oldest entry with a reply is the oldest reply kept
            self._kept.popleft()
            self._bytes -= size

    def _forget_reply(self, key: bytes) -> None:
        expires, size, _ = self._done[key]
        self._done[key] = (expires, 0, None)  # still known to have run
        self._bytes -= size

    def _busy(self, request: p.Request) -> Message:
        error = RuntimeError(
            f"request {request.rid.hex()} is running and {MAX_WAITERS} copies of it already wait "
            "for its reply: this copy was not kept; nothing ran")
        return p.reply_frames(request.rid, p.BUSY, self.incarnation, p.error_body(error))

    def _gone(self, request: p.Request) -> Message:
        error = RuntimeError(
            f"request {request.rid.hex()} ran already; its reply was not kept for a re-send "
            f"(replies are kept up to {self.max_reply >> 10} KiB each, {self.max_bytes >> 20} "
            f"MiB in all): the result is lost")
        return p.reply_frames(request.rid, p.GONE, self.incarnation, p.error_body(error))
