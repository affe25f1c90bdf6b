"""Wire fuzzing against a running daemon: it keeps serving, runs no code it was sent, and its
memory stays bounded.

Hypothesis generates the messages (derandomized, a bounded number of examples, no deadline:
the same inputs on every run). Each example goes to one daemon process over a raw DEALER; after
each, a ping must be answered. Pickles whose unpickling would create a marker file are put in
every position a message has; the marker must never appear.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
from pathlib import Path

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from malacoda.host.registry import Registry
from malacoda.wire import codec
from malacoda.wire import protocol as p
from tests.support import RunsCode, peak_rss
from tests.support.wire import SIG, Wire, msg

FUZZ = settings(max_examples=120, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
RSS_LIMIT = 200 << 20  # the daemon's peak RSS after all of it (it starts near 40 MiB)


@pytest.fixture
def wire(start_daemon, dealer, tmp_path):
    proc = start_daemon("HostileDaemon")
    w = dealer(Registry().lookup("HostileDaemon").port)
    w.proc = psutil.Process(proc.pid)
    w.marker = tmp_path / "UNPICKLED"
    yield w
    assert not w.marker.exists(), "the daemon unpickled something it was sent"


# ------------------------------------------------------------------------------- strategies

frames_st = st.lists(st.binary(max_size=300), min_size=0, max_size=7)
signed_frames_st = st.lists(st.binary(max_size=300), min_size=1, max_size=6).map(
    lambda fs: [SIG + fs[0], *fs[1:]])
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                 st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=5), kids, max_size=5)),
    max_leaves=20)
names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["_run", "__class__", "__init__", "__dict__", "_malacoda_stop", "__reduce__",
                     "echo.__globals__", "lock.acquire", "os.system", "__import__", "échô",
                     "__builtins__", "_Malacoda__x", "stop()", "pst_counter.__class__", ".", "",
                     "a.b", "名前", "_", "__"]),
    st.builds(lambda a, b: f"{a}.{b}", st.text(max_size=6), st.text(max_size=6)),
    st.builds(lambda a: "_" + a, st.text(max_size=8)),
    st.builds(lambda a: "__" + a + "__", st.text(max_size=8)),
)
# Methods a fuzzer must not call: they stop, crash or sleep the daemon (legitimately).
UNSAFE = {"stop", "crash", "slow", "tally"}


# ------------------------------------------------------------------------------- tests


def test_random_multipart_frames(wire):
    @FUZZ
    @given(frames=st.one_of(frames_st, signed_frames_st))
    def run(frames):
        if frames:
            wire.send(frames)
        assert wire.alive()

    run()


def test_unknown_operations_versions_and_headers(wire):
    @FUZZ
    @given(op=st.text(max_size=10), version=st.integers(0, 255), extra=values,
           rid=st.binary(min_size=1, max_size=64))
    def run(op, version, extra, rid):
        assume(op not in p.OPERATIONS)
        reply = wire.ask(msg(msgpack.packb(extra, use_bin_type=True), rid=rid, op=op))
        assert reply.status == p.UNKNOWN_OP
        if version != 2:
            frame = msg(rid=rid)[0]
            wire.send([b"MLC" + bytes([version]) + frame[4:]])
            assert wire._reply_to(rid, 10).status == p.BAD_VERSION
            # Version 1's layout: the id in frame 1's map.
            old = msgpack.packb({"i": rid, "o": "call", "n": "echo"}, use_bin_type=True)
            wire.send([b"MLC" + bytes([version]), old, b"\xc0"])
            assert wire._reply_to(rid, 10).status == p.BAD_VERSION
        # An envelope that is not the documented array, or an array of odd values.
        wire.send([SIG + msgpack.packb(extra, use_bin_type=True)])
        wire.send([SIG + msgpack.packb([rid, "call", "echo", None, extra], use_bin_type=True)])
        assert wire.alive()

    run()


def test_names_private_dotted_and_non_ascii_are_never_reached(wire):
    @FUZZ
    @given(name=names, op=st.sampled_from([p.CALL, p.GET, p.SET]), value=values)
    def run(name, op, value):
        assume(name not in UNSAFE)
        body = [[], {}] if op == p.CALL else value
        reply = wire.ask(p.request_frames(b"n", op, name, body, 10000))
        private = not name.isidentifier() or name.startswith("_")
        if private:
            assert reply.status == p.DENIED, (name, reply.status)
        else:
            assert reply.status in (p.OK, p.ERROR, p.DENIED), (name, reply.status)

    run()
    d = wire.ask(p.request_frames(b"d", p.DESCRIBE, None, None, 10000)).value()
    assert not [n for n in [*d["methods"], *d["attributes"]] if n.startswith("_")]


def test_truncated_and_over_long_codec_payloads(wire):
    @FUZZ
    @given(value=values, cut=st.integers(0, 10**6), tail=st.binary(min_size=1, max_size=40))
    def run(value, cut, tail):
        body, buffers = codec.encode([[value], {}])
        truncated = body[:cut % max(1, len(body))]
        reply = wire.ask(msg(truncated, *buffers, rid=b"t"))
        assert reply.status == p.BAD_REQUEST
        reply = wire.ask(msg(body + tail, *buffers, rid=b"o"))
        assert reply.status == p.BAD_REQUEST
        reply = wire.ask(msg(body, *buffers, rid=b"k"))
        assert reply.status == p.OK
        echoed = reply.value()
        assert echoed == value

    run()


def test_huge_declared_lengths(wire):
    """Lengths up to 2**32-1 declared in a few bytes: refused without allocating them."""
    markers = [b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9\x00"]  # str32 bin32 array32 map32 ext32

    @FUZZ
    @given(marker=st.sampled_from(markers), length=st.integers(2**16, 2**32 - 1),
           data=st.binary(max_size=64), wrap=st.booleans())
    def run(marker, length, data, wrap):
        if marker == b"\xc9\x00":
            body = b"\xc9" + struct.pack(">I", length) + b"\x01" + data
        else:
            body = marker + struct.pack(">I", length) + data
        if wrap:
            body = b"\x92\x91" + body + b"\x80"  # [[that], {}]
        assert wire.ask(msg(body, rid=b"h")).status == p.BAD_REQUEST

    run()
    assert peak_rss(wire.proc) < RSS_LIMIT


@pytest.mark.parametrize("depth", [65, 600, 1100, 100_000])
def test_deep_nesting(wire, depth):
    """Native arrays nest up to msgpack's 1024 levels, extension types up to 64; deeper is a
    BAD_REQUEST, and either way the daemon goes on serving."""
    native = b"\x91" * depth + b"\xc0"  # [[[[…]]]]
    reply = wire.ask(msg(b"\x92\x91" + native + b"\x80", rid=b"d"))
    if depth < 1022:
        assert reply.status in (p.OK, p.ERROR)  # echoed, or too deep to encode the reply
    else:
        assert reply.status == p.BAD_REQUEST
    nested = msgpack.packb(None)
    for _ in range(min(depth, 2000)):  # tuples: each an extension type holding the next
        nested = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, b"\x91" + nested))
    assert wire.ask(msg(b"\x92\x91" + nested + b"\x80", rid=b"e")).status == p.BAD_REQUEST
    assert wire.alive()


def test_amplifying_bodies_are_refused(wire):
    """A 60 MiB map of distinct keys would decode to ~800 MiB of objects: it is refused."""
    n = 10 << 20
    keys = b"".join(b"\xce" + struct.pack(">I", i) + b"\xc0" for i in range(n))
    body = b"\x92\x91\xdf" + struct.pack(">I", n) + keys + b"\x80"
    assert wire.ask(msg(body, rid=b"m"), timeout=60).status == p.BAD_REQUEST
    many = b"\x92\x91\xdd" + struct.pack(">I", 4 << 20) + b"\x91\xc0" * (4 << 20) + b"\x80"
    assert wire.ask(msg(many, rid=b"l"), timeout=60).status == p.BAD_REQUEST
    print(f"\nFIGURES {{\"test\": \"amplifying bodies\", \"peak_rss_mib\": "
          f"{peak_rss(wire.proc) >> 20}}}")
    assert peak_rss(wire.proc) < RSS_LIMIT
    assert wire.alive()


def test_pickles_in_every_position_are_never_unpickled(wire):
    marker = str(wire.marker)
    pickles = [pickle.dumps(RunsCode(marker), protocol=n) for n in range(0, pickle.HIGHEST_PROTOCOL + 1)]
    for blob in pickles:
        messages = [
            [blob],
            [blob, blob, blob],
            [SIG + blob],
            [SIG + blob, blob],
            [blob + msg()[0]],
            [SIG + msgpack.packb([blob, blob, blob, blob, blob])],
            msg(blob),
            msg(msgpack.packb([[b"x"], {}]), blob),
            msg(rid=blob[:64]),
            msg(msgpack.packb([[], {}]), name=blob.decode("latin-1")),
            msg(msgpack.packb(None), op=blob.decode("latin-1")),
            msg(blob, op="set", name="pst_counter"),
            msg(msgpack.packb([[msgpack.ExtType(codec.EXT_NAMED, blob)], {}])),
            msg(msgpack.packb([[msgpack.ExtType(99, blob)], {}])),
            msg(msgpack.packb([[msgpack.ExtType(codec.EXT_NAMED, msgpack.packb(
                ["pickle.loads", blob], use_bin_type=True))], {}])),
        ]
        for frames in messages:
            wire.send(frames)
        assert wire.alive()
        # As data, a pickle is just bytes: it comes back as the same bytes, never as an object.
        reply = wire.ask(p.request_frames(b"b", p.CALL, "echo", [[blob], {}], 10000))
        assert reply.status == p.OK and reply.value() == blob
        reply = wire.ask(p.request_frames(b"s", p.SET, "stash", blob, 10000))
        assert reply.status == p.OK
        assert wire.ask(p.request_frames(b"g", p.GET, "stash", None, 10000)).value() == blob
    assert not Path(marker).exists()


def test_a_512_mib_frame_is_refused_unread(start_daemon):
    """Larger than max_message (64 MiB by default): the connection is dropped on its header;
    the daemon's peak memory stays far below the frame's size and it keeps serving."""
    import mmap

    proc = start_daemon("HostileDaemon")
    port = Registry().lookup("HostileDaemon").port
    daemon = psutil.Process(proc.pid)
    before = peak_rss(daemon)
    zeros = mmap.mmap(-1, 512 << 20)  # zero pages: the sender does not hold 512 MiB either
    sender = Wire(port)
    try:
        sender.sock.send_multipart(msg(rid=b"big") + [memoryview(zeros)], copy=False)
        probe = Wire(port)
        try:
            for _ in range(20):
                assert probe.alive()
            reply = probe.ask(msg(msgpack.packb([["still here"], {}]), rid=b"ok"))
            assert reply.value() == "still here"
        finally:
            probe.close()
    finally:
        sender.close()
        with contextlib.suppress(BufferError):  # zmq may still hold the frame: GC frees it
            zeros.close()
    peak = peak_rss(daemon)
    print(f"\nFIGURES {{\"test\": \"512 MiB frame\", \"peak_rss_mib_before\": {before >> 20}, "
          f"\"peak_rss_mib_after\": {peak >> 20}}}")
    assert peak < 128 << 20, f"peak RSS {peak >> 20} MiB (was {before >> 20} MiB)"


def test_huge_declared_transport_length_drops_the_connection(start_daemon):
    """A ZMTP frame header declaring 2**62 bytes, by hand over TCP: dropped, nothing read.
    (NULL mechanism by hand, so the daemon is ``open``: any local user could send this.)"""
    proc = start_daemon("HostileDaemon", open=True)
    port = Registry().lookup("HostileDaemon").port
    greeting = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
                + b"\0" + b"\0" * 31)
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready = b"\x05READY" + props
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(10)
        s.sendall(greeting)
        theirs = b""
        while len(theirs) < 64:
            chunk = s.recv(64 - len(theirs))
            assert chunk, "the daemon closed before its greeting"
            theirs += chunk
        assert theirs[:1] == b"\xff" and theirs[10:11] == b"\x03"  # it speaks ZMTP 3
        s.sendall(b"\x04" + bytes([len(ready)]) + ready)
        s.sendall(b"\x03" + struct.pack(">Q", 1 << 62) + b"\0" * 4096)  # more, long frame
        closed = False
        try:
            while s.recv(4096):
                pass  # its READY command
            closed = True
        except ConnectionResetError:
            closed = True
        assert closed
    w = Wire(port)
    try:
        assert w.alive()
    finally:
        w.close()
    assert peak_rss(psutil.Process(proc.pid)) < 128 << 20


def test_max_message_is_a_setting(start_daemon):
    start_daemon("HostileDaemon", max_message=1 << 20)
    port = Registry().lookup("HostileDaemon").port
    sender, probe = Wire(port), Wire(port)
    try:
        big = b"x" * (2 << 20)
        sender.send(msg(msgpack.packb([[], {}]), big, rid=b"big"))
        assert probe.alive()
        assert not sender.sock.poll(500)  # dropped, unanswered
        sender.reconnect()
        small = p.request_frames(b"small", p.CALL, "echo", [[b"y" * (512 << 10)], {}], 10000)
        assert sender.ask(small).value() == b"y" * (512 << 10)
    finally:
        sender.close()
        probe.close()


def test_nothing_ran_from_the_fuzzing(wire):
    """After a burst of hostile traffic, the daemon's own state is what it was."""
    d_before = wire.ask(p.request_frames(b"d", p.GET, "pst_counter", None, 10000)).value()
    for frames in (msg(b"\xc0", op="set", name="_malacoda_stop"),
                   msg(b"\xc2", op="set", name="running"),
                   msg(msgpack.packb([[], {}]), op="call", name="stop.__call__"),
                   msg(msgpack.packb([[], {}]), op="call", name="__class__")):
        wire.send(frames)
    assert wire.alive()
    assert wire.ask(p.request_frames(b"r", p.GET, "running", None, 10000)).value() is True
    assert wire.ask(p.request_frames(b"c", p.GET, "pst_counter", None, 10000)).value() == d_before
    assert os.path.exists(f"/proc/{wire.proc.pid}")


