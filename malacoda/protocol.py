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
op         str        operation: ``call``, ``get``, ``set``, ``describe``, ``ping``
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
2      BUSY             every worker is busy and the queue is full; nothing ran
3      DENIED           the name is private (``_…``), dotted, reserved, or read-only
4      BAD_REQUEST      the message could not be decoded or lacks an item; nothing ran
5      UNKNOWN_OP       the operation is not one of the above
6      BAD_VERSION      the signature's version byte is not supported; the reply is a
                        version-2 reply, addressed to the request's id when it can be found
                        (version 1 kept it under ``i`` in frame 1's map)
7      GONE             a copy of this request ran already, but its reply was not kept for
                        a re-send (too large, or pushed out): nothing ran now, the result
                        is lost
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

Codec
-----
msgpack (the 2.0 spec with ``bin`` and ``str`` types). nil, bool, int (64-bit), float (64-bit),
str, bin, array (a Python ``list``) and map (a ``dict``; keys may be any hashable value) are
native. Further types are msgpack extension types; each payload is described below, nested
payloads are again msgpack in this codec:

====  ===========  ====================================================================
code  type         payload
====  ===========  ====================================================================
1     tuple        msgpack array of the items
2     set          msgpack array of the items
3     frozenset    msgpack array of the items
4     datetime     ISO 8601 text (``datetime.isoformat()``; an offset when tz-aware)
5     date         ISO 8601 text
6     time         ISO 8601 text
7     timedelta    msgpack array ``[days, seconds, microseconds]``
8     Decimal      its text (``str(d)``, which includes ``NaN``/``Infinity``)
9     UUID         the 16 bytes
10    complex      msgpack array ``[real, imag]`` of floats
11    int          decimal text of an integer outside the 64-bit range, at most 4300 digits
12    buffer       msgpack uint: the index of a buffer frame (0 = frame 1) holding a
                   ``bytes`` value
13    named        msgpack array ``[name, data]``: a type registered by name on both ends
                   (:func:`register_type`); unknown names are an error, never imported
====  ===========  ====================================================================

Any other code is an error, msgpack's own Timestamp (-1) included: msgpack decodes that one
itself, so :func:`decode` looks for it in bodies that hold a ``0xff`` byte and refuses it.

``bytearray`` and ``memoryview`` travel as bin and arrive as ``bytes``. A sender may put any
``bytes`` value in a buffer frame; Malacoda does so from 32 KiB up, which
spares copies of large payloads. Nothing in a message is ever unpickled or evaluated.

Limits (a receiver's defaults, each a message it refuses): the whole message, all frames
together (``MAX_MESSAGE``; each frame is refused by ZMQ_MAXMSGSIZE before it is read, the
whole once it is in), a str/bin/array/map/ext length
over ``MAX_LENGTH`` and nesting deeper than ``MAX_DEPTH``. A daemon also caps the items of all
containers of one request body together (``MAX_REQUEST_ITEMS``): decoding turns each byte of
msgpack into up to ~80 bytes of Python objects, and this keeps a body's decoded size bounded.
Set items and map keys whose hashes collide (integers ``k * (2**61 - 1)`` all hash alike) are
refused past ``MAX_COLLISIONS`` in one value: building a set of n of them costs n²/2
comparisons while holding the GIL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import operator
import re
import uuid
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import msgpack

from .errors import ProtocolError

_first = operator.itemgetter(0)

VERSION = 2
SIGNATURE = b"MLC\x02"

# Operations.
CALL, GET, SET, DESCRIBE, PING = "call", "get", "set", "describe", "ping"
OPERATIONS = (CALL, GET, SET, DESCRIBE, PING)

# Reply statuses.
OK, ERROR, BUSY, DENIED, BAD_REQUEST, UNKNOWN_OP, BAD_VERSION, GONE = range(8)
STATUS_NAMES = {
    OK: "OK",
    ERROR: "ERROR",
    BUSY: "BUSY",
    DENIED: "DENIED",
    BAD_REQUEST: "BAD_REQUEST",
    UNKNOWN_OP: "UNKNOWN_OP",
    BAD_VERSION: "BAD_VERSION",
    GONE: "GONE",
}

# Limits (documented in docs/protocol.md; the daemon's settings may lower them).
MAX_MESSAGE = 1 << 30  # 1 GiB for the whole multipart message
MAX_LENGTH = 1 << 30  # one str / bin / ext payload
MAX_ITEMS = 1 << 24  # items in one array or map
MAX_DEPTH = 64  # nesting of containers, extension types included
MAX_REQUEST_ITEMS = 1 << 20  # items in all containers of one request body, as a daemon decodes it
_COUNT_FROM = 4096  # bodies smaller than this cannot amplify much: their items are not counted
MAX_ID = 64  # request id bytes
#: Keys of the sets, frozensets and maps of one decoded value that may share their hash with
#: another key, all together. Integers ``k * (2**61 - 1)`` all hash alike, and building a set of
#: n such keys costs n²/2 comparisons under the GIL (60,000 of them froze a daemon for 25 s):
#: past this budget the value is refused before any set or map is built of it.
MAX_COLLISIONS = 64
#: Digits of an int outside 64 bits (extension 11): Python's own default limit of int <-> str
#: conversion (``sys.get_int_max_str_digits()``), the same on both ends whatever either sets.
MAX_INT_DIGITS = 4300
_MAX_INT_BITS = 14300  # 2**14300 has 4305 digits: an int this long is refused without str()
BUFFER_THRESHOLD = 32 * 1024  # bytes values from this size travel as their own frame

EXT_TUPLE, EXT_SET, EXT_FROZENSET = 1, 2, 3
EXT_DATETIME, EXT_DATE, EXT_TIME, EXT_TIMEDELTA = 4, 5, 6, 7
EXT_DECIMAL, EXT_UUID, EXT_COMPLEX, EXT_BIGINT = 8, 9, 10, 11
EXT_BUFFER, EXT_NAMED = 12, 13


@dataclasses.dataclass(frozen=True)
class _NamedType:
    name: str
    cls: type
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


_named_by_type: Dict[type, _NamedType] = {}
_named_by_name: Dict[str, _NamedType] = {}


def register_type(
    cls: type,
    name: Optional[str] = None,
    to_data: Optional[Callable[[Any], Any]] = None,
    from_data: Optional[Callable[[Any], Any]] = None,
) -> type:
    """Allow ``cls`` on the wire under ``name`` (default: ``module.QualName``).

    Both ends must register the same name. A dataclass needs nothing more: its fields travel as a
    map and it is rebuilt with its constructor. Other classes give ``to_data`` (object → codec
    value) and ``from_data`` (codec value → object). Usable as a class decorator.
    """
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    if to_data is None or from_data is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass: give to_data and from_data")
        fields = [f.name for f in dataclasses.fields(cls)]

        def to_data(obj: Any, _fields: List[str] = fields) -> Any:
            return {f: getattr(obj, f) for f in _fields}

        def from_data(data: Any, _cls: type = cls) -> Any:
            return _cls(**data)

    entry = _NamedType(name, cls, to_data, from_data)
    _named_by_type[cls] = entry
    _named_by_name[name] = entry
    return cls


class Encoder:
    """Encodes one value; large ``bytes`` are collected in ``buffers`` as their own frames."""

    __slots__ = ("buffers", "_threshold")

    def __init__(self, threshold: int = BUFFER_THRESHOLD) -> None:
        self.buffers: List[bytes] = []
        self._threshold = threshold

    def pack(self, value: Any, lift: int = 0) -> bytes:
        """Pack ``value``; ``bytes`` within ``lift`` levels of small containers become buffers."""
        if lift:
            value = self._lift(value, lift)
        elif type(value) is bytes and len(value) >= self._threshold:
            value = self._buffer(value)
        # A Packer of our own: msgpack.packb builds one with the same arguments, only slower.
        return msgpack.Packer(default=self._default, strict_types=True,
                              use_bin_type=True).pack(value)

    def _buffer(self, data: bytes) -> msgpack.ExtType:
        self.buffers.append(data)
        return msgpack.ExtType(EXT_BUFFER, msgpack.packb(len(self.buffers) - 1))

    def _lift(self, value: Any, depth: int) -> Any:
        """``value`` with its large ``bytes`` replaced by buffer references; the very same
        object when there are none (the common case allocates nothing)."""
        t = type(value)
        if t is bytes:
            return self._buffer(value) if len(value) >= self._threshold else value
        if not depth:
            return value
        if (t is list or t is tuple or t is dict) and len(value) <= 64:
            changed = None
            for k, v in (value.items() if t is dict else enumerate(value)):
                tv = type(v)
                if tv is bytes or tv is list or tv is tuple or tv is dict:
                    lifted = self._lift(v, depth - 1)
                    if lifted is not v:
                        if changed is None:
                            changed = dict(value) if t is dict else list(value)
                        changed[k] = lifted
            if changed is None:
                return value
            return tuple(changed) if t is tuple else changed
        return value

    def _ext(self, code: int, value: Any) -> msgpack.ExtType:
        return msgpack.ExtType(code, self.pack(value))

    def _default(self, obj: Any) -> Any:  # noqa: C901 - one table of types
        t = type(obj)
        if t is tuple:
            return self._ext(EXT_TUPLE, list(obj))
        if t is set:
            return self._ext(EXT_SET, list(obj))
        if t is frozenset:
            return self._ext(EXT_FROZENSET, list(obj))
        if t is int:
            return msgpack.ExtType(EXT_BIGINT, _int_text(obj))
        if t is dt.datetime:
            return msgpack.ExtType(EXT_DATETIME, obj.isoformat().encode())
        if t is dt.date:
            return msgpack.ExtType(EXT_DATE, obj.isoformat().encode())
        if t is dt.time:
            return msgpack.ExtType(EXT_TIME, obj.isoformat().encode())
        if t is dt.timedelta:
            return self._ext(EXT_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])
        if t is Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(obj).encode())
        if t is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if t is complex:
            return self._ext(EXT_COMPLEX, [obj.real, obj.imag])
        named = _named_by_type.get(t)
        if named is not None:
            return self._ext(EXT_NAMED, [named.name, named.to_data(obj)])
        # Subclasses of native types (IntEnum, str subclasses, OrderedDict…) travel as the base.
        for base in (bool, int, float, str, bytes, list, dict):
            if isinstance(obj, base):
                return base(obj)  # type: ignore[arg-type]
        if isinstance(obj, memoryview):
            return bytes(obj)
        if t.__name__ in _UNSENDABLE_KINDS and t.__module__ == "builtins":
            raise TypeError(
                f"cannot send a {t.__name__}: generators and coroutines cannot be returned or "
                "sent yet (no registration makes one travel); return a list of its values, or "
                "the awaited result")
        raise TypeError(
            f"cannot send a value of type {t.__module__}.{t.__qualname__}: "
            "register it with malacoda.register_type() on both ends"
        )


