"""A client written from docs/protocol.md alone (plain pyzmq + msgpack) talks to a daemon."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from malacoda.runtime import Registry

SIG = b"MLC\x02"


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


def receive(sock):
    head, *buffers = sock.recv_multipart()
    assert head[:4] == SIG
    rid, status, incarnation, body = msgpack.unpackb(head[4:])
    return rid, status, incarnation, msgpack.unpackb(body, strict_map_key=False), buffers


def ask(sock, rid, op, name=None, body=None, timeout=None, *buffers):
    envelope = [rid, op, name, timeout, msgpack.packb(body)]
    sock.send_multipart([SIG + msgpack.packb(envelope), *buffers])
    reply = receive(sock)
    assert reply[0] == rid
    return reply


def test_documented_call(raw):
    rid, status, incarnation, body, _ = ask(raw, b"1", "call", "add", [[1], {"b": 41}], 2000)
    assert status == 0 and len(incarnation) == 16 and body == 42


def test_documented_operations(raw):
    assert ask(raw, b"p", "ping")[3] == "pong"
    assert ask(raw, b"g", "get", "constant")[3] == 10
    assert ask(raw, b"s", "set", "constant", 12)[1] == 0
    assert ask(raw, b"g2", "get", "constant")[3] == 12
    description = ask(raw, b"d", "describe")[3]
    assert description["methods"]["add"]["params"] == [["a", 1, None], ["b", 1, "2"]]
    assert "constant" in description["attributes"]


def test_documented_statuses(raw):
    _, status, _, body, _ = ask(raw, b"e", "call", "fail_value", [[], {}])
    assert status == 1 and body["type"] == "ValueError" and body["module"] == "builtins"
    assert ask(raw, b"d", "get", "_malacoda_paths")[1] == 3
    assert ask(raw, b"b", "call", "add", "not a list")[1] == 4
    assert ask(raw, b"u", "exec", "add")[1] == 5
    # Another version: BAD_VERSION, addressed to the id (version 1 kept it in frame 1's map).
    raw.send_multipart([b"MLC\x01", msgpack.packb({"i": b"v", "o": "ping"}), b"\xc0"])
    assert receive(raw)[:2] == (b"v", 6)
    raw.send(b"MLC\x03" + msgpack.packb([b"v3", "ping", None, None, b"\xc0"]))
    assert receive(raw)[:2] == (b"v3", 6)


def test_buffer_frames(raw):
    big = b"\x01" * 100000
    ext = msgpack.ExtType(12, msgpack.packb(0))
    _, status, _, body, buffers = ask(raw, b"x", "call", "echo", [[ext], {}], None, big)
    assert status == 0 and body == msgpack.ExtType(12, msgpack.packb(0)) and buffers == [big]


def test_documented_example_bytes():
    """The hex example in docs/protocol.md is the frame this codec's rules give."""
    from tests.support import ROOT

    doc = " ".join((ROOT / "docs" / "protocol.md").read_text().split())
    body = msgpack.packb([["hi"], {}])
    frame = SIG + msgpack.packb([b"\0" * 7 + b"\1", "call", "insert_message", 2000, body])
    assert frame.hex(" ") in doc
    reply = SIG + msgpack.packb([b"\0" * 7 + b"\1", 0, "a1b2c3d4e5f60718",
                                 msgpack.packb("Message received!")])
    assert reply.hex(" ") in doc
