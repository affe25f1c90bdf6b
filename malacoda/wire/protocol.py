"""The Malacoda wire protocol, version 2. This module is the spec; it does no I/O.

Transport
---------
ZeroMQ. The daemon binds a ROUTER socket; a client connects a DEALER socket. Every message is a
multipart message of one frame or more, the same shape in both directions::

    frame 0   b"MLC" and one byte, the protocol version (2), then a msgpack array, the envelope
    frame 1…  buffers: large ``bytes`` values, each its own frame, referenced from the body

A DEALER adds no envelope of its own: the ROUTER sees ``[routing id, frame 0, buffers…]`` and
replies to the same routing id. A small call is one frame each way.

Request envelope (client → daemon): ``[id, op, name, timeout, body]``
----------------------------------------------------------------------
=========  =========  ====================================================================
item       type       meaning
=========  =========  ====================================================================
id         bin        request id, 1 to 64 bytes, unique per client; echoed in the reply
op         str        operation: ``call``, ``get``, ``set``, ``describe``, ``ping``;
                      ``credit``, ``cancel`` for streams
name       str/nil    the method or attribute name (``call``, ``get``, ``set``)
timeout    int/nil    how many milliseconds the caller will wait; nil waits for ever. A daemon
                      that cannot *start* the request within that time drops it unanswered.
body       bin        a value in the codec (below), msgpack-encoded
=========  =========  ====================================================================

The envelope holds nothing else: no map, no extension type, no nested array.

Request body: ``call``: a 2-array ``[args, kwargs]`` (an array and a map with str keys);
``set``: the new value; every other operation: nil.

Retries: a client whose connection dropped mid-request may send the very same frames again
(same id). A daemon remembers the replies of recent ``call``/``set`` requests (by id,
operation, name, body and every buffer's content, not the timeout; bounded, about a
minute): a copy of one that ran is answered from there, a copy of one still running gets the
reply once it is ready (8 copies at most; further ones get BUSY); neither runs it again. The
daemon's incarnation id (in every reply, and the ``ping`` reply) tells a client whether it is
talking to the daemon that received the first copy; another incarnation never saw it.

Reply envelope (daemon → client): ``[id, status, incarnation, body]``
-----------------------------------------------------------------------
``id`` the request id (bin); ``status`` a status code (int); ``incarnation`` the daemon's
incarnation id (str, new at every start, so a client can tell that the daemon restarted);
``body`` (bin) a value in the codec:

=====  ===============  =================================================================
code   name             body
=====  ===============  =================================================================
0      OK               the result: the return value, the attribute's value, nil for
                        ``set``, the description for ``describe``, ``"pong"`` for ``ping``
1      ERROR            the remote code raised: an error map (below)
2      BUSY             every worker is busy and the queue is full, or the daemon
                        runs as many ``async def`` calls as it allows; nothing ran
3      DENIED           the name is private (``_…``), dotted, reserved, or read-only
4      BAD_REQUEST      the message could not be decoded or lacks an item; nothing ran
5      UNKNOWN_OP       the operation is not one of the above
6      BAD_VERSION      the signature's version byte is not supported; the reply is a
                        version-2 reply, addressed to the request's id when it can be found
                        (version 1 kept it under ``i`` in frame 1's map)
7      GONE             a copy of this request ran already, but its reply was not kept for
                        a re-send (too large, or pushed out): nothing ran now, the result
                        is lost
8      STREAM           the call's result is an iterator: a stream is open (below);
                        ``{"window": int, "lease": int ms}``
9      ITEMS            ``[first, [item, …]]``: items of a stream, ``first`` the index of
                        the batch's first item
10     END              the stream's iterator is exhausted; the count of items sent
=====  ===============  =================================================================

Error map (every status but 0): ``{"type": str, "module": str, "message": str,
"traceback": str, "args": array (optional), "builtin": str (optional), "errno", "strerror",
"filename", "filename2" (optional)}`` where ``type``/``module`` name the exception
class (``ValueError``, ``builtins``) and ``args`` are its constructor arguments when they can be
encoded; ``builtin`` names the nearest built-in ancestor (below ``Exception``) of a type that
is not built-in (``json.JSONDecodeError``: ``ValueError``), and an ``OSError`` carries its
attributes of those names (int/str/nil). A client re-raises built-in types as themselves, and
others as a ``RemoteError`` that is also an instance of ``builtin``.

Description (``describe``): ``{"name", "class", "doc", "incarnation", "version",
"methods": {name: {"doc": str|nil, "params": [[name, kind, default_repr|nil], …]}},
"attributes": [name, …]}``; ``kind`` is ``inspect.Parameter.kind`` as an int (0 positional
only, 1 positional or keyword, 2 ``*args``, 3 keyword only, 4 ``**kwargs``); a nil
``default_repr`` means no default.

Streams (the ``streams`` extension, version 1; ``"extensions": {"streams": 1}`` in the
description): a ``call`` whose result is an iterator is answered STREAM, with no credit. Every
later message of the stream carries the call's request id. The client sends ``credit`` (body:
a uint, items it grants; 0 only renews the lease) and ``cancel`` (body nil; the daemon closes
the iterator), neither answered while the stream exists (a credit for an unknown stream gets
an ERROR, ``LookupError``). The daemon sends at most the credit granted (kept up to
``window``), in ITEMS replies, then END — or ERROR if the iterator raised. A connection that
sends nothing for the lease loses its streams; ``ping`` keeps them. The daemon's
``subscribe(prefix)`` and ``watch(name)`` methods stream events this way.

The values inside bodies are encoded by :mod:`malacoda.wire.codec`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack

from malacoda.errors import ProtocolError, UnsupportedVersion
from malacoda.wire.codec import NO_BUFFERS, decode, encode

_plain = msgpack.Packer(use_bin_type=True)

VERSION = 2
SIGNATURE = b"MLC\x02"

# Operations.
CALL, GET, SET, DESCRIBE, PING = "call", "get", "set", "describe", "ping"
OPERATIONS = (CALL, GET, SET, DESCRIBE, PING)
#: The streams extension (docs/protocol.md, "Streams"): grant items, stop a stream. Both carry
#: the stream's id (its call's request id) and are never answered while the stream exists.
CREDIT, CANCEL = "credit", "cancel"
STREAM_OPS = frozenset({CREDIT, CANCEL})
STREAMS_VERSION = 1  # told in describe as {"extensions": {"streams": 1}}

# Reply statuses.
OK, ERROR, BUSY, DENIED, BAD_REQUEST, UNKNOWN_OP, BAD_VERSION, GONE = range(8)
STREAM, ITEMS, END = 8, 9, 10  # the streams extension
STATUS_NAMES = {
    OK: "OK",
    ERROR: "ERROR",
    BUSY: "BUSY",
    DENIED: "DENIED",
    BAD_REQUEST: "BAD_REQUEST",
    UNKNOWN_OP: "UNKNOWN_OP",
    BAD_VERSION: "BAD_VERSION",
    GONE: "GONE",
    STREAM: "STREAM",
    ITEMS: "ITEMS",
    END: "END",
}

# Limits (documented in docs/protocol.md; the daemon's settings may lower them).
MAX_MESSAGE = 1 << 30  # 1 GiB for the whole multipart message
MAX_ID = 64  # request id bytes


# ---------------------------------------------------------------------------------------------
# Messages

_SMALL_HEAD = 4096  # a first frame up to this size is decoded without counting its arrays
_unpackb = msgpack.unpackb


def _single_array(container: Any, _seen: List[int]) -> Any:
    _seen.append(1)
    if len(_seen) > 1:
        raise ValueError("the envelope holds nothing but scalars and bins")
    return container


def _envelope(head: bytes, what: str) -> List[Any]:
    """The msgpack array after the signature of a message's first frame."""
    if head[:4] == SIGNATURE and len(head) <= _SMALL_HEAD:  # the usual case, first
        try:
            env = _unpackb(head[4:], raw=False, max_map_len=0, max_ext_len=0, max_array_len=5)
        except Exception as exc:  # msgpack raises several types for garbage
            raise ProtocolError(f"undecodable {what} envelope: {exc}") from None
    elif head[:4] != SIGNATURE:
        if head[:3] == SIGNATURE[:3] and len(head) >= 4:
            raise UnsupportedVersion(f"unsupported protocol version {head[3]}: this end speaks "
                                     f"version {VERSION}")
        raise ProtocolError(f"frame 0 does not start with the signature {SIGNATURE!r}")
    else:  # a large body: one array only, so the size cannot amplify into objects
        try:
            env = _unpackb(memoryview(head)[4:], raw=False, max_map_len=0, max_ext_len=0,
                           max_array_len=5, list_hook=functools.partial(_single_array, _seen=[]))
        except Exception as exc:
            raise ProtocolError(f"undecodable {what} envelope: {exc}") from None
    if type(env) is not list:
        raise ProtocolError(f"the {what} envelope is not an array")
    return env