#: What no codec can send (no register_type() makes it travel): lazy values a method returned.
_UNSENDABLE_KINDS = frozenset({"generator", "coroutine", "async_generator"})


def _int_text(value: int) -> bytes:
    """The decimal text of an int outside 64 bits; ValueError beyond MAX_INT_DIGITS digits."""
    if value.bit_length() <= _MAX_INT_BITS:
        try:
            text = str(value).encode()
        except ValueError:  # beyond this process's sys.get_int_max_str_digits()
            text = b""
        if text and len(text.lstrip(b"-")) <= MAX_INT_DIGITS:
            return text
    raise ValueError(f"cannot send an int of {value.bit_length()} bits: an int travels as at "
                     f"most {MAX_INT_DIGITS} decimal digits; send it as bytes (int.to_bytes)")


class Decoder:
    """Decodes one body with its buffer frames, within the codec's limits."""

    __slots__ = ("_buffers", "_depth", "_max_length", "_items_left", "_collisions_left",
                 "_pairs")

    def __init__(self, buffers: Sequence[bytes] = (), max_length: int = MAX_LENGTH,
                 max_items: Optional[int] = None) -> None:
        self._buffers = buffers
        self._depth = 0
        self._max_length = max_length
        self._items_left = max_items  # None: containers are not counted
        self._collisions_left = MAX_COLLISIONS
        self._pairs = False  # maps come as pairs, checked (a map had a key not str or bin)

    def unpack(self, data: bytes) -> Any:
        if self._pairs:
            return self._unpack(data, True)
        # Maps whose keys are all str or bin are built by msgpack itself, the fast way: their
        # hashes are salted per process, so no collision can be aimed at them. A map with any
        # other key makes this decoder take maps as (key, value) pairs from then on, checked
        # before a dict is built of them, and this payload is decoded again that way (at most
        # twice the work in all: only work done before the first such key is repeated).
        items_left, collisions_left = self._items_left, self._collisions_left
        try:
            return self._unpack(data, False)
        except ValueError as exc:
            if "strict_map_key" not in str(exc):
                raise
        self._pairs = True
        self._items_left, self._collisions_left = items_left, collisions_left
        return self._unpack(data, True)

    def _unpack(self, data: bytes, pairs: bool) -> Any:
        limit = min(self._max_length, len(data))
        items = MAX_ITEMS
        hooks: Dict[str, Any] = {"object_pairs_hook": self._map} if pairs else {}
        if self._items_left is not None and (self._depth or len(data) >= _COUNT_FROM):
            items = min(items, self._items_left)
            hooks["list_hook"] = self._count
            if not pairs:
                hooks["object_hook"] = self._count
        return msgpack.unpackb(
            data,
            ext_hook=self._ext_hook,
            raw=False,
            strict_map_key=not pairs,
            max_str_len=limit,
            max_bin_len=limit,
            max_ext_len=limit,
            max_array_len=min(items, limit),
            max_map_len=min(items, limit // 2),
            **hooks,
        )

    def _count(self, container: Any) -> Any:
        left = self._items_left = (self._items_left or 0) - len(container)
        if left < 0:
            raise ValueError("more container items than this receiver accepts in one message")
        return container

    def _map(self, pairs: List[Tuple[Any, Any]]) -> Dict[Any, Any]:
        if self._items_left is not None:
            self._count(pairs)
        if len(pairs) > 1:
            self._distinct_hashes(list(map(_first, pairs)))
        return dict(pairs)

    def _distinct_hashes(self, keys: List[Any]) -> None:
        """Refuse ``keys`` when too many of them (with earlier ones) share a hash.

        A set of the keys' hashes costs one probe each (distinct ints hash to themselves), so
        it is safe to build whatever the keys are; the set or dict of the keys themselves is
        built only when it is as cheap.
        """
        shared = len(keys) - len(set(map(hash, keys)))
        if shared:
            left = self._collisions_left = self._collisions_left - shared
            if left < 0:
                raise ValueError(f"more than {MAX_COLLISIONS} set items or map keys whose hashes "
                                 "collide (or that repeat)")

    def _nested(self, data: bytes) -> Any:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_DEPTH}")
        try:
            return self.unpack(data)
        finally:
            self._depth -= 1

    def _ext_hook(self, code: int, data: bytes) -> Any:  # noqa: C901 - one table of types
        if code == EXT_TUPLE:
            return tuple(self._nested(data))
        if code == EXT_BUFFER:
            index = msgpack.unpackb(data)
            if type(index) is not int or not 0 <= index < len(self._buffers):
                raise ValueError(f"buffer reference {index!r} out of range")
            return self._buffers[index]
        if code == EXT_SET or code == EXT_FROZENSET:
            items = self._nested(data)
            if type(items) is not list:
                raise ValueError("a set's payload is an array")
            if len(items) > 1:
                self._distinct_hashes(items)
            return set(items) if code == EXT_SET else frozenset(items)
        if code == EXT_BIGINT:
            if len(data.lstrip(b"-")) > MAX_INT_DIGITS:
                raise ValueError(f"an int of more than {MAX_INT_DIGITS} digits")
            return int(data.decode("ascii"))
        if code == EXT_DATETIME:
            return dt.datetime.fromisoformat(data.decode())
        if code == EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == EXT_TIME:
            return dt.time.fromisoformat(data.decode())
        if code == EXT_TIMEDELTA:
            days, seconds, micro = self._nested(data)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micro)
        if code == EXT_DECIMAL:
            return Decimal(data.decode("ascii"))
        if code == EXT_UUID:
            return uuid.UUID(bytes=bytes(data))
        if code == EXT_COMPLEX:
            real, imag = self._nested(data)
            return complex(float(real), float(imag))
        if code == EXT_NAMED:
            name, value = self._nested(data)
            named = _named_by_name.get(name)
            if named is None:
                raise ValueError(f"unknown named type {name!r}: register it on both ends")
            if _may_hold_timestamp(data):
                _refuse_timestamps(value)  # its codec must not see one either
            return named.from_data(value)
        raise ValueError(f"unknown extension type {code}")


