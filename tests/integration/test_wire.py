"""A client written from docs/protocol.md alone (plain pyzmq + msgpack) talks to a daemon."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from malacoda.runtime import Registry


@pytest.fixture
def raw(start_daemon):
    start_daemon()
    entry = Registry().lookup("TestDaemon")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(f"tcp://127.0.0.1:{entry.port}")
    yield sock
    sock.close(0)
    ctx.term()


def ask(sock, header, body=None, *buffers):
    sock.send_multipart([b"MLC\x01", msgpack.packb(header), msgpack.packb(body), *buffers])
    sig, head, payload, *rest = sock.recv_multipart()
    assert sig == b"MLC\x01"
    return msgpack.unpackb(head), msgpack.unpackb(payload, strict_map_key=False), rest


def test_documented_call(raw):
    head, body, _ = ask(raw, {"i": b"1", "o": "call", "n": "add", "t": 2000}, [[1], {"b": 41}])
    assert head["i"] == b"1" and head["s"] == 0 and len(head["c"]) == 16
    assert body == 42


def test_documented_operations(raw):
    assert ask(raw, {"i": b"p", "o": "ping"})[1] == "pong"
    assert ask(raw, {"i": b"g", "o": "get", "n": "constant"})[1] == 10
    assert ask(raw, {"i": b"s", "o": "set", "n": "constant"}, 12)[0]["s"] == 0
    assert ask(raw, {"i": b"g2", "o": "get", "n": "constant"})[1] == 12
    description = ask(raw, {"i": b"d", "o": "describe"})[1]
    assert description["methods"]["add"]["params"] == [["a", 1, None], ["b", 1, "2"]]
    assert "constant" in description["attributes"]


def test_documented_statuses(raw):
    head, body, _ = ask(raw, {"i": b"e", "o": "call", "n": "fail_value"}, [[], {}])
    assert head["s"] == 1 and body["type"] == "ValueError" and body["module"] == "builtins"
    assert ask(raw, {"i": b"d", "o": "get", "n": "_malacoda_paths"})[0]["s"] == 3
    assert ask(raw, {"i": b"b", "o": "call", "n": "add"}, "not a list")[0]["s"] == 4
    assert ask(raw, {"i": b"u", "o": "exec", "n": "add"})[0]["s"] == 5
    raw.send_multipart([b"MLC\x02", msgpack.packb({"i": b"v", "o": "ping"}), b"\xc0"])
    sig, head, _ = raw.recv_multipart()[:3]
    assert msgpack.unpackb(head)["s"] == 6


def test_buffer_frames(raw):
    big = b"\x01" * 100000
    ext = msgpack.ExtType(12, msgpack.packb(0))
    head, body, buffers = ask(raw, {"i": b"x", "o": "call", "n": "echo"}, [[ext], {}], big)
    assert head["s"] == 0 and body == msgpack.ExtType(12, msgpack.packb(0)) and buffers == [big]
