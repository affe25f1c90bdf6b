"""The streams extension on the wire, as docs/protocol.md gives it: a plain pyzmq + msgpack
client (the worked hex example), an older client, and hostile clients that must stay bounded."""

from __future__ import annotations

import json
import os
import time

import msgpack
import psutil
import pytest
import zmq

import malacoda
from tests.support import wait_for

SIG = b"MLC\x02"
STREAM, ITEMS, END = 8, 9, 10


def _entry(name="StreamDaemon"):
    path = os.path.join(os.environ["MALACODA_HOME"], "run", "registry", f"{name}.json")
    with open(path, "rb") as f:
        return json.loads(f.read())


class Raw:
    """A DEALER written from docs/protocol.md alone."""

    def __init__(self, ctx, entry):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10000)
        self.sock.plain_username = b"malacoda"
        self.sock.plain_password = entry["secret"].encode()
        self.sock.connect(f"tcp://127.0.0.1:{entry['port']}")

    def send(self, rid, op, name=None, body=None, timeout=None):
        self.sock.send(SIG + msgpack.packb([rid, op, name, timeout, msgpack.packb(body)]))

    def receive(self):
        head = self.sock.recv()
        assert head[:4] == SIG
        rid, status, incarnation, body = msgpack.unpackb(head[4:])
        return rid, status, incarnation, msgpack.unpackb(body, strict_map_key=False)

    def close(self):
        self.sock.close(0)


@pytest.fixture
def raw(start_daemon):
    proc = start_daemon("StreamDaemon", lease=1.0)
    ctx = zmq.Context()
    clients = []

    def make():
        client = Raw(ctx, _entry())
        clients.append(client)
        return client

    make.proc = proc
    yield make
    for client in clients:
        client.close()
    ctx.term()


def test_the_documented_example_byte_by_byte(raw):
    """docs/protocol.md, "Example: a stream, byte by byte": the same bytes each way (but the
    incarnation, this daemon's own)."""
    c = raw()
    c.sock.send(bytes.fromhex("4d4c430295c4080000000000000007a463616c6ca47461696cc0c40492910280"))
    opened = c.sock.recv()
    incarnation = msgpack.unpackb(opened[4:])[2].encode()
    assert len(incarnation) == 16

    def doc(hex_text):
        return bytes.fromhex(hex_text).replace(b"a1b2c3d4e5f60718", incarnation)

    # the example's lease is the default 10000 ms; this daemon's is 1000 (cd 03 e8)
    assert opened == doc("4d4c430294c408000000000000000708b06131623263336434653566363037"
                         "3138c41482a677696e646f77cd0400a56c65617365cd2710"
                         ).replace(b"\xcd\x27\x10", b"\xcd\x03\xe8")
    c.sock.send(bytes.fromhex("4d4c430295c4080000000000000007a6637265646974c0c0c40110"))
    first = c.sock.recv()
    if first == doc("4d4c430294c408000000000000000709b061316232633364346535663630"
                    "373138c407920092a161a162"):  # [0, ["a", "b"]]
        pass
    else:  # the doc's other case: [0, ["a"]], then [1, ["b"]]
        assert first == doc("4d4c430294c408000000000000000709b061316232633364346535663630"
                            "373138c405920091a161")
        assert c.sock.recv() == doc("4d4c430294c408000000000000000709b0613162326333643465356636"
                                    "30373138c405920191a162")
    assert c.sock.recv() == doc("4d4c430294c40800000000000000070ab061316232633364346535663630"
                                "373138c40102")


def test_the_documented_cancel(raw):
    c = raw()
    d = malacoda.get("StreamDaemon", timeout=10)
    c.sock.send(bytes.fromhex("4d4c430295c4080000000000000007a463616c6ca7656e646c657373c0c403"
                              "929080"))  # endless(): [[], {}]
    assert c.receive()[1] == STREAM
    c.send(bytes(7) + b"\x07", "credit", body=1)
    assert c.receive()[1:4:2] == (ITEMS, [0, [0]])
    c.sock.send(bytes.fromhex("4d4c430295c4080000000000000007a663616e63656cc0c0c401c0"))
    wait_for(lambda: d.closed_streams == 1, timeout=2, what="the generator's finally")


def test_credit_paces_the_producer_and_cancel_closes_it(raw):
    c = raw()
    c.send(b"s1", "call", "endless", [[], {}])
    assert c.receive()[1] == STREAM
    d = malacoda.get("StreamDaemon", timeout=10)
    time.sleep(0.2)
    assert d.produced == 0  # no credit yet: nothing produced
    c.send(b"s1", "credit", body=3)
    got = []
    while len(got) < 3:
        _, status, _, (first, items) = c.receive()
        assert status == ITEMS and first == len(got)
        got.extend(items)
    assert got == [0, 1, 2]
    time.sleep(0.2)
    assert d.produced == 3  # exactly the credit
    c.send(b"s1", "credit", body=10**9)  # more than the window: cut to it
    wait_for(lambda: d.produced >= 3 + 1024, what="the window's worth")
    time.sleep(0.2)
    assert d.produced == 3 + 1024  # the client reads nothing: the producer waits
    c.send(b"s1", "cancel")
    wait_for(lambda: d.closed_streams == 1, timeout=2, what="the cancel to close the generator")
    assert d.open_streams() == 0


