"""malacoda.aio against real daemons: one connection for many awaits, cancellation, timeouts,
the same exceptions as the synchronous proxy, restarts, ``async def`` methods on the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Awaitable, Callable, List

import psutil
import pytest
import zmq

import malacoda
import malacoda.aio
from malacoda.client.aiochannel import AsyncChannel
from malacoda.host.registry import Registry
from malacoda.wire import codec
from malacoda.wire import protocol as p
from tests.support import free_port, pid_alive, wait_for

pytestmark = pytest.mark.asyncio

AIO = "tests.support.aio_daemons"


async def until(condition: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                what: str = "a condition") -> Any:
    """Await ``condition()`` until it is true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def connections_to(port: int) -> List[Any]:
    return [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


async def test_many_concurrent_awaits_share_one_connection(start_daemon):
    start_daemon()
    async with malacoda.aio.get("TestDaemon") as d:
        assert await d.echo("first") == "first"
        channel = d._channel
        values = [i if i % 3 else (i, str(i)) for i in range(1000)]
        assert await asyncio.gather(*(d.echo(v) for v in values)) == values  # tuples stay tuples
        assert d._channel is channel and channel._pending == {}
        port = Registry().read("TestDaemon")[0].port
        assert len(connections_to(port)) == 1
        # every caller's own reply, with calls of different lengths interleaved
        mixed = await asyncio.gather(d.slow(0.3), *(d.add(i, b=i) for i in range(50)))
        assert mixed == ["slept 0.3", *(2 * i for i in range(50))]
    assert channel.closed


async def test_attributes_get_and_set(start_daemon):
    start_daemon()
    async with malacoda.aio.get("TestDaemon", timeout=10) as d:
        assert await d.get("constant") == 10
        await d.set("pst_counter", 41)
        assert await d.bump() == 42
        assert await d.get("pst_data") == {"a": (1, 2)}
        with pytest.raises(malacoda.AccessDenied):
            await d.set("name", "other")
        with pytest.raises(malacoda.AccessDenied):
            d._secret
        with pytest.raises(malacoda.AccessDenied):
            await d.call("_malacoda_secret")
        with pytest.raises(malacoda.AccessDenied):
            await d.get("_malacoda_secret")
        with pytest.raises(AttributeError, match="await proxy.set"):
            d.constant = 3
        assert "echo" in (await d.describe())["methods"]


async def test_timeout_then_the_next_call_is_fine(start_daemon):
    start_daemon()
    async with malacoda.aio.get("TestDaemon") as d:
        t0 = time.monotonic()
        with pytest.raises(malacoda.CallTimeout) as caught:
            await d.slow(2.0, timeout=0.3)
        assert isinstance(caught.value, TimeoutError)
        assert time.monotonic() - t0 < 1.5
        assert await d.echo("next") == "next"
        # the late reply of the slow call arrives and is dropped; calls go on meanwhile
        for i in range(30):
            assert await d.echo(i) == i
        await asyncio.sleep(1.9)
        assert await d.add(1) == 3
        assert d._channel._pending == {}
    with pytest.raises(malacoda.ConfigError, match="timeout"):
        malacoda.aio.get("TestDaemon", timeout=0)
    async with malacoda.aio.get("TestDaemon", timeout=0.3) as d:  # the proxy's default
        with pytest.raises(malacoda.CallTimeout):
            await d.slow(1.0)
        assert await d.slow(0.05, timeout=5) == "slept 0.05"


async def test_cancelling_the_awaiting_task_abandons_the_call(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        task = asyncio.create_task(d.slow(0.5))
        nap = asyncio.create_task(d.nap(0.5))
        await until(lambda: d.get("active"), what="the nap to run")
        task.cancel()
        nap.cancel()
        for t in (task, nap):
            with pytest.raises(asyncio.CancelledError):
                await t
        assert d._channel._pending == {}
        assert await d.echo("right after") == "right after"
        await until(lambda: d.get("naps"), what="the cancelled calls to finish on the daemon")
        await asyncio.sleep(0.6)  # the slow call's late reply has come (and was dropped)
        assert [await d.echo(i) for i in range(5)] == list(range(5))
        assert await d.get("naps") == 1  # cancelling the caller does not cancel the daemon's call


async def test_cancelling_withdraws_a_request_not_sent_yet(home):
    """With no connection a request waits in the outbox; cancelled there, it never goes out."""
    port = free_port()
    channel = AsyncChannel(f"tcp://127.0.0.1:{port}")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        withdrawn = asyncio.create_task(
            channel.request(p.request_frames(b"withdrawn-1", p.PING, None, None, None),
                            b"withdrawn-1", 10))
        await asyncio.sleep(0.3)
        assert list(channel._outbox) == [b"withdrawn-1"]
        withdrawn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await withdrawn
        assert channel._outbox == {} and channel._pending == {}
        router.bind(f"tcp://127.0.0.1:{port}")
        frames = p.request_frames(b"sent-after-2", p.PING, None, None, None)
        second = asyncio.create_task(channel.request(frames, b"sent-after-2", 10))
        deadline = time.monotonic() + 10
        while not router.poll(0):
            assert time.monotonic() < deadline, "the second request never came"
            await asyncio.sleep(0.02)
        identity, *request = router.recv_multipart()
        assert p.parse_request(request).rid == b"sent-after-2"
        await asyncio.sleep(0.3)
        assert not router.poll(0), "the withdrawn request was sent after all"
        router.send_multipart([identity, *p.reply_frames(b"sent-after-2", p.OK, "x", "pong")])
        assert (await second).value() == "pong"
    finally:
        channel.close()
        router.close(0)
        ctx.term()


def _sync_failure(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: B902 - compared below
        return exc
    raise AssertionError("no exception")


async def _async_failure(call: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await call()
    except BaseException as exc:  # noqa: B902 - compared below
        return exc
    raise AssertionError("no exception")


async def test_exceptions_are_those_of_the_synchronous_proxy(start_daemon):
    start_daemon()
    cases = [("fail_value", ("bad",)), ("fail_key", ()), ("fail_custom", ()),
             ("fail_json", ()), ("fail_file", ()), ("fail_timeout", ()), ("fail_unicode", ()),
             ("fail_exit", ()), ("no_such_method", ()), ("constant", ()), ("add", ("a", "b", "c"))]
    sync = malacoda.get("TestDaemon", timeout=10)
    async with malacoda.aio.get("TestDaemon", timeout=10) as d:
        for name, args in cases:
            if name == "constant":
                expected = _sync_failure(lambda: malacoda.Proxy._request(
                    sync, p.CALL, "constant", None, 10, codec.encode_call([], {})))
            else:
                expected = _sync_failure(lambda name=name, args=args: getattr(sync, name)(*args))
            got = await _async_failure(lambda name=name, args=args: d.call(name, *args))
            assert type(got) is type(expected), (name, got, expected)
            if name != "no_such_method":  # (the sync proxy reads it as an attribute: get)
                assert str(got) == str(expected), name
            assert type(got).__mro__ == type(expected).__mro__, name
            assert getattr(got, "remote_type", None) == getattr(expected, "remote_type", None)
            assert "Traceback" in getattr(got, "remote_traceback", ""), name
        failed = await _async_failure(lambda: d.fail_file())
        assert isinstance(failed, FileNotFoundError) and failed.errno == 2
        assert failed.filename == "/nonexistent/malacoda-file"
        assert isinstance(await _async_failure(lambda: d.fail_custom()), malacoda.RemoteError)
    sync._close()


async def test_async_def_methods_run_concurrently_on_the_daemons_loop(start_daemon):
    start_daemon("AsyncDaemon", module=AIO, workers=2)
    async with malacoda.aio.get("AsyncDaemon", timeout=30) as d:
        assert await d.where() == "malacoda-asyncio"
        t0 = time.monotonic()
        slept = await asyncio.gather(*(d.nap(0.2) for _ in range(50)))
        took = time.monotonic() - t0
        assert slept == [0.2] * 50
        assert took < 2.5, f"50 naps of 0.2 s took {took:.2f} s with workers=2"
        assert await d.get("most") == 50
        assert await d.pair(1, "b") == (1, "b")
        # and the same exceptions as from a plain method
        assert isinstance(await _async_failure(lambda: d.afail_key()), KeyError)
        failed = await _async_failure(lambda: d.afail_file())
        assert isinstance(failed, FileNotFoundError) and failed.errno == 2
        with pytest.raises(malacoda.CallTimeout):
            await d.nap(5, timeout=0.2)
        # a plain method still answers while coroutines sleep on the loop
        sleepers = [asyncio.create_task(d.nap(1.0)) for _ in range(20)]
        await until(lambda: d.get("active"), what="the sleepers")
        t0 = time.monotonic()
        assert await d.echo("meanwhile") == "meanwhile"
        assert time.monotonic() - t0 < 0.5
        await asyncio.gather(*sleepers)
    # the synchronous proxy calls async def methods too
    with malacoda.get("AsyncDaemon", timeout=10) as sync:
        assert sync.nap(0.01) == 0.01
        assert sync.where() == "malacoda-asyncio"
        with pytest.raises(KeyError):
            sync.afail_key()


async def test_async_calls_are_bounded_busy_beyond(start_daemon):
    """A flood of calls that never return holds at most _async_calls coroutines; the rest get
    Busy at once, and plain calls go on."""
    start_daemon("FewAsync", module=AIO)
    async with malacoda.aio.get("FewAsync", timeout=10) as d:
        hung = [asyncio.create_task(d.forever(timeout=30)) for _ in range(4)]
        await until(lambda: asyncio.sleep(0, all(not t.done() for t in hung)
                                          and len(d._channel._pending) == 4))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        more = await asyncio.gather(*(d.forever(timeout=30) for _ in range(20)),
                                    return_exceptions=True)
        assert all(isinstance(x, malacoda.Busy) for x in more), more
        assert time.monotonic() - t0 < 5
        assert await d.echo("still") == "still"
        for t in hung:
            t.cancel()
        await asyncio.gather(*hung, return_exceptions=True)


async def test_a_restarted_daemon_is_found_again(start_daemon):
    first = start_daemon()
    async with malacoda.aio.get("TestDaemon", timeout=20) as d:
        assert await d.echo(1) == 1
        before = d._incarnation
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(first.pid), what="the daemon to die")
        start_daemon()
        assert await d.echo(2) == 2
        assert d._incarnation != before
        assert await asyncio.gather(*(d.echo(i) for i in range(100))) == list(range(100))


async def test_a_call_waits_for_a_daemon_coming_back(start_daemon):
    first = start_daemon()
    async with malacoda.aio.get("TestDaemon") as d:
        assert await d.echo(1) == 1
        channel = d._channel
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(first.pid), what="the daemon to die")
        # once the proxy knows (a request sent before that is lost, not withdrawn: it may run)
        await until(lambda: asyncio.sleep(0, channel.broken is not None), what="the link news")
        call = asyncio.create_task(d.echo("back", timeout=20))
        await asyncio.sleep(0.5)
        assert not call.done()
        await asyncio.get_running_loop().run_in_executor(None, start_daemon)
        assert await call == "back"


async def test_lookup_failed_and_stop(start_daemon):
    with pytest.raises(malacoda.ConfigError):
        malacoda.aio.get("bad name!")
    proxy = malacoda.aio.get("NoSuchDaemon", timeout=0.3)
    with pytest.raises(malacoda.LookupFailed):
        await proxy.echo(1)
    daemon = start_daemon()
    await malacoda.aio.stop("TestDaemon")
    wait_for(lambda: daemon.proc.poll() is not None, what="the daemon to exit")
    with pytest.raises(malacoda.LookupFailed):
        await malacoda.aio.stop("TestDaemon", wait=0.2)


# ---------------------------------------------------------------------------------------- streams


async def test_async_for_over_generators_plain_and_async(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=30) as d:
        assert [x async for x in d.count(3000)] == list(range(3000))  # a plain generator
        assert [x async for x in d.acount(3000)] == list(range(3000))  # an async generator
        # a method that returns an iterator is not marked as streaming in the description:
        # its call is a plain coroutine, awaited for its stream
        assert [x async for x in await d.iterate(5)] == list(range(5))
        stream = await d.acount(3)  # awaited, a streaming call gives its stream
        assert [x async for x in stream] == [0, 1, 2]
        async with d.acount(10) as items:  # async with closes it whatever happens
            assert [await items.__anext__() for _ in range(2)] == [0, 1]
        plain = d.echo(1)  # known not to stream: a plain coroutine
        with pytest.raises(TypeError, match="async for"):
            async for _ in plain:
                pass
        plain.close()
        with pytest.raises(TypeError, match="does not stream"):  # not known: told after the call
            async for _ in malacoda.aio.get("AsyncDaemon").echo(1):
                pass
        got = []
        with pytest.raises(ValueError, match="failed at 3"):
            async for x in d.afail_at(3):
                got.append(x)
        assert got == [0, 1, 2]  # the items before the error first
        assert d._channel._streams == {}


async def test_async_generator_streams_hold_no_worker(start_daemon):
    start_daemon("AsyncDaemon", module=AIO, workers=2)
    async with malacoda.aio.get("AsyncDaemon", timeout=30) as d:
        async def one() -> List[int]:
            return [x async for x in d.acount(5, pause=0.2)]

        t0 = time.monotonic()
        streams = [asyncio.create_task(one()) for _ in range(20)]
        await until(lambda: d.get("produced"), what="the streams to produce")
        t1 = time.monotonic()
        assert await d.echo("meanwhile") == "meanwhile"  # the two workers are free
        assert time.monotonic() - t1 < 0.5
        assert await asyncio.gather(*streams) == [list(range(5))] * 20
        took = time.monotonic() - t0
        assert took < 4.0, f"20 streams of 5 items 0.2 s apart took {took:.1f} s with workers=2"


async def test_leaving_early_closes_the_async_generator(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        async for x in d.aendless():
            if x == 3:
                break
        await until(lambda: d.get("closed_streams"), what="the generator's finally (break)")
        stream = await d.aendless(pause=5)  # closed while it awaits inside the generator
        assert await stream.__anext__() == 0
        await stream.aclose()
        await until(lambda: _equals(d.get("closed_streams"), 2), what="a second finally")
        async for x in d.count(100000):  # a plain generator: its finally runs too
            if x == 5:
                break
        await until(lambda: _equals(d.get("closed_streams"), 3), what="the plain one's finally")
        assert await d.open_streams() == 0


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return (await value) == expected


async def test_flow_control_bounds_what_the_async_generator_runs_ahead(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        stream = await d.acount(100000)
        assert [await stream.__anext__() for _ in range(10)] == list(range(10))
        await asyncio.sleep(0.5)  # a slow consumer: the daemon waits for credit
        ahead = await d.get("produced")
        assert ahead <= 1024 + 10, f"the daemon ran {ahead} items ahead of a window of 1024"
        await stream.aclose()


async def test_a_stream_timeout_and_the_daemon_going_away(start_daemon):
    proc = start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        stream = await d.acount(3, pause=1.0, timeout=0.3)
        with pytest.raises(malacoda.CallTimeout, match="no item within"):
            await stream.__anext__()
        await asyncio.sleep(0.9)
        assert await stream.__anext__() == 0  # still open: the item came meanwhile
        await stream.aclose()
        endless = await d.aendless(pause=0.05)
        assert await endless.__anext__() == 0
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(malacoda.ConnectionLost):
            async for _ in endless:
                pass


async def test_subscribe_and_watch_with_async_for(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        events = await d.subscribe("orders")
        watch = await d.watch("pst_counter")
        assert await watch.__anext__() == 0  # its value now
        assert await d.announce("orders.new", {"id": 1}) == 1
        assert await d.announce("other", 2) == 0
        ev = await events.__anext__()
        assert ev["topic"] == "orders.new" and ev["value"] == {"id": 1}
        await d.bump()
        assert await watch.__anext__() == 1
        # events published by an async def method, while it runs on the loop
        waiting = asyncio.create_task(d.await_events(0.05))
        got = [(await events.__anext__())["value"] for _ in range(3)]
        assert got == [0, 1, 2] and await waiting == 3
        await events.aclose()
        await watch.aclose()


async def test_async_generator_streams_are_bounded_and_leased(start_daemon):
    """Streams of async generators count against max_streams (BUSY past it, the generator
    never started) and a client that stops talking loses them when the lease runs out (their
    finally runs)."""
    start_daemon("FewStreams", module=AIO)
    async with malacoda.aio.get("FewStreams", timeout=10) as d:
        held = [await d.aendless(pause=0.5) for _ in range(4)]
        with pytest.raises(malacoda.Busy, match="streams are open"):
            await d.aendless()
        assert await d.echo("calls go on") == "calls go on"
        for stream in held:
            await stream.aclose()
        await until(lambda: _equals(d.open_streams(), 0), what="the streams to close")
        assert await d.get("closed_streams") == 4
    # a client that goes silent (no keep-alive: its channel is gone) loses its stream
    quiet = malacoda.aio.get("FewStreams", timeout=10)
    stream = await quiet.aendless(pause=0.05)
    assert await stream.__anext__() == 0
    channel = quiet._channel
    channel._keeper.cancel()  # no more pings: as if the client hung
    async with malacoda.aio.get("FewStreams", timeout=10) as other:
        await until(lambda: _equals(other.get("closed_streams"), 5), timeout=10,
                    what="the lease to close the silent client's stream")
    await quiet.aclose()


async def test_timeout_keyword_of_a_method_that_has_its_own(start_daemon):
    start_daemon("AsyncDaemon", module=AIO)
    async with malacoda.aio.get("AsyncDaemon", timeout=10) as d:
        # slow has no timeout parameter: the keyword is the call's, checked
        with pytest.raises(malacoda.ConfigError, match="timeout"):
            await d.slow(0.1, timeout=0)
        assert await d.own_timeout(timeout=0) == 0  # its own parameter: passed, not checked
        assert await d.own_timeout(timeout="x") == "x"
