"""The codec and message framing, without sockets."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import uuid
from decimal import Decimal

import msgpack
import pytest

from malacoda.errors import ProtocolError
from malacoda.wire import codec
from malacoda.wire import protocol as p

VALUES = [
    None, True, 0, 2**63 - 1, -(2**63), 2**64, -(2**200), 0.1, "", "é", b"", b"\x00" * 10,
    [], [1, [2, [3]]], (), (1, (2,)), {}, {"k": {"n": [1]}}, {1: 2, (1, 2): 3, None: 4},
    set(), {1, "a"}, frozenset({(1, 2)}), dt.datetime(2020, 1, 2, 3, 4, 5, 6),
    dt.datetime(2020, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
    dt.date(1999, 12, 31), dt.time(0, 0, 0, 1), dt.time(12, tzinfo=dt.timezone.utc),
    dt.timedelta(days=-1, seconds=1, microseconds=1), Decimal("-0.000"), Decimal("Infinity"),
    uuid.uuid4(), complex(0, -1.5),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_keeps_type_and_value(value):
    body, buffers = codec.encode(value)
    result = codec.decode(body, buffers)
    assert result == value and type(result) is type(value)
    if isinstance(value, dt.datetime):
        assert result.utcoffset() == value.utcoffset()


def test_large_bytes_travel_as_their_own_frame():
    big = b"x" * (1 << 20)
    frames = p.request_frames(b"id", p.CALL, "echo", [[big], {}], None)
    assert len(frames) == 2 and frames[1] is big  # no copy on the way out
    request = p.parse_request(frames)
    assert codec.decode(request.body, request.buffers) == [[big], {}]


def test_unknown_types_are_refused_not_pickled():
    class Thing:
        pass

    with pytest.raises(TypeError, match="register_type"):
        codec.encode(Thing())


def test_registered_dataclass_round_trips():
    @dataclasses.dataclass
    class Point:
        x: int
        y: tuple

    codec.register_type(Point, name="tests.Point")
    body, buffers = codec.encode([Point(1, (2, 3))])
    assert codec.decode(body, buffers) == [Point(1, (2, 3))]


def test_unregistered_named_type_is_an_error():
    payload = msgpack.packb(["os.system", "id"])
    body = msgpack.packb(msgpack.ExtType(codec.EXT_NAMED, payload))
    with pytest.raises(ProtocolError, match="unknown named type"):
        codec.decode(body)


@pytest.mark.parametrize("body", [
    pickle.dumps(("x",)),
    b"\xc1",  # never used in msgpack
    b"\xdb\xff\xff\xff\xff",  # a str declaring 4 GiB, with no data
    msgpack.packb(msgpack.ExtType(99, b"")),
    msgpack.packb(msgpack.ExtType(codec.EXT_BUFFER, msgpack.packb(5))),
    msgpack.packb(msgpack.ExtType(codec.EXT_BIGINT, b"9" * 10000)),
    msgpack.packb(msgpack.ExtType(codec.EXT_DECIMAL, b"zz")),  # InvalidOperation, not a ValueError
])
def test_garbage_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        codec.decode(body)


def test_nesting_depth_is_limited():
    body = msgpack.packb([])
    for _ in range(codec.MAX_DEPTH + 5):  # a tuple in a tuple in a tuple ...
        body = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, msgpack.packb([msgpack.ExtType(
            codec.EXT_TUPLE, body)])))
    with pytest.raises(ProtocolError, match="deeper"):
        codec.decode(body)
    shallow = (((1,),),)
    assert codec.decode(*codec.encode(shallow)) == shallow


def _head(*items):
    return b"MLC\x02" + msgpack.packb(list(items))


@pytest.mark.parametrize("frames, match", [
    ([], "at least 1 frame"),
    ([b"XXXX"], "signature"),
    ([b"MLC\x09" + msgpack.packb([b"1", "ping", None, None, b"\xc0"])], "version 9"),
    ([b"MLC\x01", msgpack.packb({"i": b"1", "o": "ping"}), b"\xc0"], "version 1"),
    ([b"MLC\x02" + msgpack.packb({"i": b"1"})], "envelope"),
    ([b"MLC\x02\xc1"], "envelope"),
    ([_head(b"1", "get", None, None)], "5 items"),
    ([_head("1", "get", None, None, b"\xc0")], "request id"),
    ([_head(b"1" * 65, "get", None, None, b"\xc0")], "request id"),
    ([_head(b"1", 1, None, None, b"\xc0")], "operation"),
    ([_head(b"1", "get", 1, None, b"\xc0")], "name"),
    ([_head(b"1", "get", "x", -1, b"\xc0")], "timeout"),
    ([_head(b"1", "get", "x", None, "\xc0")], "body"),
    ([_head(b"1", "get", "x", None, [1])], "body"),
])
def test_bad_requests_are_named(frames, match):
    with pytest.raises(ProtocolError, match=match):
        p.parse_request(frames)


def test_a_large_envelope_cannot_nest_arrays():
    # A tree of 5-item arrays: ~20 KB on the wire, ~1.2 MB of list objects once decoded.
    tree: list = []
    for _ in range(6):
        tree = [tree] * 5
    head = b"MLC\x02" + msgpack.packb([b"1", "get", "x", None, tree])
    assert len(head) > 4096
    with pytest.raises(ProtocolError, match="envelope"):
        p.parse_request([head])


def test_request_and_reply_round_trip():
    frames = p.request_frames(b"r1", p.CALL, "add", None, 1500, codec.encode_call((1, (2,)), {"k": 3}))
    request = p.parse_request(frames)
    assert (request.rid, request.op, request.name, request.timeout_ms) == (b"r1", "call", "add", 1500)
    assert codec.decode(request.body, request.buffers) == [[1, (2,)], {"k": 3}]
    reply = p.parse_reply(p.reply_frames(b"r1", p.OK, "inc", {"a": (1,)}))
    assert (reply.rid, reply.status, reply.incarnation) == (b"r1", p.OK, "inc")
    assert reply.value() == {"a": (1,)}


class StrSub(str):
    pass


class IntSub(int):
    pass


@pytest.mark.parametrize("args, kwargs", [
    ((), {}), (("s", 1, 2.5, None, True, b"b"), {"x": "y"}), ((2**64,), {}), ((1,), {2: 3}),
    ((True, False, 1, 0), {}), ((StrSub("x"), IntSub(3)), {"k": StrSub("v")}),
    (((1, 2),), {}), (([1, (2,)],), {}), ((b"x" * codec.BUFFER_THRESHOLD,), {}),
])
def test_encode_call_is_encode(args, kwargs):
    # repr tells True from 1 and a tuple from a list, which == does not.
    assert repr(codec.decode(*codec.encode_call(args, kwargs))) == repr([list(args), kwargs])
    if args and type(args[0]) is bytes and len(args[0]) >= codec.BUFFER_THRESHOLD:
        assert codec.encode_call(args, kwargs)[1] == [args[0]]


def test_peek_finds_the_id_of_a_bad_request():
    assert p.peek_request_id([_head(b"abc", 1, 2)]) == b"abc"
    assert p.peek_request_id([b"MLC\x01", msgpack.packb({"i": b"old"}), b""]) == b"old"
    assert p.peek_request_id([b"MLC\x02\xc1"]) == b""


def test_error_body_keeps_builtin_args():
    body = p.error_body(KeyError("k"), "tb")
    assert body["type"] == "KeyError" and body["module"] == "builtins" and body["args"] == ["k"]


def test_peek_decodes_nothing_but_the_id():
    """An envelope whose first item is an array of a million empty arrays (1 MB on the wire,
    ~60 MB as lists) is not decoded to look for an id."""
    import tracemalloc

    n = 1 << 20
    head = b"MLC\x02\x91\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    tracemalloc.start()
    try:
        assert p.peek_request_id([head]) == b""
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert p.peek_request_id([b"MLC\x02" + msgpack.packb([b"x" * 64, 1])]) == b"x" * 64
    assert p.peek_request_id([b"MLC\x02" + msgpack.packb([b"x" * 65, 1])]) == b""
    assert p.peek_request_id([b"MLC\x01", b"\x81\xa1i" + b"\x90" * 5000, b""]) == b""


TIMESTAMPS = [msgpack.Timestamp(1, 0), msgpack.Timestamp(2**33, 5), msgpack.Timestamp(-1, 0)]


@pytest.mark.parametrize("where", ["alone", "in a list", "a dict value", "a dict key",
                                   "in a tuple", "in a set", "in a large body"])
def test_msgpacks_own_timestamp_is_refused(where):
    """Extension -1 is decoded by msgpack itself (ext_hook never sees it): the codec's list of
    types is closed, so it is refused, in every place it can hide."""
    for ts in TIMESTAMPS:
        ext = msgpack.packb(ts)  # fixext4, fixext8 or ext8 with 12 bytes
        if where == "alone":
            body = ext
        elif where == "in a list":
            body = b"\x92\x01" + ext
        elif where == "a dict value":
            body = b"\x81\xa1k" + ext
        elif where == "a dict key":
            body = b"\x81" + ext + b"\x01"
        elif where == "in a tuple":
            body = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, b"\x91" + ext))
        elif where == "in a set":
            body = msgpack.packb(msgpack.ExtType(codec.EXT_SET, b"\x91" + ext))
        else:
            body = b"\x92" + msgpack.packb("x" * 5000) + ext
        with pytest.raises(ProtocolError, match="Timestamp"):
            codec.decode(body)
        with pytest.raises(ProtocolError, match="Timestamp"):
            codec.decode(body, max_items=codec.MAX_REQUEST_ITEMS)


@pytest.mark.parametrize("header", [b"\xd6\xff", b"\xd7\xff", b"\xc7\x04\xff", b"\xc7\x08\xff",
                                    b"\xc7\x0c\xff", b"\xc8\x00\x04\xff", b"\xc8\x00\x0c\xff",
                                    b"\xc9\x00\x00\x00\x08\xff"])
def test_every_encoding_of_a_timestamp_is_refused(header):
    """msgpack takes extension -1 of 4, 8 or 12 bytes as a Timestamp whatever its ext format."""
    size = {0xd6: 4, 0xd7: 8}.get(header[0], header[-2])
    ext = header + b"\x00" * size
    assert type(msgpack.unpackb(ext)) is msgpack.Timestamp  # what msgpack itself makes of it
    with pytest.raises(ProtocolError, match="Timestamp"):
        codec.decode(b"\x92\xa1x" + ext)


def test_an_unknown_exception_keeps_its_nearest_builtin_family():
    """A type that cannot be made from a message alone (UnicodeDecodeError) gives the nearest
    ancestor that can; an older daemon's map (no "builtin") still gives a RemoteError."""
    from malacoda.client.replies import remote_exception
    from malacoda.errors import RemoteError

    class Odd(UnicodeDecodeError):
        pass

    body = p.error_body(Odd("utf-8", b"\xff", 0, 1, "bad"))
    assert body["builtin"] == "UnicodeDecodeError"
    exc = remote_exception(body)
    assert isinstance(exc, RemoteError) and isinstance(exc, UnicodeError)
    del body["builtin"]
    assert type(remote_exception(body)) is RemoteError