def test_queue_is_bounded_in_bytes_too(start_daemon):
    """With max_message 4 MiB the queue holds at most 8 MiB of requests: the third 3 MiB request
    that finds the only worker busy is told BUSY at once, though the queue has room for 64."""
    start_daemon("HostileDaemon", workers=1, max_message=4 << 20)
    w = Wire(Registry().lookup("HostileDaemon").port)
    try:
        w.send(p.request_frames(b"slow", p.CALL, "tally", [[2.0], {}], None))
        for n in range(3):
            w.send(p.request_frames(b"big%d" % n, p.CALL, "echo", [[b"z" * (3 << 20)], {}], None))
        first = w._reply_to(b"big2", 10)
        assert first.status == p.BUSY
        assert w._reply_to(b"big0", 20).status == p.OK
        assert w._reply_to(b"big1", 20).status == p.OK
    finally:
        w.close()


def test_msgpacks_own_timestamp_never_reaches_daemon_code(wire):
    """Extension -1 (msgpack.Timestamp) is not one of the codec's types: a call or set carrying
    one is refused as a bad request, naming it, and nothing reaches the method or attribute."""
    ts = msgpack.packb(msgpack.Timestamp(1, 0))
    calls = [b"\x92\x91" + ts + b"\x80",  # echo(Timestamp)
             b"\x92\x91\x91" + ts + b"\x80",  # echo([Timestamp])
             b"\x92\x90\x81\xa5value" + ts]  # echo(value=Timestamp)
    for i, body in enumerate(calls):
        reply = wire.ask(msg(body, rid=b"ts%d" % i))
        assert reply.status == p.BAD_REQUEST, reply.status
        assert "Timestamp" in reply.value()["message"], reply.value()
    before = wire.ask(p.request_frames(b"g0", p.GET, "pst_counter", None, 10000)).value()
    reply = wire.ask(msg(ts, rid=b"set", op=p.SET, name="pst_counter"))
    assert reply.status == p.BAD_REQUEST and "Timestamp" in reply.value()["message"]
    assert wire.ask(p.request_frames(b"g1", p.GET, "pst_counter", None, 10000)).value() == before
    assert wire.alive()
