"""Retries never run a call twice: the daemon answers a re-sent request id from its reply cache."""

from __future__ import annotations

import os

import pytest

import malacoda
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
from tests.support import InThread, via, wait_for
from tests.support.relay import Relay


@pytest.fixture
def raw(start_daemon, dealer):
    """Raw DEALERs to a HostileDaemon (no proxy logic at all)."""
    start_daemon("HostileDaemon")
    return lambda: dealer(Registry().lookup("HostileDaemon").port)


def test_same_id_twice_runs_once(raw):
    client = raw()
    rid = os.urandom(16)
    frames = p.request_frames(rid, p.CALL, "tally", [[], {}], None)
    client.send(frames)
    client.send(frames)  # a retry racing the first copy
    first, second = client.recv(), client.recv()
    assert (first.rid, first.value()) == (rid, 1)
    assert (second.rid, second.value()) == (rid, 1)
    client.send(frames)  # a retry long after the reply: answered from the cache
    assert client.recv().value() == 1
    assert client.nothing_more()
    assert malacoda.get("HostileDaemon").tallies == 1


def test_short_ids_are_per_client_and_never_answered_from_the_cache(raw):
    """Two clients numbering their requests from 1 (as the protocol's example did) each get
    their call run; only ids of 8 bytes or more, unique across clients, are remembered."""
    first_client, second_client = raw(), raw()
    frames = p.request_frames(b"1", p.CALL, "tally", [[], {}], None)
    first_client.send(frames)
    assert first_client.recv().value() == 1
    second_client.send(frames)
    assert second_client.recv().value() == 2
    assert malacoda.get("HostileDaemon").tallies == 2


def test_same_id_while_running_gets_the_one_reply(raw):
    first_client, second_client = raw(), raw()
    d = malacoda.get("HostileDaemon")
    rid = os.urandom(16)
    frames = p.request_frames(rid, p.CALL, "tally", [[1.0], {}], None)
    first_client.send(frames)
    wait_for(lambda: d.tallies == 1, what="the call to start")
    second_client.send(frames)  # the same request over a new connection (a new routing id)
    assert second_client.recv().value() == 1
    assert first_client.recv().value() == 1
    assert d.tallies == 1


def test_same_id_other_request_is_not_confused(raw):
    """A reused id with another body is another request: it runs, with its own reply."""
    client = raw()
    rid = b"same-id"
    client.send(p.request_frames(rid, p.CALL, "echo", [["a"], {}], None))
    assert client.recv().value() == "a"
    client.send(p.request_frames(rid, p.CALL, "echo", [["b"], {}], None))
    assert client.recv().value() == "b"
    client.send(p.request_frames(rid, p.SET, "pst_counter", 5, None))
    assert client.recv().status == p.OK
    client.send(p.request_frames(rid, p.SET, "pst_counter", 5, None))
    assert client.recv().status == p.OK
    assert malacoda.get("HostileDaemon").pst_counter == 5


def test_gets_and_busy_are_not_remembered(start_daemon, dealer):
    """Only calls and sets that ran are cached: a request refused as busy may be re-sent."""
    start_daemon("HostileDaemon", workers=1, queue=0)
    client = dealer(Registry().lookup("HostileDaemon").port)
    slow = p.request_frames(b"slow", p.CALL, "tally", [[1.0], {}], None)
    quick = p.request_frames(b"quick", p.CALL, "tally", [[], {}], None)
    client.send(slow)
    d = malacoda.get("HostileDaemon")

    def worker_taken() -> bool:
        try:
            d.constant
        except malacoda.Busy:
            return True
        return False

    wait_for(worker_taken, what="the slow call to take the only worker")
    client.send(quick)
    assert client.recv().status == p.BUSY  # nothing ran
    assert client.recv().value() == 1  # the slow call's reply
    client.send(quick)  # the same id again: it runs now
    assert client.recv().value() == 2
    assert d.tallies == 2


def test_proxy_resends_with_the_same_id_after_a_dropped_connection(start_daemon, monkeypatch):
    """The connection drops mid-call (a network cut): the proxy reconnects, re-sends the same
    request id, and the call that was already running is answered, not run a second time."""
    start_daemon("HostileDaemon")
    relay = Relay(Registry().lookup("HostileDaemon").port)
    try:
        watcher = malacoda.get("HostileDaemon")
        assert watcher.tallies == 0  # connected (resolved) before the patch below
        via(monkeypatch, f"tcp://127.0.0.1:{relay.port}")  # NAME:PORT reaches registered ports only
        d = malacoda.get("HostileDaemon")
        call = InThread(d.tally, 1.5)
        wait_for(lambda: watcher.tallies == 1, what="the call to start")
        relay.cut()
        call.join(20)
        assert (call.value, call.error) == (1, None)
        assert watcher.tallies == 1
        assert relay.connections >= 2  # it did reconnect
        assert d.tally() == 2  # and the proxy stays usable
    finally:
        relay.close()


