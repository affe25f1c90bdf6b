"""The proxy's own edges: its timeouts, forks, and the names it passes through."""

from __future__ import annotations

import inspect
import json
import os
import signal
from typing import Callable

import msgpack
import pytest

import malacoda
from malacoda.client.control import describe
from malacoda.client.proxy import request
from tests.support import pid_alive, wait_for

BAD_TIMEOUTS = [float("nan"), 0, 0.0, -1, -0.5, -(10**400), "5", b"5", True, [1]]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=lambda v: repr(v)[:12])
def test_a_bad_timeout_is_a_config_error_and_nothing_is_sent(start_daemon, bad):
    start_daemon()
    with pytest.raises(malacoda.ConfigError, match="timeout="):
        malacoda.get("TestDaemon", timeout=bad)
    d = malacoda.get("TestDaemon")
    with pytest.raises(malacoda.ConfigError, match="timeout=") as caught:
        d.bump(timeout=bad)
    assert repr(bad) in str(caught.value)
    assert d.pst_counter == 0  # the call never went out, so it never ran


@pytest.mark.parametrize("endless", [float("inf"), 1e300, 10**400], ids=["inf", "1e300", "10**400"])
def test_an_endless_timeout_waits_for_the_reply(start_daemon, endless):
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=endless)
    assert d.slow(0.2) == "slept 0.2"
    assert d.slow(0.2, timeout=endless) == "slept 0.2"
    assert d.bump(timeout=endless) == 1


def _in_forked_child(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a fork of this process; its result (or error, as text) comes back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                result: object = ["ok", fn()]
            except BaseException as exc:  # noqa: B902 - reported to the parent
                result = ["error", f"{type(exc).__name__}: {exc}"]
            os.write(write_end, json.dumps(result).encode())
        except BaseException:  # noqa: B902
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        status = wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid or None, timeout=30,
                          what="the forked child to finish")
        assert status
        with os.fdopen(read_end, "rb") as f:
            kind, value = json.loads(f.read() or b'["error", "no result"]')
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert kind == "ok", value
    return value


def test_a_proxy_works_in_a_forked_child_with_request_ids_of_its_own(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=5)
    assert d.bump() == 1
    # The child's first request would be the parent's next (same id, same frames): answered
    # from the daemon's reply cache, it would not run.
    assert _in_forked_child(d.bump) == 2
    assert d.bump() == 3
    assert _in_forked_child(lambda: d.pst_counter) == 3
    assert d.pst_counter == 3


def test_a_child_closing_its_parents_connection_leaves_it_alone(start_daemon):
    """What a proxy the child never uses does when the child drops it (Channel.__del__ ->
    close): it must not wait for a lock some parent thread held at the fork (here: for ever),
    nor close the parent's sockets."""
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=5)
    assert d.bump() == 1
    channel = d._channel

    def close() -> str:
        channel.close()
        return "closed"

    with channel._io:  # held at the fork, as by a parent thread in the middle of a call
        assert _in_forked_child(close) == "closed"
    assert d.bump() == 2


def test_decorated_methods_are_methods(start_daemon):
    start_daemon("Decorated")
    d = malacoda.get("Decorated", timeout=10)
    assert d.square(4) == 16 and d.square(4) == 16  # functools.lru_cache
    assert d.kind(3) == "an int" and d.kind("x") == "something"  # singledispatchmethod
    assert d.plus_one(2) == 3  # partialmethod
    assert d.computed == 7  # a cached_property is an attribute
    assert {"square", "kind", "plus_one", "computed"} <= set(dir(d))
    assert "x" in inspect.signature(d.square).parameters
    assert inspect.getdoc(d.square) == "The square of x, remembered."
    for name in ("square", "kind", "plus_one"):
        with pytest.raises(malacoda.AccessDenied):
            setattr(d, name, 5)
    assert d.square(5) == 25  # not replaced
    with pytest.raises(malacoda.AccessDenied):
        d._kind_int(3)  # private names stay unreachable
    assert "system" not in describe(d)["methods"]  # os.system held by the class
    with pytest.raises(TypeError):  # not callable through the proxy: the attribute it is
        request(malacoda.get("Decorated", timeout=10), "call", "system", [["true"], {}], 10)


def test_a_methods_own_timeout_parameter_gets_the_keyword(start_daemon):
    start_daemon("OwnTimeout")
    d = malacoda.get("OwnTimeout")
    assert d.fetch("u", timeout=30) == ["u", 30]
    assert d.fetch("u") == ["u", 10]
    assert d.nap(0.2, timeout=0.01) == 0.01  # the method's value, not a call timeout
    assert list(inspect.signature(d.fetch).parameters) == ["url", "timeout"]
    with pytest.raises(malacoda.CallTimeout):  # the call timeout is the proxy's
        malacoda.get("OwnTimeout", timeout=0.3).nap(10, timeout=1)
    assert d.add(1, timeout=5) == 3  # the others still take it as their call timeout


def test_ints_up_to_the_wires_4300_digits_round_trip_and_longer_ones_are_refused(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=10)
    longest = 10**4300 - 1
    assert d.echo(longest) == longest and d.echo(-longest) == -longest
    with pytest.raises(ValueError, match="at most 4300 decimal digits"):
        d.echo(10**4300)  # not sent: before, Python's own str() limit, raw
    with pytest.raises(ValueError, match="at most 4300 decimal digits"):
        d.echo(10**100000)
    with pytest.raises(TypeError, match="the result cannot be sent: .*4300 decimal digits"):
        d.add(longest, 1)
    assert d.add(1) == 3  # the daemon serves on


def test_a_daemon_refuses_int_text_beyond_4300_digits_from_another_client(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=10)
    body = msgpack.packb([[msgpack.ExtType(11, b"9" * 4301)], {}])
    with pytest.raises(malacoda.ProtocolError, match="more than 4300 digits"):
        request(d, "call", "echo", None, 10, (body, []))
