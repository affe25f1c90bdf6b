"""Bounded work and memory under hostile input (issue 12): hash collisions, whole messages,
waiters of a running call, file descriptors, and replies from a hostile daemon.

Each test talks to a real daemon process (or, for the client's side, a real hostile ROUTER)
over real sockets. Figures are printed as ``FIGURES {...}`` lines for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import msgpack
import psutil
import pytest
import zmq

from malacoda.host.registry import Registry
from malacoda.wire import codec
from malacoda.wire import protocol as p
from tests.support import peak_rss, wait_for
from tests.support.wire import Wire, msg

P = 2**61 - 1  # integers k * P all hash alike


def colliding(code: int, count: int) -> bytes:
    """A body holding ``count`` colliding integers: a set (``code`` 2, ext 2), else a map of
    them to nil. Made by hand: building the set here would cost the test what it costs a
    daemon."""
    items = [k * P for k in range(1, count + 1)]
    if code == codec.EXT_SET:
        return msgpack.packb(msgpack.ExtType(code, codec.Encoder().pack(items)), use_bin_type=True)
    enc = codec.Encoder()
    return b"\xdf" + count.to_bytes(4, "big") + b"".join(enc.pack(k) + b"\xc0" for k in items)


MAP = 0


def replies_to(wire: Wire, rids: set, timeout: float) -> dict:
    """The statuses of the replies to ``rids``, in whatever order they come."""
    got: dict = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(rids):
        left = deadline - time.monotonic()
        if left <= 0 or not wire.sock.poll(int(left * 1000)):
            raise AssertionError(f"no reply to {sorted(rids - set(got))} within {timeout} s")
        reply = p.parse_reply(wire.sock.recv_multipart())
        if reply.rid in rids:
            got[reply.rid] = reply.status
    return got


def figures(**values: object) -> None:
    print("\nFIGURES " + json.dumps(values))


def test_a_hash_collision_flood_leaves_the_daemon_answering(start_daemon):
    """A set of 60,000 colliding ints (a 1.6 MB message) froze a daemon for 25 s; a map of
    40,000 held a worker 18 s. Now refused as BAD_REQUEST, and an echo sent meanwhile is
    answered within 2 s."""
    start_daemon("HostileDaemon")
    port = Registry().lookup("HostileDaemon").port
    flood, probe = Wire(port), Wire(port)
    try:
        evil_set = colliding(codec.EXT_SET, 60000)
        evil_map = b"\x92\x91" + colliding(MAP, 40000) + b"\x80"  # [[the map], {}]
        flood.send(msg(evil_set, rid=b"flood-set", op=p.SET, name="stash", timeout=None))
        flood.send(msg(evil_map, rid=b"flood-map", op=p.CALL, name="echo", timeout=None))
        slowest = 0.0
        for n in range(5):
            started = time.monotonic()
            rid = b"echo-%d" % n
            reply = probe.ask(p.request_frames(rid, p.CALL, "echo", [[n], {}], 2000), timeout=2.0)
            slowest = max(slowest, time.monotonic() - started)
            assert reply.status == p.OK and reply.value() == n
        statuses = replies_to(flood, {b"flood-set", b"flood-map"}, 30)
        assert statuses == {b"flood-set": p.BAD_REQUEST, b"flood-map": p.BAD_REQUEST}
        figures(test="collision flood", set_bytes=len(evil_set), map_bytes=len(evil_map),
                slowest_echo_ms=round(slowest * 1000, 1))
    finally:
        flood.close()
        probe.close()


def test_no_new_pst_attribute_through_set(start_daemon):
    """A saved ``pst_evil`` of 80,000 colliding ints made every later start fail: a set can
    create no new pst attribute, and an existing one cannot be given a colliding value."""
    start_daemon("HostileDaemon")
    w = Wire(Registry().lookup("HostileDaemon").port)
    try:
        reply = w.ask(p.request_frames(b"evil-pst", p.SET, "pst_evil", 1, 10000))
        assert reply.status == p.DENIED, reply.value()
        assert "pst_evil" in reply.value()["message"]
        reply = w.ask(msg(colliding(codec.EXT_SET, 80000), rid=b"evil-val", op=p.SET,
                          name="pst_counter"), timeout=30)
        assert reply.status == p.BAD_REQUEST
        assert w.ask(p.request_frames(b"get", p.GET, "pst_evil", None, 10000)).status == p.ERROR
        assert w.ask(p.request_frames(b"ok-set", p.SET, "pst_counter", 7, 10000)).status == p.OK
        assert w.ask(p.request_frames(b"get2", p.GET, "pst_counter", None, 10000)).value() == 7
    finally:
        w.close()


def test_copies_waiting_for_a_running_call_are_bounded(start_daemon):
    """Re-sending the frames of a running request 5 million times grew its waiters to 736 MB:
    now MAX_WAITERS copies wait for the reply, every further copy is told BUSY at once."""
    from malacoda.daemon import replycache as replycache

    MAX_WAITERS = getattr(replycache, "MAX_WAITERS", 8)  # (8 on main, to see it fail)
    proc = start_daemon("HostileDaemon")
    daemon = psutil.Process(proc.pid)
    w = Wire(Registry().lookup("HostileDaemon").port)
    try:
        # the call outlasts the sending of every copy, even on a loaded machine (4 s seen for 38,000)
        frames = p.request_frames(b"running-call-1", p.CALL, "tally", [[10.0], {}], None)
        w.send(frames)
        copies, batch = 50000, 500  # in batches: the daemon's send queue holds 1000 replies
        before = daemon.memory_info().rss
        statuses: list = []

        def receive(count: int) -> None:
            deadline = time.monotonic() + 30
            while len(statuses) < count and w.sock.poll(max(0, deadline - time.monotonic()) * 1000):
                statuses.append(p.parse_reply(w.sock.recv_multipart()).status)

        for n in range(0, copies, batch):
            for _ in range(batch):
                w.send(frames)
            receive(n + batch - MAX_WAITERS)  # all but the waiting copies are answered at once
        receive(copies + 1)
        rss_after = daemon.memory_info().rss
        busy, ok = statuses.count(p.BUSY), statuses.count(p.OK)
        figures(test="waiters", copies=copies, busy=busy, ok=ok,
                rss_mib_before=round(before / 2**20, 1), rss_mib_after=round(rss_after / 2**20, 1))
        assert busy == copies - MAX_WAITERS
        assert ok == MAX_WAITERS + 1  # the first and the copies that waited
        assert w.ask(p.request_frames(b"tally-count", p.CALL, "tally", [[], {}], 10000)).value() == 2
    finally:
        w.close()


# ------------------------------------------------------------------ replies from a hostile daemon


class HostileRouter:
    """A fake daemon: a ROUTER in a thread that answers ``describe`` with ``description`` and
    every other request with ``reply(request)`` (a list of frames after the routing id);
    registered under ``name`` so that a proxy finds it."""

    def __init__(self, name: str, description, reply) -> None:
        import threading

        from malacoda.host.process import process_start_time
        from malacoda.host.registry import Entry
        from malacoda.version import __version__

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.description, self.reply = description, reply
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        Registry().write(Entry(name=name, pid=os.getpid(), port=port, address="127.0.0.1",
                               start_time=process_start_time(os.getpid()), incarnation="evil",
                               uid=os.geteuid(), version=__version__))

    def _serve(self) -> None:
        while not self.stopping:
            if not self.sock.poll(50):
                continue
            identity, *frames = self.sock.recv_multipart()
            request = p.parse_request(frames)
            if request.op == p.DESCRIBE:
                out = p.reply_frames(request.rid, p.OK, "evil", self.description)
            elif request.op == p.PING:
                out = p.reply_frames(request.rid, p.OK, "evil", "pong")
            else:
                out = self.reply(request)
            self.sock.send_multipart([identity, *out], copy=False)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


GOOD_DESCRIPTION = {"name": "Evil", "class": "x.Evil", "doc": None, "incarnation": "evil",
                    "version": "0", "attributes": [],
                    "methods": {"big": {"doc": None, "params": []}}}


def raw_reply(request, body: bytes, *buffers: bytes):
    head = p.SIGNATURE + msgpack.packb([request.rid, p.OK, "evil", body], use_bin_type=True)
    return [head, *buffers]


def test_a_huge_or_amplifying_reply_is_refused_by_the_client(home):
    """A 16 MB reply of empty arrays decoded into 1.1 GiB in the client; a reply of many
    frames was accepted whatever their total. Now: ProtocolError, the memory bounded."""
    import malacoda
    from malacoda.errors import ProtocolError

    amplifying = b"\xdd" + (16 << 20).to_bytes(4, "big") + b"\x90" * (16 << 20)
    inner = b"\xdc" + (65535).to_bytes(2, "big") + b"\x90" * 65535
    nested = b"\xdc" + (256).to_bytes(2, "big") + inner * 256  # 16 Mi empty arrays too
    many_frames = [b"\0" * (512 << 10)] * 4  # 2 MiB in buffer frames, each under 1 MiB
    shape = {"reply": "amplifying"}

    def reply(request):
        if shape["reply"] in ("amplifying", "nested"):
            return raw_reply(request, amplifying if shape["reply"] == "amplifying" else nested)
        return raw_reply(request, msgpack.packb(msgpack.ExtType(codec.EXT_BUFFER, b"\0")),
                         *many_frames)

    server = HostileRouter("Evil", GOOD_DESCRIPTION, reply)
    me = psutil.Process()
    try:
        before = me.memory_info().rss
        d = malacoda.get("Evil", timeout=20)
        with pytest.raises(ProtocolError, match="max_array_len|items"):
            d.big()
        shape["reply"] = "nested"
        with pytest.raises(ProtocolError, match="items"):
            d.big()
        grown = me.memory_info().rss - before
        shape["reply"] = "frames"
        small = malacoda.get("Evil", timeout=20, max_message=1 << 20)
        with pytest.raises(ProtocolError, match="max_message"):
            small.big()
        assert d.big() == b"\0" * (512 << 10)  # the default accepts 2 MiB
        figures(test="hostile reply", amplifying_reply_mib=len(amplifying) >> 20,
                client_rss_growth_mib=round(grown / 2**20, 1))
        assert grown < 256 << 20
        with pytest.raises(Exception) as bad:
            malacoda.get("Evil", max_message=0)
        assert type(bad.value).__name__ == "ConfigError"
    finally:
        server.close()


@pytest.mark.parametrize("description", [
    "not a map", {"methods": [], "attributes": []}, {"methods": {"m": 5}, "attributes": []},
    {"methods": {"m": {"params": [["a", 9, None]]}}, "attributes": []},
    {"methods": {"m": {"params": [["a", 1, 5]]}}, "attributes": []},
    {"methods": {"m": {"params": [["a", 4, None], ["b", 0, None]]}}, "attributes": []},
    {"methods": {}, "attributes": [1, 2]}, {"methods": {5: {}}, "attributes": []},
], ids=["str", "methods-list", "method-int", "kind", "default", "order", "attrs", "name"])
def test_a_malformed_describe_reply_is_a_protocol_error(home, description):
    import malacoda
    from malacoda.errors import ProtocolError

    server = HostileRouter("Evil", description, lambda request: raw_reply(request, b"\xc0"))
    try:
        d = malacoda.get("Evil", timeout=10)
        with pytest.raises(ProtocolError, match="describe"):
            d.m(1)
        with pytest.raises(ProtocolError, match="describe"):
            dir(d)
    finally:
        server.close()


# ------------------------------------------------------------------ raw ZMTP peers


def zmtp_peer(port: int) -> socket.socket:
    """A TCP connection that speaks ZMTP 3.0 as a DEALER as far as its READY command: a real
    peer of the daemon's ROUTER, that can then send frames no libzmq socket would (frames of
    a message it never finishes)."""
    greeting = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
                + b"\0" + b"\0" * 31)
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready = b"\x05READY" + props
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(10)
    s.sendall(greeting)
    theirs = b""
    while len(theirs) < 64:
        chunk = s.recv(64 - len(theirs))
        if not chunk:
            raise ConnectionError("the daemon closed before its greeting")
        theirs += chunk
    s.sendall(b"\x04" + bytes([len(ready)]) + ready)
    return s


def test_idle_connections_cannot_exhaust_the_daemons_fds(start_daemon):
    """1,012 idle connections from one peer exhausted a daemon's 1,024 fds and a legitimate
    ping went unanswered. With a hard limit of 256 fds in the daemon: 400 idle connections,
    then a ping over a new connection is answered, and the daemon keeps fds to spare."""
    limit = 256
    # open: the raw peers speak NULL (an owner-only daemon drops them at the handshake)
    proc = start_daemon("HostileDaemon", open=True, prelude=(
        f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, {limit}))"))
    daemon = psutil.Process(proc.pid)
    port = Registry().lookup("HostileDaemon").port
    idle = []
    try:
        for _ in range(400):
            try:
                idle.append(zmtp_peer(port))
            except OSError:
                break  # (on main: the daemon stopped accepting)
        probe = Wire(port)
        try:
            started = time.monotonic()
            assert probe.alive(timeout=10)
            answered = time.monotonic() - started
        finally:
            probe.close()
        fds = daemon.num_fds()
        soft = daemon.rlimit(psutil.RLIMIT_NOFILE)[0]
        figures(test="fds", hard_limit=limit, soft_limit_after_start=soft, idle_opened=len(idle),
                daemon_fds=fds, ping_ms=round(answered * 1000, 1))
        assert soft == limit  # raised from 64 to the hard limit
        assert fds < limit - 16
    finally:
        for s in idle:
            s.close()


def test_max_connections_is_a_setting(start_daemon):
    """``max_connections=8``: of 30 idle connections the oldest are closed by the daemon, and a
    ping over a new one is answered."""
    proc = start_daemon("HostileDaemon", max_connections=8, open=True)  # NULL raw peers
    daemon = psutil.Process(proc.pid)
    port = Registry().lookup("HostileDaemon").port
    base = daemon.num_fds()
    idle = [zmtp_peer(port) for _ in range(30)]
    try:
        def closed(s: socket.socket) -> bool:
            s.setblocking(False)
            try:
                while True:
                    chunk = s.recv(4096)  # the daemon's READY, then EOF if it closed us
                    if not chunk:
                        return True
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_for(lambda: sum(map(closed, idle)) >= 22, what="the oldest connections closed")
        probe = Wire(port)
        try:
            assert probe.alive()
        finally:
            probe.close()
        states = [closed(s) for s in idle]
        assert all(states[:22]), states  # the oldest went first
        assert daemon.num_fds() <= base + 8 + 2
    finally:
        for s in idle:
            s.close()


# ------------------------------------------------------------------ whole messages


def zmtp_frame(data_size: int, more: bool) -> bytes:
    """The header of one ZMTP frame of ``data_size`` bytes (the long form)."""
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", data_size)


def send_zeros(s: socket.socket, size: int, chunk: bytes = b"\0" * (1 << 20)) -> None:
    while size > 0:
        s.sendall(chunk[:size])
        size -= len(chunk)


MIB = 1 << 20
SMALL_MESSAGE = 8 * MIB  # the test daemons' max_message: light on a shared machine


class Flood:
    """Raw ZMTP peers of an ``open`` daemon, each sending ``frames`` frames of ``frame`` bytes
    with MORE set (the last one without it if ``finish``) in a thread of its own, while the
    test pings the daemon as its owner; the daemon's RSS is sampled meanwhile."""

    def __init__(self, port: int, daemon: psutil.Process, peers: int, frames: int, frame: int,
                 finish: bool) -> None:
        import threading

        self.daemon = daemon
        self.socks = [zmtp_peer(port) for _ in range(peers)]
        self.sent = [0] * peers
        self.cut = [False] * peers
        self.samples: list = []
        self.frames, self.frame, self.finish = frames, frame, finish
        self.threads = [threading.Thread(target=self._send, args=(i,), daemon=True)
                        for i in range(peers)]
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def _send(self, i: int) -> None:
        s = self.socks[i]
        try:
            head = msg(msgpack.packb([[0], {}]), rid=b"flood-%d" % i, name="echo",
                       timeout=None)[0]
            s.sendall(bytes([0x01, len(head)]) + head)  # short frame, MORE
            for n in range(self.frames):
                last = self.finish and n == self.frames - 1
                s.sendall(zmtp_frame(self.frame, more=not last))
                send_zeros(s, self.frame)
                self.sent[i] += self.frame
        except OSError:
            self.cut[i] = True  # the daemon dropped the connection

    def _sample(self) -> None:
        while any(t.is_alive() for t in self.threads):
            try:
                self.samples.append(self.daemon.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.002)

    def run(self, probe: Wire, timeout: float = 30.0) -> float:
        """Start the senders; ping through ``probe`` until they end; the slowest ping (s)."""
        for t in self.threads:
            t.start()
        self.sampler.start()
        slowest, deadline = 0.0, time.monotonic() + timeout
        while any(t.is_alive() for t in self.threads):
            assert time.monotonic() < deadline, "the flood did not end"
            started = time.monotonic()
            assert probe.alive(timeout=2.0)
            slowest = max(slowest, time.monotonic() - started)
        self.sampler.join(5)
        return slowest

    def dropped(self, timeout: float = 10.0) -> list:
        """For each peer: did the daemon close its connection (EOF or reset)?"""
        states = []
        for i, s in enumerate(self.socks):
            if self.cut[i]:
                states.append(True)
                continue
            s.settimeout(timeout)
            try:
                while s.recv(65536):
                    pass  # the daemon's READY, maybe a reply
                states.append(True)
            except (ConnectionResetError, BrokenPipeError):
                states.append(True)
            except OSError:
                states.append(False)  # still open after timeout
        return states

    def close(self) -> None:
        for s in self.socks:
            s.close()


