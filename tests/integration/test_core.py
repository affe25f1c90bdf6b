"""The core, end to end: real daemon processes, real sockets, a real proxy."""

from __future__ import annotations

import datetime as dt
import inspect
import signal
import threading
import time
import uuid
from decimal import Decimal

import pytest

import malacoda
from malacoda.client.proxy import request
from malacoda.host.registry import Registry
from malacoda.wire import codec
from tests.support import pid_alive, wait_for


def test_original_scenario(start_daemon):
    """The original test: constant, echo, unknown attribute, timeout, pst saved and reloaded."""
    start_daemon()
    d = malacoda.get("TestDaemon")
    assert d.constant == 10
    assert d.echo("hello world") == "hello world"
    with pytest.raises(AttributeError):
        d.no_such_attribute
    with pytest.raises(TimeoutError):
        d.slow(2, timeout=0.2)
    assert d.echo("after timeout") == "after timeout"  # never the late reply
    assert d.bump() == 1
    d.pst_counter = 41
    assert d.bump() == 42
    malacoda.stop("TestDaemon")
    start_daemon()
    assert malacoda.get("TestDaemon").pst_counter == 42


def test_values_round_trip_with_their_types(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    values = [
        None, True, False, 0, -1, 2**64, -(2**100), 1.5, float("inf"), "", "ünïcode", b"",
        b"\x00\xff", [1, [2]], (1, (2, 3)), {"a": 1, 2: "b", (3, 4): None}, {1, 2},
        frozenset({"x"}), dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.date(2024, 2, 29),
        dt.time(23, 59, 59, 999999), dt.timedelta(days=-2, microseconds=7), Decimal("1.10"),
        Decimal("NaN"), uuid.UUID("12345678-1234-5678-1234-567812345678"), complex(1, -2),
        {"nested": [(1, {2, 3}), {"t": (dt.date(2020, 1, 1),)}]}, b"x" * (1 << 20),
    ]
    for value in values:
        result = d.echo(value)
        if value != value:  # NaN
            assert result.is_nan()
            continue
        assert result == value and type(result) is type(value), value
    assert d.echo(1, 2, k=(3,)) == [1, [2], {"k": (3,)}]


def test_remote_exceptions(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    with pytest.raises(ValueError, match="bad value") as info:
        d.fail_value()
    assert "fail_value" in info.value.remote_traceback
    with pytest.raises(KeyError) as info:
        d.fail_key()
    assert info.value.args == ("missing",)
    with pytest.raises(malacoda.RemoteError) as info:
        d.fail_custom()
    assert info.value.remote_type == "tests.support.daemons.CustomError"
    assert "custom failure" in str(info.value)
    with pytest.raises(TypeError):
        d.add()  # a wrong call is the caller's TypeError, as locally


def test_remote_exceptions_keep_their_family(start_daemon):
    """An exception with no built-in type here is a RemoteError that is also its nearest
    built-in ancestor; an OSError keeps errno, strerror and filename; a remote TimeoutError
    is told from the proxy's own CallTimeout by remote_type."""
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=10)
    with pytest.raises(ValueError) as info:
        d.fail_json()
    assert isinstance(info.value, malacoda.RemoteError)
    assert info.value.remote_type == "json.decoder.JSONDecodeError"
    assert "Expecting property name" in str(info.value)
    with pytest.raises(UnicodeDecodeError) as info:  # a built-in: itself, with its args
        d.fail_unicode()
    assert info.value.object == b"\xff"
    with pytest.raises(FileNotFoundError) as info:
        d.fail_file()
    exc = info.value
    assert (exc.errno, exc.filename) == (2, "/nonexistent/malacoda-file")
    assert exc.strerror == "No such file or directory"
    assert "/nonexistent/malacoda-file" in str(exc)
    with pytest.raises(TimeoutError) as info:
        d.fail_timeout()
    assert not isinstance(info.value, malacoda.CallTimeout)
    assert info.value.remote_type == "builtins.TimeoutError"
    with pytest.raises(TimeoutError) as info:
        d.slow(2, timeout=0.2)
    assert isinstance(info.value, malacoda.CallTimeout)
    assert getattr(info.value, "remote_type", None) is None


def test_a_returned_generator_streams_and_a_coroutine_says_so(start_daemon):
    """Not "register it with register_type()": no registration makes one travel. A generator
    returned by itself streams (tests/integration/test_streams.py), a coroutine is awaited on
    the daemon (issue 15: tests/integration/test_aio.py); inside a value neither can travel."""
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=10)
    assert list(d.numbers()) == [0, 1, 2]
    assert d.later() == 1  # async def: run on the daemon's event loop
    with pytest.raises(TypeError) as info:
        d.generator_in_a_list()
    text = str(info.value)
    assert "a generator within a list" in text and "register_type" not in text, text

    async def later() -> int:
        return 1

    coro = later()
    try:
        with pytest.raises(TypeError) as info:
            codec.encode([coro])
    finally:
        coro.close()
    text = str(info.value)
    assert "coroutine inside a value" in text and "register_type" not in text, text


