"""A client written from docs/protocol.md alone (plain pyzmq + msgpack) talks to a daemon."""

from __future__ import annotations

import json
import os

import msgpack
import pytest

from malacoda.host.registry import Registry
from tests.support import ROOT

SIG = b"MLC\x02"


@pytest.fixture
def raw(start_daemon, dealer):
    """The DEALER socket alone: what is sent and read on it follows docs/protocol.md only."""
    start_daemon()
    # docs/protocol.md, "Authentication": the registry entry (JSON) gives the port and the
    # secret; the client speaks ZAP PLAIN, user "malacoda", the secret as password.
    entry = json.loads(open(os.path.join(os.environ["MALACODA_HOME"], "run", "registry",
                                         "TestDaemon.json"), "rb").read())
    return dealer(entry["port"], secret=entry["secret"].encode(), timeout=10).sock


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


def echo_raw(sock, rid, value):
    """Call echo(value) with ``value`` already msgpack (extensions as ExtType); the reply's
    status and its result undecoded beyond msgpack (extensions stay ExtType)."""
    _, status, _, body, buffers = ask(sock, rid, "call", "echo", [[value], {}], 5000)
    return status, body, buffers


def test_documented_extension_payloads(raw):
    """Each payload as docs/protocol.md spells it (raw text, raw 16 bytes, msgpack arrays)
    is read as that type: the daemon echoes the very same extension back."""
    doc = " ".join((ROOT / "docs" / "protocol.md").read_text().split())
    cases = [
        (1, msgpack.packb([1, 2])),                     # tuple: a msgpack array
        (2, msgpack.packb([3])),                        # set
        (3, msgpack.packb([4])),                        # frozenset
        (4, b"2024-01-02T03:04:05"),                    # datetime: raw text
        (4, b"2024-01-02T03:04:05.000006+02:00"),
        (5, b"2024-01-02"),
        (6, b"03:04:05"),
        (7, msgpack.packb([1, 2, 3])),                  # timedelta
        (8, b"1.10"),                                   # Decimal: raw text
        (9, bytes(15) + b"\x01"),                       # UUID: raw 16 bytes
        (10, msgpack.packb([1.0, 2.0])),                # complex
        (11, b"18446744073709551616"),                  # big int: raw decimal text
    ]
    for n, (code, payload) in enumerate(cases):
        ext = msgpack.ExtType(code, payload)
        status, body, _ = echo_raw(raw, b"ext%d" % n, ext)
        assert status == 0 and body == ext, (code, payload, body)
    for code, payload in cases[:2] + cases[5:9] + cases[10:11]:  # the table's hex examples
        assert msgpack.packb(msgpack.ExtType(code, payload)).hex(" ") in doc, code
    status, body, _ = echo_raw(raw, b"z", msgpack.ExtType(4, b"not a date"))
    assert status == 4  # BAD_REQUEST


def test_an_unaddressable_bad_request_goes_to_the_empty_id(raw):
    raw.send(SIG + msgpack.packb([b"i" * 65, "ping", None, None, b"\xc0"]))
    rid, status, _, body, _ = receive(raw)
    assert (rid, status) == (b"", 4) and "64 bytes" in body["message"]


def test_nil_bodies_are_a_bin_holding_c0(raw):
    raw.send(SIG + msgpack.packb([b"n1", "get", "constant", None, b"\xc0"]))
    assert receive(raw)[:2] == (b"n1", 0)
    raw.send(SIG + msgpack.packb([b"n2", "get", "constant", None, None]))  # a bare nil
    rid, status, _, body, _ = receive(raw)
    assert (rid, status) == (b"n2", 4) and "bin" in body["message"]


def test_array_map_keys_must_be_tuples(raw):
    bad = SIG + msgpack.packb([b"k1", "call", "echo", 5000, b"\x92\x91\x81\x92\x01\x02\x03\x80"])
    raw.send(bad)  # [[{[1, 2]: 3}], {}]
    rid, status, _, body, _ = receive(raw)
    assert (rid, status) == (b"k1", 4) and "unhashable" in body["message"]
    body = bytes.fromhex("92 91 81 c7 03 01 92 01 02 03 80")  # the key as ext 1, as documented
    raw.send(SIG + msgpack.packb([b"k2", "call", "echo", 5000, body]))
    rid, status, _, result, _ = receive(raw)
    assert (rid, status) == (b"k2", 0)
    assert result == {msgpack.ExtType(1, b"\x92\x01\x02"): 3}


def test_the_registry_incarnation_is_the_replies(raw):
    incarnation = ask(raw, b"inc", "ping")[2]
    assert Registry().lookup("TestDaemon").incarnation == incarnation
    assert len(incarnation) == 16 and int(incarnation, 16) >= 0


def test_replies_use_buffer_frames_up_to_64_items(raw):
    big = b"\x02" * (32 << 10)
    refs = [msgpack.ExtType(12, msgpack.packb(i)) for i in range(65)]
    _, status, _, body, buffers = ask(raw, b"b64", "call", "echo", [[refs[:64]], {}], 5000,
                                      *([big] * 64))
    assert status == 0 and body == refs[:64] and buffers == [big] * 64  # 64 items: frames
    _, status, _, body, buffers = ask(raw, b"b65", "call", "echo", [[refs], {}], 5000,
                                      *([big] * 65))
    assert status == 0 and body == [big] * 65 and buffers == []  # 65: inline bins