def test_a_credit_for_an_unknown_stream_is_an_error_and_a_cancel_is_ignored(raw):
    c = raw()
    c.send(b"nope", "cancel")
    c.send(b"nope", "credit", body=1)
    rid, status, _, body = c.receive()
    assert (rid, status) == (b"nope", 1) and body["type"] == "LookupError"
    c.send(b"bad", "credit", body="many")
    assert c.receive()[1] == 4  # BAD_REQUEST


def test_an_older_client_gets_status_8_and_the_stream_expires(raw):
    """A client of the version before streams: it never grants credit nor pings; nothing is
    produced, and the daemon drops the stream after its lease (1 s here)."""
    c = raw()
    c.send(b"old-1234", "call", "count", [[10], {}])
    rid, status, _, body = c.receive()
    assert status == STREAM
    c.send(b"old-ok", "call", "echo", [["still works"], {}])
    assert c.receive()[3] == "still works"
    d = malacoda.get("StreamDaemon", timeout=10)
    assert d.produced == 0
    wait_for(lambda: d.open_streams() == 0, timeout=3, what="the lease to run out")


def test_thousands_of_streams_are_bounded(raw):
    """A hostile client opening streams without end: 64 per connection, max_streams in all
    (1024), each beyond answered BUSY; the daemon's memory stays bounded."""
    d = malacoda.get("StreamDaemon", timeout=30)
    pid = d.pid()
    rss_before = psutil.Process(pid).memory_info().rss
    clients = [raw() for _ in range(20)]
    statuses = {}
    for k, c in enumerate(clients):
        for i in range(100):
            c.send(b"h%d-%d" % (k, i), "call", "endless", [[], {}])
    for c in clients:
        for _ in range(100):
            status = c.receive()[1]
            statuses[status] = statuses.get(status, 0) + 1
    assert statuses == {STREAM: 1024, 2: 2000 - 1024}  # 64 per connection, 1024 in all
    assert d.open_streams() == 1024
    assert d.echo("still answers") == "still answers"
    growth = psutil.Process(pid).memory_info().rss - rss_before
    assert growth < 64 << 20, growth
    for c in clients:  # silent from now on: the lease closes them all
        c.close()
    silent = time.monotonic()
    wait_for(lambda: d.open_streams() == 0, timeout=5, what="the leases to run out")
    print(f"\nFIGURES {{\"test\": \"2000 streams opened\", \"open\": 1024, \"busy\": 976, "
          f"\"rss_growth_kib\": {growth >> 10}, \"all_closed_after_s\": "
          f"{time.monotonic() - silent:.2f}}}")


def test_max_streams_caps_the_daemon(start_daemon):
    start_daemon("StreamDaemon", lease=1.0, max_streams=10)
    ctx = zmq.Context()
    clients = [Raw(ctx, _entry()) for _ in range(3)]
    try:
        got = []
        for k, c in enumerate(clients):
            for i in range(5):
                c.send(b"m%d-%d" % (k, i), "call", "endless", [[], {}])
                got.append(c.receive()[1])
        assert got.count(STREAM) == 10 and got.count(2) == 5
    finally:
        for c in clients:
            c.close()
        ctx.term()


def test_subscribing_without_reading_is_bounded(raw):
    """A subscriber that grants credit once and never reads: the daemon keeps its window in
    flight and 1024 events (1 MiB) queued, whatever is published."""
    c = raw()
    c.send(b"sub-1", "call", "subscribe", [["flood"], {}])
    assert c.receive()[1] == STREAM
    c.send(b"sub-1", "credit", body=1024)
    d = malacoda.get("StreamDaemon", timeout=60)
    pid = d.pid()
    d.announce_many("flood", 1000)
    rss_before = psutil.Process(pid).memory_info().rss
    for _ in range(5):
        d.announce_many("flood", 20000)
        c.send(b"sub-1", "credit", body=0)  # alive, never reading
    growth = psutil.Process(pid).memory_info().rss - rss_before
    assert growth < 16 << 20, growth
    assert d.echo(1) == 1
    print(f"\nFIGURES {{\"test\": \"subscriber never reads\", \"published\": 101000, "
          f"\"rss_growth_kib\": {growth >> 10}}}")


def test_a_foreign_client_tops_up_credit_as_it_reads(raw):
    c = raw()
    c.send(b"cache-12", "call", "count", [[1000], {}])
    assert c.receive()[1] == STREAM
    c.send(b"cache-12", "credit", body=256)
    n = 0
    while True:
        _, status, _, body = c.receive()
        if status == END:
            break
        n += len(body[1])
        if n % 128 == 0:
            c.send(b"cache-12", "credit", body=128)
    assert n == 1000