def test_a_message_of_many_frames_is_bounded_as_a_whole(start_daemon):
    """20 frames of 32 MiB (640 MiB) as one message were answered OK by a daemon with the
    64 MiB default (RSS 744 MB), and once refused as a whole the daemon had still held all of
    it (peak 701 MiB): libzmq delivers a message only once its last frame is in. Now the
    connection is dropped once it has brought ``max_message`` (plus framing) since its last
    complete message. Here ``max_message`` 8 MiB and 20 frames of 8 MiB (each one allowed):
    the daemon's peak RSS grows by less than 3 x max_message (max_message + 1 MiB of slack, plus what
    arrives before the guard's next look: 1 ms apart during a flood, up to ~10 ms on a loaded
    machine; +168 MiB on main), and an owner's ping sent meanwhile over another
    connection answers within 2 s."""
    proc = start_daemon("HostileDaemon", max_message=SMALL_MESSAGE, open=True)  # NULL raw peer
    daemon = psutil.Process(proc.pid)
    port = Registry().lookup("HostileDaemon").port
    probe = Wire(port)
    assert probe.alive()
    rss_before, peak_before = daemon.memory_info().rss, peak_rss(daemon)
    flood = Flood(port, daemon, peers=1, frames=20, frame=SMALL_MESSAGE, finish=True)
    try:
        slowest = flood.run(probe)
        dropped = flood.dropped()
        peak = peak_rss(daemon)
        figures(test="many frames", max_message_mib=SMALL_MESSAGE >> 20, frames=20,
                frame_mib=SMALL_MESSAGE >> 20, sent_mib=sum(flood.sent) >> 20,
                rss_mib_before=rss_before >> 20, peak_rss_mib_before=peak_before >> 20,
                peak_rss_mib_after=peak >> 20,
                sampled_max_mib=max(flood.samples, default=0) >> 20,
                slowest_ping_ms=round(slowest * 1000, 1))
        assert dropped == [True], "the connection of the 160 MiB message was left open"
        assert sum(flood.sent) < 20 * SMALL_MESSAGE
        assert peak < rss_before + 3 * SMALL_MESSAGE, (
            f"peak RSS {peak >> 20} MiB, {rss_before >> 20} MiB before the flood")
        assert probe.alive()
    finally:
        flood.close()
        probe.close()