def test_a_request_over_max_message_says_too_large(start_daemon):
    """Not "ConnectionLost: the daemon went away": the proxy knows the daemon's max_message
    from describe and refuses the request before sending it."""
    start_daemon(max_message=1 << 20)
    d = malacoda.get("TestDaemon", timeout=10)
    with pytest.raises(malacoda.RequestTooLarge) as info:
        d.echo(b"x" * (2 << 20))
    text = str(info.value)
    assert "too large" in text and str(1 << 20) in text and "not sent" in text, text
    assert isinstance(info.value, malacoda.ProtocolError)
    assert d.echo(b"y" * (512 << 10)) == b"y" * (512 << 10)  # under the limit: served
    assert d.add(1, 2) == 3


def test_system_exit_in_a_call_is_the_callers_error_not_the_daemons_end(start_daemon):
    """SystemExit or KeyboardInterrupt raised by a method comes back to its caller; the daemon
    (whose thread ran it) goes on serving every later call."""
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=10)
    for n in range(3):
        for kind in ("SystemExit", "KeyboardInterrupt"):
            with pytest.raises(malacoda.RemoteError, match=kind):
                d.fail_exit(kind)
        assert d.add(n, 1) == n + 1


def test_attributes_and_private_names(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    d.constant = 11
    assert d.constant == 11
    d.new_attribute = [1]
    assert d.new_attribute == [1]
    for name in ("_malacoda_paths", "_run", "__wrapped__", "_save_pst"):
        with pytest.raises(malacoda.AccessDenied):
            getattr(d, name)
    with pytest.raises(malacoda.AccessDenied):
        d._secret = 1
    with pytest.raises(malacoda.AccessDenied):
        d.running = False  # base attributes are read-only
    with pytest.raises(malacoda.AccessDenied):
        d.echo = 1  # methods cannot be replaced
    with pytest.raises(TypeError):
        d.lock  # a value the codec cannot carry is a clear TypeError
    assert d.echo("still serving") == "still serving"


def test_private_and_dotted_names_refused_on_the_wire(start_daemon):
    """Even a client that skips the proxy's own checks cannot reach private names."""
    start_daemon()
    d = malacoda.get("TestDaemon")
    for name in ("_run", "__init__", "__class__", "lock.acquire", "echo.__globals__", "stop()"):
        for op, body in (("call", [[], {}]), ("get", None), ("set", 1)):
            with pytest.raises(malacoda.AccessDenied):
                request(d, op, name, body, 5)
    with pytest.raises(malacoda.ProtocolError):
        request(d, "exec", "echo", None, 5)


def test_dir_doc_and_signature(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    names = dir(d)
    assert {"echo", "add", "stop", "constant", "pst_counter"} <= set(names)
    assert not [n for n in names if n.startswith("_")]
    assert d.add.__doc__ == "Add two numbers."
    sig = inspect.signature(d.add)
    assert list(sig.parameters) == ["a", "b", "timeout"]
    assert repr(sig.parameters["b"].default) == "2"
    import pydoc

    text = pydoc.render_doc(d.add, renderer=pydoc.plaintext)
    assert "Add two numbers." in text and "add(a: int, b: int = 2, *, timeout=None) -> int" in text


def test_one_proxy_many_threads(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    errors = []

    def worker(n):
        try:
            for i in range(200):
                value = (n, i, "x" * (i % 7))
                assert d.echo(value) == value
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_slow_call_does_not_block_others(start_daemon):
    start_daemon()
    d = malacoda.get("TestDaemon")
    result = {}
    slow = threading.Thread(target=lambda: result.setdefault("slow", d.slow(3)))
    slow.start()
    wait_for(lambda: d.echo("probe") == "probe")  # answered while the slow call runs
    assert slow.is_alive(), "the fast call was answered only after the slow one"
    slow.join(10)
    assert result["slow"] == "slept 3"


def test_workers_one_is_serial_and_busy_when_queue_full(start_daemon):
    start_daemon("SerialDaemon", workers=1, queue=1)
    d = malacoda.get("SerialDaemon")
    results, errors = [], []

    def call():
        try:
            results.append(d.slow(1))
        except malacoda.Busy as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # deterministic arrival order is not needed, only spacing
    for t in threads:
        t.join(20)
    # One runs, one waits in the queue of one, the others are told "busy" at once.
    assert len(results) == 2 and len(errors) == 2


def test_dead_daemon_fails_a_waiting_call(start_daemon):
    proc = start_daemon()
    d = malacoda.get("TestDaemon")
    killer = threading.Timer(0.5, proc.kill)
    killer.start()
    started = time.monotonic()
    with pytest.raises(malacoda.ConnectionLost):
        d.slow(30)  # no timeout: the original would wait for ever
    assert time.monotonic() - started < 15
    killer.join()


def test_proxy_follows_a_restart(start_daemon):
    proc = start_daemon()
    d = malacoda.get("TestDaemon")
    first = d.pid()
    proc.kill()
    proc.wait()
    start_daemon()  # a new pid and a new port
    assert d.pid() != first


def test_name_and_port_lookup(start_daemon):
    start_daemon()
    entry = Registry().lookup("TestDaemon")
    assert entry.address == "127.0.0.1"
    d = malacoda.get(f"TestDaemon:{entry.port}")
    assert d.echo(1) == 1
    with pytest.raises(malacoda.LookupFailed, match="Nobody"):
        malacoda.get("Nobody")
    with pytest.raises(malacoda.ConfigError):
        malacoda.get("bad name!")


def test_second_daemon_with_same_name_fails(start_daemon, home):
    first = start_daemon()
    second = start_daemon(wait=False)
    assert second.wait(10) != 0
    assert f"already running (pid {first.pid})" in second.output()


def test_entry_of_killed_daemon_is_replaced(start_daemon):
    proc = start_daemon()
    proc.kill()
    proc.wait()
    entry, state = Registry().read("TestDaemon")
    assert state == "stale"
    with pytest.raises(malacoda.LookupFailed):
        malacoda.get("TestDaemon")
    newer = start_daemon()
    assert Registry().lookup("TestDaemon").pid == newer.pid


def test_sigterm_saves_and_exits_zero(start_daemon):
    proc = start_daemon()
    d = malacoda.get("TestDaemon")
    d.pst_counter = 7
    proc.kill(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert Registry().read("TestDaemon")[1] == "absent"
    start_daemon()
    assert malacoda.get("TestDaemon").pst_counter == 7


def test_stop_exits_zero_and_unregisters(start_daemon):
    proc = start_daemon()
    malacoda.stop("TestDaemon")
    assert proc.wait(10) == 0
    assert not pid_alive(proc.pid)
    assert Registry().read("TestDaemon")[1] == "absent"
    with pytest.raises(malacoda.LookupFailed):
        malacoda.stop("TestDaemon")


def test_two_run_methods(start_daemon):
    start_daemon("TwoLoops")
    d = malacoda.get("TwoLoops")
    wait_for(lambda: d.loops > 2 and d.side_loops > 2, what="both loops to run")


def test_unreadable_state_refuses_start(start_daemon, home):
    start_daemon()
    malacoda.stop("TestDaemon")
    state = home / "lib" / "TestDaemon.pst"
    state.write_bytes(state.read_bytes()[:-3])
    before = state.read_bytes()
    proc = start_daemon(wait=False)
    assert proc.wait(10) != 0
    assert "corrupt" in proc.output() and str(state) in proc.output()
    assert state.read_bytes() == before


def test_sqlite_persister(start_daemon, home):
    config = {"class_name": "PstSqliteStorage", "frequency": 0.1}
    start_daemon(pst_config=config)
    d = malacoda.get("TestDaemon")
    d.pst_counter = 99
    wait_for(lambda: (home / "lib" / "TestDaemon.sqlite").exists(), what="the database")
    malacoda.stop("TestDaemon")
    start_daemon(pst_config=config)
    assert malacoda.get("TestDaemon").pst_counter == 99


def test_periodic_save_survives_kill(start_daemon, home):
    start_daemon(pst_config={"class_name": "PstFileStorage", "frequency": dt.timedelta(seconds=0.1)})
    d = malacoda.get("TestDaemon")
    d.pst_counter = 5
    state = home / "lib" / "TestDaemon.pst"
    from malacoda.host.paths import Paths
    from malacoda.storage import PstFileStorage

    storage = PstFileStorage("TestDaemon", Paths.default())
    wait_for(lambda: state.exists() and storage.load().get("pst_counter") == 5,
             what="the periodic save")


def test_custom_persister(start_daemon, tmp_path):
    config = {"class_name": "tests.support.daemons:CustomStorage", "folder": str(tmp_path)}
    start_daemon(pst_config=config)
    malacoda.get("TestDaemon").pst_counter = 3
    malacoda.stop("TestDaemon")
    assert (tmp_path / "TestDaemon.custom").exists()
    start_daemon(pst_config=config)
    assert malacoda.get("TestDaemon").pst_counter == 3


def test_bad_persister_name_is_a_clear_error(start_daemon):
    proc = start_daemon(wait=False, pst_config={"class_name": "NoSuchStorage"})
    assert proc.wait(10) != 0
    assert "unknown persister 'NoSuchStorage'" in proc.output()


def test_daemonize_true_detaches(home, processes):
    """The original style: MessageDaemon(True) returns the shell at once and serves detached."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "from tests.support.daemons import TestDaemon; TestDaemon(daemonize=True)"
    launcher = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), timeout=30)
    assert launcher.returncode == 0
    entry = wait_for(lambda: Registry().read("TestDaemon")[0], what="the detached daemon")
    try:
        assert pid_alive(entry.pid)  # still serving after its launcher returned
        d = malacoda.get("TestDaemon")
        assert d.echo("detached") == "detached"
        assert (home / "log" / "TestDaemon.log").exists()
        malacoda.stop("TestDaemon")
        wait_for(lambda: not pid_alive(entry.pid), what="the detached daemon to exit")
    finally:
        if pid_alive(entry.pid):
            os.kill(entry.pid, signal.SIGKILL)


def test_a_supervisors_zero_workers_is_an_error_not_the_default(start_daemon) -> None:
    """RunOptions(workers=0) is the supervisor's value, refused as such: not replaced by 8."""
    prelude = "from malacoda.daemon import options; options.use(options.RunOptions(workers=0))"
    proc = start_daemon("TestDaemon", wait=False, prelude=prelude)
    assert proc.wait(timeout=30) != 0
    assert "workers must be at least 1" in proc.output()


def test_a_daemon_bound_to_ipv6_loopback_is_called_through_a_proxy(start_daemon):
    start_daemon(bind_address="::1")
    with malacoda.get("TestDaemon", timeout=10) as d:
        assert d.add(1, 2) == 3
        assert d._channel.endpoint.startswith("tcp://[::1]:")