def test_a_lost_reply_too_large_to_keep_is_reported_lost_not_run_again(start_daemon, monkeypatch):
    """The reply of a call is lost with its connection, and it was too large for the daemon to
    keep (over 256 KiB): the proxy's re-send is answered GONE and the call fails with ReplyLost
    (a ConnectionLost) — it ran once — instead of running again."""
    start_daemon("HostileDaemon")
    relay = Relay(Registry().lookup("HostileDaemon").port)
    try:
        watcher = malacoda.get("HostileDaemon")
        assert watcher.tallies == 0  # connected (resolved) before the patch below
        via(monkeypatch, f"tcp://127.0.0.1:{relay.port}")  # NAME:PORT reaches registered ports only
        d = malacoda.get("HostileDaemon")
        assert d.tally() == 1
        call = InThread(d.tally_big, 0.5, 300 << 10)
        wait_for(lambda: watcher.tallies == 2, what="the call to start")
        relay.hold_replies()
        wait_for(lambda: watcher.finished == 1, what="the call to end")
        relay.cut()
        call.join(30)
        assert isinstance(call.error, malacoda.ReplyLost), (call.value, call.error)
        assert "ran already" in str(call.error)
        assert (watcher.tallies, watcher.finished) == (2, 1)  # it did not run again
        assert d.tally() == 3  # and the proxy stays usable
    finally:
        relay.close()


def test_call_in_flight_when_the_daemon_restarts_is_not_rerun(start_daemon):
    """A restarted daemon has no memory of the call: the proxy reports the loss honestly
    instead of running it again, and the next call goes to the new daemon."""
    proc = start_daemon("HostileDaemon")
    d = malacoda.get("HostileDaemon")
    call = InThread(d.tally, 30)
    wait_for(lambda: malacoda.get("HostileDaemon").tallies == 1, what="the call to start")
    proc.kill()
    proc.wait()
    start_daemon("HostileDaemon")  # another incarnation, on another port
    call.join(30)
    assert isinstance(call.error, malacoda.ConnectionLost), call.value
    assert d.tallies == 0  # the new daemon never ran it
    assert d.tally() == 1


def test_a_resent_call_whose_reply_was_not_kept_is_gone_not_run_again(raw):
    """Replies are kept up to 256 KiB each and 8 MiB in all, newest first; a re-sent copy of a
    call whose reply was not kept (too large, or pushed out) gets GONE — it ran, its result is
    lost — and does not run again. A copy of a call whose reply was kept gets that reply."""
    client = raw()
    part = b"m" * (200 << 10)
    calls = [p.request_frames(b"call-%04d" % i, p.CALL, "record", [["part", i, part], {}], None)
             for i in range(48)]  # 9.6 MB of replies
    big = p.request_frames(b"big-call", p.CALL, "record", [["big", 0, b"b" * (1 << 20)], {}], None)
    for frames in [*calls, big]:
        client.send(frames)
        assert client.recv(30).status == p.OK
    client.send(big)  # 1 MiB: never kept
    gone = client.recv(30)
    assert gone.rid == b"big-call" and gone.status == p.GONE and "ran already" in gone.value()["message"]
    client.send(calls[0])  # pushed out by the newer ones
    assert client.recv(30).status == p.GONE
    client.send(calls[-1])  # the newest: kept
    kept = client.recv(30)
    assert kept.status == p.OK and kept.value() == ["part", 47, part]
    assert malacoda.get("HostileDaemon").record_stats() == [49, 0, 49]  # each ran once


def test_same_id_other_buffer_of_the_same_length_runs(raw):
    """A reused id with another bytes argument of the same length (>= 32 KiB: a buffer frame,
    not in the first frame) is another request: it runs and gets its own reply."""
    client = raw()
    rid = os.urandom(16)
    first, second = b"a" * (40 << 10), b"b" * (40 << 10)
    frames = p.request_frames(rid, p.CALL, "record", [["c", 0, first], {}], None)
    assert len(frames) > 1  # the bytes travel as a buffer frame
    client.send(frames)
    assert client.recv().value() == ["c", 0, first]
    client.send(p.request_frames(rid, p.CALL, "record", [["c", 0, second], {}], None))
    assert client.recv().value() == ["c", 0, second]
    assert malacoda.get("HostileDaemon").record_stats() == [1, 1, 2]


def test_a_resend_with_another_timeout_is_the_same_request(raw):
    """A re-send carries the caller's remaining time: the same id and body with another
    timeout is still the same request, answered from the cache, not run again."""
    client = raw()
    rid = os.urandom(16)
    client.send(p.request_frames(rid, p.CALL, "tally", [[], {}], 10_000))
    assert client.recv().value() == 1
    client.send(p.request_frames(rid, p.CALL, "tally", [[], {}], 7_500))
    assert client.recv().value() == 1
    assert malacoda.get("HostileDaemon").tallies == 1