def request_frames(
    rid: bytes, op: str, name: Optional[str], body: Any, timeout_ms: Optional[int],
    encoded: Optional[Tuple[bytes, List[bytes]]] = None,
) -> List[bytes]:
    """The frames of one request (without the ROUTER's routing id); ``encoded`` is the body
    already encoded (:func:`encode_call`)."""
    payload, buffers = encode(body, lift=3) if encoded is None else encoded
    head = SIGNATURE + _plain.pack([rid, op, name, timeout_ms, payload])
    return [head, *buffers] if buffers else [head]


class Request:
    """A decoded request envelope; the body stays encoded until a worker needs it."""

    __slots__ = ("rid", "op", "name", "timeout_ms", "body", "buffers", "head", "cache_key")

    def __init__(self, rid: bytes, op: str, name: Optional[str], timeout_ms: Optional[int],
                 body: bytes, buffers: List[bytes], head: bytes = b"") -> None:
        self.rid = rid
        self.op = op
        self.name = name
        self.timeout_ms = timeout_ms
        self.body = body
        self.buffers = buffers
        self.head = head  # the first frame as received: id, operation, name, timeout and body
        self.cache_key: Optional[bytes] = None  # the daemon's reply-cache key, computed once

    @property
    def size(self) -> int:
        """The bytes this request holds."""
        size = len(self.head) or len(self.body)
        for b in self.buffers:
            size += len(b)
        return size