def test_unfinished_messages_are_bounded(start_daemon):
    """Three connections each sending 10 x 32 MiB frames with MORE set, never finishing, held
    1 GB in libzmq before any of our code ran; later only the process-wide memory guard bounded
    them (768 MiB with the defaults). Now each connection is dropped once it has brought
    ``max_message`` (plus framing) since its last complete message: with max_message 8 MiB and
    three peers sending 10 x 8 MiB, the daemon's peak RSS grows by less than 3 x max_message
    per peer (+240 MiB on main), and an owner's ping answers within 2 s throughout."""
    proc = start_daemon("HostileDaemon", max_message=SMALL_MESSAGE, open=True)  # NULL raw peers
    daemon = psutil.Process(proc.pid)
    port = Registry().lookup("HostileDaemon").port
    probe = Wire(port)
    assert probe.alive()
    rss_before, peak_before = daemon.memory_info().rss, peak_rss(daemon)
    flood = Flood(port, daemon, peers=3, frames=10, frame=SMALL_MESSAGE, finish=False)
    try:
        slowest = flood.run(probe)
        dropped = flood.dropped()
        peak = peak_rss(daemon)
        figures(test="unfinished", max_message_mib=SMALL_MESSAGE >> 20, connections=3,
                frames=10, frame_mib=SMALL_MESSAGE >> 20, sent_mib=sum(flood.sent) >> 20,
                rss_mib_before=rss_before >> 20, peak_rss_mib_before=peak_before >> 20,
                peak_rss_mib_after=peak >> 20,
                sampled_max_mib=max(flood.samples, default=0) >> 20,
                slowest_ping_ms=round(slowest * 1000, 1))
        assert dropped == [True] * 3, dropped
        assert peak < rss_before + 3 * 3 * SMALL_MESSAGE, (
            f"peak RSS {peak >> 20} MiB, {rss_before >> 20} MiB before the flood")
        assert probe.alive()
    finally:
        flood.close()
        probe.close()