# Shared by every thread: Packer.pack runs without releasing the GIL and, for these packers
# (no ``default`` callback), without calling back into Python, so calls cannot interleave. A
# pack that raises resets the packer's buffer.
_plain = msgpack.Packer(use_bin_type=True)
# Packs only msgpack's native types, exactly (a tuple or a str subclass raises TypeError): what
# it packs decodes to the same value and type, so it can skip the Encoder.
_strict = msgpack.Packer(use_bin_type=True, strict_types=True)
_SCALARS = frozenset({str, float, bool, type(None)})
_SIMPLE = frozenset({str, float, bool, type(None), int})
_NOT_PACKED = (TypeError, OverflowError, ValueError)  # the strict packer's refusals
_NO_BUFFERS: List[bytes] = []  # shared, never appended to: encode's callers only read it


def _flat_and_small(items: Any) -> bool:
    """True if ``items`` holds only scalars and ``bytes`` too small to be buffers."""
    for v in items:
        t = type(v)
        if t not in _SIMPLE and (t is not bytes or len(v) >= BUFFER_THRESHOLD):
            return False
    return True


def encode(value: Any, lift: int = 2) -> Tuple[bytes, List[bytes]]:
    """``value`` → ``(body, buffers)``; large ``bytes`` up to ``lift`` levels deep are buffers."""
    t = type(value)
    if t in _SCALARS:  # the most common result: no buffers, no extension types
        return _plain.pack(value), _NO_BUFFERS
    if ((t is int or (t is bytes and len(value) < BUFFER_THRESHOLD))
            or (t is list and len(value) <= 16 and _flat_and_small(value))):
        try:
            return _strict.pack(value), _NO_BUFFERS
        except _NOT_PACKED:
            pass  # a big int: the Encoder has an extension type for it
    enc = Encoder()
    return enc.pack(value, lift), enc.buffers


