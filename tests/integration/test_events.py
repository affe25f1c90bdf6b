"""Events: publish/subscribe and watch, through real daemons."""

from __future__ import annotations

import threading
import time

import pytest

import malacoda
from tests.support import wait_for


def test_subscribe_gets_the_events_whose_topic_starts_with_the_prefix(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    orders = d.subscribe("orders")
    everything = d.subscribe("")
    wait_for(lambda: d.open_streams() == 2, what="both subscriptions")
    assert d.announce("orders.new", {"id": 1}) == 2
    assert d.announce("stock", 5) == 1
    assert d.announce("orders.paid", (1, 2)) == 2
    assert next(orders) == {"topic": "orders.new", "value": {"id": 1}, "missed": 0}
    assert next(orders) == {"topic": "orders.paid", "value": (1, 2), "missed": 0}
    assert [next(everything)["topic"] for _ in range(3)] == ["orders.new", "stock", "orders.paid"]
    orders.close()
    everything.close()
    wait_for(lambda: d.open_streams() == 0, what="the subscriptions to close")
    assert d.announce("orders.new", 1) == 0


def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=30)
    slow = d.subscribe("tick")
    fast = d.subscribe("other")
    wait_for(lambda: d.open_streams() == 2, what="the subscriptions")
    started = time.monotonic()
    assert d.announce_many("tick", 5000) == 5000  # never blocks on the reader
    assert time.monotonic() - started < 5
    got = [next(slow) for _ in range(1024 + 1024)]  # in flight (the window), then queued
    values = [e["value"] for e in got]
    assert values == sorted(values) and values[-1] == 4999
    missed = sum(e["missed"] for e in got)
    assert missed + len(got) == 5000  # every event either came or was counted as missed
    assert missed == 5000 - 1024 - 1024  # the window in flight, then 1024 queued
    d.announce("other", "x")
    assert next(fast)["value"] == "x"  # the slow one held nobody up
    slow.close()
    fast.close()


def test_watch_sees_proxy_sets_and_the_daemons_own_assignments(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    seen = []
    watch = d.watch("pst_counter")
    assert next(watch) == 0  # its value now

    def read():
        for value in watch:
            seen.append((value, time.monotonic()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    changed = time.monotonic()
    assert d.bump() == 1  # self.pst_counter += 1 in the daemon's code
    wait_for(lambda: seen and seen[-1][0] == 1, timeout=2, what="the watcher to see 1")
    assert seen[-1][1] - changed < 0.1
    changed = time.monotonic()
    d.pst_counter = 42  # through the proxy
    wait_for(lambda: seen[-1][0] == 42, timeout=2, what="the watcher to see 42")
    assert seen[-1][1] - changed < 0.1
    watch.close()
    reader.join(5)


def test_watching_is_removed_with_the_last_watcher(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    a, b = d.watch("pst_counter"), d.watch("loops")
    next(a), next(b)
    assert d.hooked() is True
    a.close()
    wait_for(lambda: d.open_streams() == 1, what="a to close")
    assert d.hooked() is True
    b.close()
    wait_for(lambda: d.open_streams() == 0, what="b to close")
    assert d.hooked() is False  # attribute writes are plain again


def test_a_watcher_gets_the_newest_value_not_every_step(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    watch = d.watch("pst_counter")
    assert next(watch) == 0
    for _ in range(2000):
        d.bump()
    values = []
    while not values or values[-1] != 2000:
        values.append(next(watch))
    assert values == sorted(values) and len(values) <= 2000


@pytest.mark.parametrize("call", [
    lambda d: d.subscribe("_private"),
    lambda d: d.watch("_malacoda_secret"),
    lambda d: d.watch("__class__"),
])
def test_private_topics_and_names_are_refused(start_daemon, call):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    with pytest.raises(malacoda.AccessDenied):
        call(d)
    assert d.open_streams() == 0


def test_watch_of_a_method_or_a_missing_name_and_publish_are_refused(start_daemon):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    with pytest.raises(TypeError, match="is a method"):
        d.watch("echo")
    with pytest.raises(AttributeError):
        d.watch("no_such_thing")
    with pytest.raises(malacoda.AccessDenied):  # the daemon publishes; clients subscribe
        d.publish("orders", 1)
    with pytest.raises(malacoda.AccessDenied):
        d._request("call", "publish", [["orders", 1], {}], 5)
