"""An attack review of streams (issue 15): what another local user (a raw peer of an ``open``
daemon) and a hostile client of the owner's own daemon can do to them."""

from __future__ import annotations

import pytest

import malacoda
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
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