def parse_request(frames: Sequence[bytes]) -> Request:
    """Decode a request's frames (routing id removed). Raises :class:`ProtocolError`."""
    if not frames:
        raise ProtocolError("a request has at least 1 frame")
    head = frames[0]
    env = _envelope(head, "request")
    if len(env) != 5:
        raise ProtocolError(f"a request envelope has 5 items, got {len(env)}")
    rid, op, name, timeout, body = env
    if type(rid) is not bytes or not 0 < len(rid) <= MAX_ID:
        raise ProtocolError(f"the request id must be 1 to {MAX_ID} bytes")
    if type(op) is not str:
        raise ProtocolError("the operation must be a str")
    if name is not None and type(name) is not str:
        raise ProtocolError("the name must be a str")
    if timeout is not None and (type(timeout) is not int or timeout < 0):
        raise ProtocolError("the timeout must be a non-negative int of milliseconds or nil")
    if type(body) is not bytes:
        raise ProtocolError("the body must be a bin")
    return Request(rid, op, name, timeout, body, list(frames[1:]) if len(frames) > 1
                   else NO_BUFFERS, head)


def peek_request_id(frames: Sequence[bytes]) -> bytes:
    """Best effort: the request id of a malformed request, to address an error reply.

    Reads bytes, never decodes anything else: a malformed message must not make its receiver
    build objects (an array of millions of empty arrays costs 1 byte each on the wire).
    """
    try:
        head = frames[0]
        if head[:4] == SIGNATURE or len(frames) < 2:
            # Version 2 and later: frame 0 is the signature, an array header, the id as a bin 8.
            at = {0xdc: 7, 0xdd: 9}.get(head[4], 5 if 0x90 <= head[4] <= 0x9f else 0)
            if not at or head[at] != 0xc4:
                return b""
            rid = bytes(head[at + 2:at + 2 + head[at + 1]])
            return rid if 0 < len(rid) == head[at + 1] <= MAX_ID else b""
        # Version 1: a small header map in frame 1, its id under "i".
        if len(frames[1]) > 4096:
            return b""
        header = msgpack.unpackb(frames[1], raw=False, max_str_len=4096, max_bin_len=4096,
                                 max_array_len=16, max_map_len=16, max_ext_len=0)
        old = header.get("i") if isinstance(header, dict) else None
        if type(old) is bytes and 0 < len(old) <= MAX_ID:
            return old
    except Exception:
        pass
    return b""


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def items_frames(rid: bytes, incarnation: str, first: int, items: Sequence[bytes]) -> List[bytes]:
    """The one frame of an ITEMS reply: ``[first, [item, ...]]``, the items already encoded
    (:func:`encode_item`), so that a batch costs one join, not one encoding of the list."""
    body = b"".join((b"\x92", _plain.pack(first), _array_header(len(items)), *items))
    return [SIGNATURE + _plain.pack([rid, ITEMS, incarnation, body])]


