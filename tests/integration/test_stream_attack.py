"""An attack review of streams (issue 15): what another local user (a raw peer of an ``open``
daemon) and a hostile client of the owner's own daemon can do to them."""

from __future__ import annotations

import time

import msgpack
import pytest

import malacoda
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
from tests.integration.test_bounds import HostileRouter
from tests.support import wait_for
from tests.support.wire import Wire


def _call(rid: bytes, name: str, *args) -> list:
    return p.request_frames(rid, p.CALL, name, [list(args), {}], None)


def _error_of_stream(w: Wire, rid: bytes, name: str, *args) -> dict:
    """Open the stream ``name(*args)``, grant credit, and return the body of its ERROR."""
    opened = w.ask(_call(rid, name, *args))
    assert opened.status == p.STREAM, opened.value()
    w.send(p.request_frames(rid, p.CREDIT, None, 16, None))
    while True:
        reply = w.recv()
        if reply.rid != rid or reply.status == p.ITEMS:
            continue
        assert reply.status == p.ERROR, (reply.status, reply.value())
        return reply.value()


def test_an_open_daemon_hides_a_generators_traceback_from_others(start_daemon, dealer):
    """A generator that raises: a non-owner peer of an ``open`` daemon gets the type and the
    message, never the traceback (as for a plain call); the owner still gets it."""
    start_daemon("TestDaemon", open=True)
    port = Registry().lookup("TestDaemon").port
    stranger = dealer(port, owner=False)  # NULL mechanism, no owner token: any local user
    body = _error_of_stream(stranger, b"s1", "fail_at", 2)
    assert body["type"] == "ValueError" and body["message"] == "failed at 2"
    assert body["traceback"] == "", "an open daemon sent a generator's traceback to a stranger"
    plain = stranger.ask(_call(b"c1", "fail_value")).value()  # (as a plain call is)
    assert plain["traceback"] == ""
    owner = malacoda.get("TestDaemon")  # the owner's proxy (its routing id has the token)
    with pytest.raises(ValueError) as raised:
        list(owner.fail_at(2))
    assert "fail_at" in raised.value.remote_traceback  # type: ignore[attr-defined]


def test_an_open_daemon_hides_an_async_generators_traceback_from_others(start_daemon, dealer):
    start_daemon("AsyncDaemon", module="tests.support.aio_daemons", open=True)
    port = Registry().lookup("AsyncDaemon").port
    stranger = dealer(port, owner=False)
    body = _error_of_stream(stranger, b"a1", "afail_at", 1)
    assert body["type"] == "ValueError" and body["message"] == "failed at 1"
    assert body["traceback"] == "", "an open daemon sent an async generator's traceback"


# ------------------------------------------------------------------ a hostile daemon's stream

STREAM_DESCRIPTION = {"name": "Evil", "class": "x.Evil", "doc": None, "incarnation": "evil",
                      "version": "0", "attributes": [], "extensions": {"streams": 1},
                      "methods": {"flood": {"doc": None, "params": []},
                                  "hang": {"doc": None, "params": []}}}


class _FloodingRouter(HostileRouter):
    """A fake daemon whose ``flood`` opens a stream with a window of 4 and, at the first
    credit, sends ``messages`` ITEMS of ``per_message`` items each, whatever the credit."""

    def __init__(self, messages: int, per_message: int) -> None:
        self.messages, self.per_message, self.sent = messages, per_message, False
        self.item = None  # each item's value: its index unless set
        super().__init__("Evil", STREAM_DESCRIPTION, None)

    def _serve(self) -> None:  # as HostileRouter's, but a request may have no reply or many
        while not self.stopping:
            if not self.sock.poll(50):
                continue
            identity, *frames = self.sock.recv_multipart()
            request = p.parse_request(frames)
            out = []
            if request.op == p.DESCRIBE:
                out = [p.reply_frames(request.rid, p.OK, "evil", self.description)]
            elif request.op == p.PING:
                out = [p.reply_frames(request.rid, p.OK, "evil", "pong")]
            elif request.op == p.CALL and request.name == "hang":
                pass  # never answered
            elif request.op == p.CALL:
                out = [p.reply_frames(request.rid, p.STREAM, "evil",
                                      {"window": 4, "lease": 10000})]
            elif request.op == p.CREDIT and not self.sent:
                self.sent = True
                items = [msgpack.packb(i if self.item is None else self.item)
                         for i in range(self.per_message)]
                out = [p.items_frames(request.rid, "evil", k * self.per_message, items)
                       for k in range(self.messages)]
            for message in out:
                self.sock.send_multipart([identity, *message], copy=False)


def test_a_stream_past_its_credit_is_refused_by_the_proxy(home):
    """A hostile daemon that sends 100 items in one ITEMS on a window of 4: the proxy must not
    take what it never granted (its buffer is the window), but say so."""
    from malacoda.errors import ProtocolError

    server = _FloodingRouter(messages=1, per_message=100)
    try:
        d = malacoda.get("Evil", timeout=10)
        it = d.flood()
        with pytest.raises(ProtocolError, match="more items than"):
            next(it)
        assert len(it._items) <= 4
    finally:
        server.close()


@pytest.mark.asyncio
async def test_an_async_stream_past_its_credit_is_refused(home):
    """The same on the AsyncProxy, whose reader takes every message in as it comes: 200
    ITEMS of 1000 items while the consumer sleeps grew its buffer to 200,000 items."""
    import asyncio

    import malacoda.aio
    from malacoda.errors import ProtocolError

    server = _FloodingRouter(messages=200, per_message=1000)
    try:
        async with malacoda.aio.get("Evil", timeout=10) as d:
            stream = await d.flood()
            await asyncio.sleep(1.0)  # a slow consumer, while the daemon floods
            buffered = len(stream._items)
            assert buffered <= 4, f"{buffered} items buffered on a window of 4"
            with pytest.raises(ProtocolError, match="more items than"):
                async for _ in stream:
                    pass
    finally:
        server.close()


