"""The client's connection object on its own: what a proxy relies on."""

from __future__ import annotations

import os

from malacoda import protocol as p
from malacoda.channel import Channel
from malacoda.runtime import Registry


def _pin_all_threads(cpus: set) -> None:
    """Every thread of this process (ZeroMQ's included) to ``cpus``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:
            pass  # the thread ended meanwhile


def test_a_channel_dropped_without_close_leaves_the_next_one_working(start_daemon):
    """A channel the garbage collector takes must not wedge the process's ZeroMQ context.

    Left to the collector, its monitor socket could be closed before the socket it watched;
    with everything on one CPU that stopped every later connection of the process from
    sending (found by the benchmark). Pinned to one CPU, as it was found.
    """
    everywhere = os.sched_getaffinity(0)
    _pin_all_threads({min(everywhere)})
    try:
        start_daemon()  # inherits the one CPU
        endpoint = f"tcp://127.0.0.1:{Registry().lookup('TestDaemon').port}"
        for n in range(3):
            Channel(endpoint)  # dropped at once, never closed
            channel = Channel(endpoint, heartbeat=0.5)
            try:
                rid = b"after-drop-%d" % n
                reply = channel.request(p.request_frames(rid, p.PING, None, None, None), rid, 10)
            finally:
                channel.close()
            assert reply.value() == "pong"
    finally:
        _pin_all_threads(everywhere)  # threads started meanwhile too