def reply_frames(rid: bytes, status: int, incarnation: str, body: Any) -> List[bytes]:
    """The frames of one reply (without the routing id). Raises TypeError if unencodable."""
    payload, buffers = encode(body)
    head = SIGNATURE + _plain.pack([rid, status, incarnation, payload])
    return [head, *buffers] if buffers else [head]


class Reply:
    """A decoded reply envelope; :meth:`value` decodes the body (or raises :attr:`error`, set
    when the reply was refused whole: over the receiver's ``max_message``)."""

    __slots__ = ("rid", "status", "incarnation", "body", "buffers", "max_items", "error")

    def __init__(self, rid: bytes, status: int, incarnation: str, body: bytes,
                 buffers: Sequence[bytes], max_items: Optional[int] = None) -> None:
        self.rid = rid
        self.status = status
        self.incarnation = incarnation
        self.body = body
        self.buffers = buffers
        self.max_items = max_items
        self.error: Optional[ProtocolError] = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return decode(self.body, self.buffers, self.max_items)


def parse_reply(frames: Sequence[bytes], max_message: Optional[int] = None,
                max_items: Optional[int] = None) -> Reply:
    """Decode a reply's frames. Raises :class:`ProtocolError`.

    A reply whose frames together exceed ``max_message`` bytes keeps its id (so that its caller
    learns of it) but not its body: its :meth:`~Reply.value` raises. ``max_items`` caps the
    container items its body decodes into (see :func:`decode`).
    """
    head = frames[0]
    env = _envelope(head, "reply")
    if len(env) != 4:
        raise ProtocolError(f"a reply envelope has 4 items, got {len(env)}")
    rid, status, incarnation, body = env
    if (type(rid) is not bytes or type(status) is not int or type(incarnation) is not str
            or type(body) is not bytes):
        raise ProtocolError("a reply envelope is [bin id, int status, str incarnation, bin body]")
    if len(frames) == 1:
        return Reply(rid, status, incarnation, body, NO_BUFFERS, max_items)
    reply = Reply(rid, status, incarnation, body, frames[1:], max_items)
    if max_message is not None:
        size = sum(map(len, frames))
        if size > max_message:
            reply.body, reply.buffers = b"\xc0", NO_BUFFERS
            reply.error = ProtocolError(
                f"a reply of {size} bytes in {len(frames)} frames: more than this client "
                f"accepts ({max_message} bytes; the proxy's max_message)")
    return reply


def error_body(exc: BaseException, traceback_text: str = "") -> Dict[str, Any]:
    """The error map for ``exc``."""
    t = type(exc)
    body: Dict[str, Any] = {
        "type": t.__qualname__,
        "module": t.__module__,
        "message": str(exc),
        "traceback": traceback_text,
    }
    try:  # the constructor arguments, when they travel, rebuild the exception exactly
        encode(list(exc.args))
        body["args"] = list(exc.args)
    except Exception:
        pass
    if t.__module__ != "builtins":  # its family, for a client that does not know the type
        for base in t.__mro__[1:]:
            if base.__module__ == "builtins" and base not in (Exception, BaseException):
                if issubclass(base, Exception):
                    body["builtin"] = base.__name__
                break
    if isinstance(exc, OSError):  # not in args: errno, strerror and the file names
        for attr in ("errno", "strerror", "filename", "filename2"):
            value = getattr(exc, attr, None)
            if value is None or type(value) in (int, str):
                body[attr] = value
            else:
                body[attr] = str(value)  # os.fsencode'd bytes, a PathLike: as text
    return body