# ------------------------------------------------------------------ another connection's stream


def test_another_connection_cannot_cancel_or_feed_a_stream_by_its_id(start_daemon, dealer):
    """A stream belongs to the connection that opened it: a second connection that knows (or
    guesses) its request id gets 'no stream' for a credit, and its cancel does nothing."""
    start_daemon("StreamDaemon", lease=5.0)
    port = Registry().lookup("StreamDaemon").port
    owner, other = dealer(port), dealer(port)
    rid = b"guess-me"
    assert owner.ask(_call(rid, "endless")).status == p.STREAM
    other.send(p.request_frames(rid, p.CANCEL, None, None, None))
    lost = other.ask(p.request_frames(rid, p.CREDIT, None, 10**6, None))
    assert lost.status == p.ERROR and lost.value()["type"] == "LookupError"
    d = malacoda.get("StreamDaemon", timeout=10)
    assert d.produced == 0 and d.open_streams() == 1  # neither fed nor cancelled
    owner.send(p.request_frames(rid, p.CREDIT, None, 3, None))
    got = []
    while len(got) < 3:
        reply = owner.recv()
        assert reply.rid == rid and reply.status == p.ITEMS
        got.extend(reply.value()[1])
    assert got == [0, 1, 2]


def test_a_watcher_that_goes_silent_takes_the_hook_with_it(start_daemon, dealer):
    """A raw watcher that stops talking (its client died): at the lease its stream closes and
    attribute writes no longer go through the watchers' hook."""
    start_daemon("StreamDaemon", lease=1.0)
    port = Registry().lookup("StreamDaemon").port
    w = dealer(port)
    assert w.ask(_call(b"w1", "watch", "pst_counter")).status == p.STREAM
    d = malacoda.get("StreamDaemon", timeout=10)
    assert d.hooked()
    wait_for(lambda: d.open_streams() == 0 and not d.hooked(), timeout=5,
             what="the silent watcher's lease to run out and the hook to go")


def test_an_item_past_the_proxys_max_message_fails_the_stream_not_hangs(home):
    """A hostile daemon's ITEMS larger than the proxy's max_message: ZeroMQ drops the link; the
    consumer gets ConnectionLost within its timeout, never a hang."""
    from malacoda.errors import CallTimeout, ConnectionLost, ProtocolError

    server = _FloodingRouter(messages=1, per_message=1)
    server.item = b"\0" * (2 << 20)
    try:
        d = malacoda.get("Evil", timeout=5, max_message=1 << 20)
        it = d.flood()
        started = time.monotonic()
        with pytest.raises((ConnectionLost, ProtocolError)) as failed:
            next(it)
        assert not isinstance(failed.value, CallTimeout)
        assert time.monotonic() - started < 5
    finally:
        server.close()


def test_a_flood_read_by_another_call_is_not_queued_without_bound(home):
    """While another call of the same proxy reads the socket, a hostile daemon's ITEMS for a
    stream are queued for its consumer: 2,000 messages on a window of 4 must not all be kept."""
    from malacoda.errors import CallTimeout, ProtocolError

    server = _FloodingRouter(messages=2000, per_message=1)
    try:
        d = malacoda.get("Evil", timeout=10)
        it = d.flood()  # its credit goes out: the flood comes
        with pytest.raises(CallTimeout):
            d.hang(timeout=1.5)  # this thread reads the socket meanwhile
        queued = len(it._waiter.queue)
        assert queued <= 4 + 4, f"{queued} messages queued for a stream with a window of 4"
        with pytest.raises(ProtocolError, match="more"):
            list(it)
    finally:
        server.close()


def test_a_slow_reader_of_several_streams_loses_no_items(start_daemon):
    """Four streams of a slow producer (about an item a message) on one proxy that reads nothing for
    a while: their windows together (4,096 messages) exceed ZeroMQ's high-water marks; every
    item must still arrive, in order (a ROUTER drops what is past its mark)."""
    start_daemon("StreamDaemon", lease=5.0)
    d = malacoda.get("StreamDaemon", timeout=20)
    streams = [d.count(100000, 0.001) for _ in range(4)]
    for it in streams:
        assert next(it) == 0
    wait_for(lambda: d.open_streams() == 4, what="four streams")
    time.sleep(8)  # each produces its window, one item per message, none read
    for it in streams:
        assert [next(it) for _ in range(1500)] == list(range(1, 1501))
        it.close()


def test_watching_an_attribute_that_cannot_travel_leaves_nothing_behind(start_daemon):
    """``watch('lock')`` (a threading.Lock: its value cannot be sent) fails; the failed watch
    must not stay among the watchers: else each such call keeps an entry for ever (a client
    repeating it grows the daemon), and the hook never goes once real watchers leave."""
    start_daemon("StreamDaemon", lease=5.0)
    d = malacoda.get("StreamDaemon", timeout=10)
    for _ in range(3):
        with pytest.raises(Exception) as failed:
            next(iter(d.watch("lock")))
        assert "cannot" in str(failed.value) or "lock" in str(failed.value).lower()
    assert not d.hooked()
    with d.watch("pst_counter") as values:
        assert next(values) == 0
        assert d.hooked()
    wait_for(lambda: not d.hooked() and d.open_streams() == 0, timeout=5,
             what="the hook to go with the last watcher")