def encode_call(args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[bytes, List[bytes]]:
    """The body of a ``call``, ``[args, kwargs]``, as :func:`encode` makes it, only quicker
    for the common call whose arguments are all scalars or small ``bytes``."""
    if (len(args) <= 16 and len(kwargs) <= 16 and _flat_and_small(args)
            and _flat_and_small(kwargs.values())):
        try:
            return _strict.pack([list(args), kwargs]), _NO_BUFFERS
        except _NOT_PACKED:
            pass  # a str subclass as a keyword name, a big int…: the full encoder decides
    return encode([list(args), kwargs], lift=3)


def _ext_entry(code: int, data: bytes) -> Any:
    return Decoder()._ext_hook(code, data)


_Timestamp = msgpack.Timestamp
_CONTAINERS = (list, tuple, set, frozenset)
#: The headers msgpack decodes as its Timestamp (extension -1 with 4, 8 or 12 bytes): fixext 4,
#: fixext 8, ext 8, ext 16 and ext 32. A body without one cannot hold a Timestamp. The pattern
#: starts with its literal 0xff and looks behind it, so that the search skips ahead quickly.
_TIMESTAMP_HEAD = re.compile(rb"\xff(?:(?<=[\xd6\xd7]\xff)|(?<=\xc7[\x04\x08\x0c]\xff)"
                             rb"|(?<=\xc8\x00[\x04\x08\x0c]\xff)|(?<=\xc9\x00\x00\x00[\x04\x08\x0c]\xff))")


def _may_hold_timestamp(body: Any) -> bool:
    """False when ``body`` surely holds no msgpack Timestamp: most bodies have no ``0xff`` byte
    at all (``0xff in body``, a memchr: ``b"\\xff" in body`` takes ten times longer), and the
    rest rarely one of the headers."""
    return 0xff in body and _TIMESTAMP_HEAD.search(body) is not None


def _refuse_timestamps(value: Any) -> None:
    """Raise ValueError if ``value`` holds a ``msgpack.Timestamp``.

    msgpack decodes its own extension type -1 itself, without asking ``ext_hook``, so the
    codec's closed list of types needs this check. :func:`decode` makes it after decoding, only
    for a body that may hold one (:func:`_may_hold_timestamp`): iterative, so that deep nesting
    cannot exhaust the stack.
    """
    todo = [value]
    while todo:
        item = todo.pop()
        t = type(item)
        if t is _Timestamp:
            raise ValueError("msgpack's Timestamp (extension type -1) is not one of the codec's "
                             "types: send a datetime (extension type 4) instead")
        if t in _CONTAINERS:
            todo.extend(item)
        elif t is dict:
            todo.extend(item.keys())
            todo.extend(item.values())


def decode(body: bytes, buffers: Sequence[bytes] = (), max_items: Optional[int] = None) -> Any:
    """``(body, buffers)`` → value. Raises :class:`ProtocolError` for anything malformed.

    ``max_items`` caps the items of all containers together (a daemon passes
    ``MAX_REQUEST_ITEMS``); None leaves only the per-container limit.
    """
    try:
        if not buffers and len(body) < _COUNT_FROM:
            # Small: msgpack's own limits (each length at most the body's) are the codec's,
            # and too few bytes to amplify; extension types get a decoder of their own.
            value = msgpack.unpackb(body, ext_hook=_ext_entry, raw=False, strict_map_key=False)
        else:
            value = Decoder(buffers, max_items=max_items).unpack(body)
        if 0xff in body and _TIMESTAMP_HEAD.search(body):  # inline: it runs for every body
            _refuse_timestamps(value)
        return value
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError,
            UnicodeDecodeError, msgpack.UnpackException) as exc:  # Decimal("zz"): ArithmeticError
        raise ProtocolError(f"undecodable body: {exc or type(exc).__name__}") from None


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
            raise ProtocolError(f"unsupported protocol version {head[3]}: this end speaks "
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
                   else _NO_BUFFERS, head)


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
        return Reply(rid, status, incarnation, body, _NO_BUFFERS, max_items)
    reply = Reply(rid, status, incarnation, body, frames[1:], max_items)
    if max_message is not None:
        size = sum(map(len, frames))
        if size > max_message:
            reply.body, reply.buffers = b"\xc0", _NO_BUFFERS
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
