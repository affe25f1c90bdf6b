"""The values of the Malacoda wire protocol (see :mod:`malacoda.wire.protocol` for the envelope).

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

import datetime as dt
import operator
import re
import uuid
from decimal import Decimal
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack

from malacoda.errors import ProtocolError
from malacoda.wire.named import by_name as _named_by_name
from malacoda.wire.named import by_type as _named_by_type
from malacoda.wire.named import register_type as register_type  # the public name, re-exported

_first = operator.itemgetter(0)
MAX_LENGTH = 1 << 30  # one str / bin / ext payload
MAX_ITEMS = 1 << 24  # items in one array or map
MAX_DEPTH = 64  # nesting of containers, extension types included
MAX_REQUEST_ITEMS = 1 << 20  # items in all containers of one request body, as a daemon decodes it
_COUNT_FROM = 4096  # bodies smaller than this cannot amplify much: their items are not counted
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

    def _default(self, obj: Any) -> Any:
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
        if t.__name__ == "generator" and t.__module__ == "builtins":
            raise TypeError(
                "cannot send a generator inside a value: a method that returns (or is) a "
                "generator streams its items, but a generator within a list, a map or an "
                "argument cannot travel (no registration makes one); return it alone")
        if t.__name__ in _UNSENDABLE_KINDS and t.__module__ == "builtins":
            raise TypeError(
                f"cannot send a {t.__name__} inside a value: an async def method's coroutine is "
                "awaited on the daemon and an async generator streams, but one within a list, a "
                "map or an argument cannot travel (no registration makes one); return the "
                "awaited result")
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

    def _ext_hook(self, code: int, data: bytes) -> Any:
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
NO_BUFFERS: List[bytes] = []  # shared, never appended to: encode's callers only read it


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
        return _plain.pack(value), NO_BUFFERS
    if ((t is int or (t is bytes and len(value) < BUFFER_THRESHOLD))
            or (t is list and len(value) <= 16 and _flat_and_small(value))):
        try:
            return _strict.pack(value), NO_BUFFERS
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
            return _strict.pack([list(args), kwargs]), NO_BUFFERS
        except _NOT_PACKED:
            pass  # a str subclass as a keyword name, a big int…: the full encoder decides
    return encode([list(args), kwargs], lift=3)


def encode_item(value: Any) -> bytes:
    """One stream item, encoded inline (no buffer frames): ITEMS replies are one frame."""
    t = type(value)
    if t in _SCALARS:
        return _plain.pack(value)
    if t is int or t is bytes:
        try:
            return _strict.pack(value)
        except _NOT_PACKED:
            pass
    return Encoder(threshold=MAX_LENGTH + 1).pack(value)


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
