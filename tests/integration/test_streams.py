"""Streams through the proxy: generator methods, credit, leaving early, timeouts, restarts."""

from __future__ import annotations

import gc
import signal
import threading
import time

import pytest

import malacoda
from malacoda.client.streaming import RemoteIterator
from tests.support import wait_for


def test_a_generator_method_streams_its_items(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    stream = d.count(5)
    assert isinstance(stream, RemoteIterator)
    assert list(stream) == [0, 1, 2, 3, 4]
    assert list(d.count(0)) == []
    assert sum(d.count(20000)) == sum(range(20000))
    wait_for(lambda: d.closed_streams == 3, what="every generator's finally")
    assert d.open_streams() == 0
    assert d.echo("still a call") == "still a call"


def test_a_method_returning_an_iterator_streams(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    assert list(d.iterate(4)) == [0, 1, 2, 3]
    assert list(d.numbers()) == [0, 1, 2]  # a generator expression returned


def test_items_arrive_as_they_are_yielded(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    started = time.monotonic()
    stream = d.first_then_wait(3.0)
    assert next(stream) == "first"
    assert time.monotonic() - started < 1.5  # not held back until the generator ends
    stream.close()


def test_an_exception_in_the_generator_reaches_the_consumer_after_its_items(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    got = []
    with pytest.raises(ValueError, match="failed at 3"):
        for item in d.fail_at(3):
            got.append(item)
    assert got == [0, 1, 2]


@pytest.mark.parametrize("how", ["break", "close", "gc"])
def test_leaving_early_closes_the_generator_in_the_daemon(start_daemon, how):
    start_daemon("StreamDaemon", lease=30.0)  # not the lease: the cancel does it
    d = malacoda.get("StreamDaemon", timeout=10)
    if how == "break":
        for item in d.endless():
            if item == 5:
                left = time.monotonic()
                break
    elif how == "close":
        stream = d.endless()
        assert next(stream) == 0
        left = time.monotonic()
        stream.close()
    else:
        stream = d.endless()
        assert next(stream) == 0
        left = time.monotonic()
        del stream
        gc.collect()
    wait_for(lambda: d.closed_streams == 1, timeout=2.0, what="the generator's finally",
             interval=0.005)
    print(f"\nFIGURES {{\"test\": \"leaving by {how}\", \"finally_ran_within_ms\": "
          f"{(time.monotonic() - left) * 1000:.0f}}}")
    assert d.open_streams() == 0


def test_flow_control_keeps_the_daemon_a_window_ahead(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    stream = d.endless()
    for _ in range(10):
        next(stream)
    # The consumer stops: the daemon produces up to its credit (the window) and waits.
    wait_for(lambda: d.produced >= 10 + 512, what="the producer to run ahead")
    time.sleep(0.3)
    produced = d.produced
    assert produced <= 10 + 1024, produced
    time.sleep(0.3)
    assert d.produced == produced  # it waits for credit, it does not run on
    assert len(stream._items) <= 1024
    for _ in range(3000):  # consuming grants more
        next(stream)
    assert d.produced >= 3010
    stream.close()


def test_timeout_bounds_the_wait_for_each_item(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon")
    stream = d.first_then_wait(4.0, timeout=0.5)
    assert next(stream) == "first"
    started = time.monotonic()
    with pytest.raises(malacoda.CallTimeout):
        next(stream)
    assert time.monotonic() - started < 3.0
    deadline = time.monotonic() + 15
    while True:  # the stream stayed open (past its 1 s lease): waiting again gets the item
        try:
            assert next(stream) == "second"
            break
        except malacoda.CallTimeout:
            assert time.monotonic() < deadline
    with pytest.raises(StopIteration):
        next(stream)


def test_a_shorter_lease_is_kept_alive_after_a_longer_one(start_daemon):
    """The keep-alive pings at the pace of the shortest lease of the streams open now (it
    once kept the pace of a 30 s lease streamed before, and a 1 s lease ran out)."""
    start_daemon("StreamDaemon", lease=30.0)
    long = malacoda.get("StreamDaemon", timeout=10).endless()
    next(long)
    long.close()
    start_daemon("StreamDaemon", name="Short", lease=1.0)
    d = malacoda.get("Short", timeout=10)
    stream = d.first_then_wait(3.0)
    assert next(stream) == "first"
    assert next(stream) == "second"


def test_the_daemon_dying_mid_stream_raises_connection_lost(start_daemon):
    proc = start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon")
    stream = d.endless(0.01)
    assert next(stream) == 0
    proc.kill(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(malacoda.ConnectionLost):
        for _ in stream:
            pass
    assert time.monotonic() - started < 10


def test_a_restart_mid_stream_raises_connection_lost(start_daemon):
    """The daemon is replaced by a new one on the same port: never a silent end, nor items of
    another run."""
    proc = start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon")
    port = d._target.endpoint.rsplit(":", 1)[1]
    stream = d.endless(0.01)
    assert next(stream) == 0
    proc.kill(signal.SIGKILL)
    proc.wait()
    start_daemon("StreamDaemon", port=int(port))
    with pytest.raises(malacoda.ConnectionLost):
        for _ in stream:
            pass
    assert d.echo(1) == 1  # the proxy goes on with the new daemon


def test_a_client_that_dies_loses_its_streams_within_the_lease(start_daemon, home):
    start_daemon("StreamDaemon", lease=1.0)
    import subprocess
    import sys

    code = ("import malacoda, sys; d = malacoda.get('StreamDaemon'); s = d.endless(); next(s); "
            "print('streaming', flush=True); sys.stdin.read()")
    import os

    env = dict(os.environ, MALACODA_HOME=str(home))
    client = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "streaming"
        d = malacoda.get("StreamDaemon", timeout=10)
        assert d.open_streams() == 1
        time.sleep(2.0)  # alive, the client keeps its stream past the lease (keep-alives)
        assert d.open_streams() == 1 and d.closed_streams == 0
        client.kill()
        client.wait()
        killed = time.monotonic()
        wait_for(lambda: d.closed_streams == 1, timeout=3.0, what="the lease to run out")
        print(f"\nFIGURES {{\"test\": \"client killed\", \"lease_s\": 1.0, "
              f"\"finally_ran_after_s\": {time.monotonic() - killed:.2f}}}")
        assert d.open_streams() == 0
    finally:
        client.kill()
        client.wait()


def test_many_threads_share_one_proxy_for_streams_and_calls(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=30)
    errors = []
    results = {}

    def consume(k):
        try:
            if k % 2:
                results[k] = list(d.count(3000))
            else:
                results[k] = [d.echo(i) for i in range(300)]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for k in range(8):
        assert results[k] == (list(range(3000)) if k % 2 else list(range(300)))


def test_many_streams_cannot_starve_ordinary_calls(start_daemon):
    """Generators blocked inside next() hold at most workers - 1 workers."""
    start_daemon("StreamDaemon", workers=3)
    d = malacoda.get("StreamDaemon", timeout=10)
    streams = [d.endless(0.5) for _ in range(12)]
    for s in streams[:2]:
        next(s)  # producing: each turn sleeps inside next()
    for _ in range(5):
        started = time.monotonic()
        assert d.echo("through") == "through"
        assert time.monotonic() - started < 0.4
    for s in streams:
        s.close()


def test_a_serial_daemon_alternates_stream_turns_and_calls(start_daemon):
    start_daemon("StreamDaemon", workers=1)
    d = malacoda.get("StreamDaemon", timeout=10)
    stream = d.endless(0.001)
    next(stream)
    started = time.monotonic()
    for i in range(20):
        assert d.echo(i) == i
    assert time.monotonic() - started < 2.0
    assert next(stream) >= 1
    stream.close()


def test_the_describe_marks_generator_methods(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    description = d._describe()
    assert description["extensions"] == {"streams": 1}
    assert description["methods"]["count"]["stream"] is True
    assert "stream" not in description["methods"]["iterate"]
    assert "stream" not in description["methods"]["echo"]
