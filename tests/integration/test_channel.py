"""The client's connection object on its own: what a proxy relies on."""

from __future__ import annotations

import os

import pytest

from malacoda.client.channel import Channel
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
from tests.support import pin_threads


def test_a_channel_dropped_without_close_leaves_the_next_one_working(start_daemon):
    """A channel the garbage collector takes must not wedge the process's ZeroMQ context.

    Left to the collector, its monitor socket could be closed before the socket it watched;
    with everything on one CPU that stopped every later connection of the process from
    sending (found by the benchmark). Pinned to one CPU, as it was found.
    """
    everywhere = os.sched_getaffinity(0)
    pin_threads({min(everywhere)})
    try:
        start_daemon()  # inherits the one CPU
        entry = Registry().lookup("TestDaemon")
        endpoint = f"tcp://127.0.0.1:{entry.port}"
        secret = entry.secret.encode()
        for n in range(3):
            Channel(endpoint, plain=secret)  # dropped at once, never closed
            channel = Channel(endpoint, heartbeat=0.5, plain=secret)
            try:
                rid = b"after-drop-%d" % n
                reply = channel.request(p.request_frames(rid, p.PING, None, None, None), rid, 10)
            finally:
                channel.close()
            assert reply.value() == "pong"
    finally:
        pin_threads(everywhere)  # threads started meanwhile too


def test_calls_that_timed_out_before_the_daemon_was_up_never_run(start_daemon):
    """Requests wait for a connection until their deadline and are then withdrawn: they are
    not left queued in the socket to run when the daemon appears after their callers gave
    up, and a flood of them cannot fill the socket's queue and block the next call."""
    import threading

    from malacoda.errors import CallTimeout
    from tests.support import free_port

    port = free_port()
    channel = Channel(f"tcp://127.0.0.1:{port}")
    count = iter(range(10**6))

    def bump(timeout: float) -> p.Reply:
        rid = b"bump-%08d" % next(count)
        return channel.request(p.request_frames(rid, p.CALL, "bump", [[], {}], None), rid,
                               timeout)

    errors = []

    def bump_from_a_thread() -> None:
        try:
            bump(0.2)
        except CallTimeout as exc:
            errors.append(exc)

    try:
        for _ in range(3):  # four threads at once: one reads, three queue for it
            threads = [threading.Thread(target=bump_from_a_thread) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert len(errors) == 12 and all("not sent" in str(e) for e in errors), errors
        for _ in range(1500):  # more than the socket's queue (SNDHWM 1000) would hold
            with pytest.raises(CallTimeout, match="not sent"):
                bump(0.001)
        start_daemon(port=port, open=True)  # (its secret does not exist before it starts)
        rid = b"get-counter"
        frames = p.request_frames(rid, p.GET, "pst_counter", None, None)
        assert channel.request(frames, rid, 10).value() == 0  # none of the 1512 calls ran
        assert bump(10).value() == 1  # and the same connection works now
    finally:
        channel.close()
