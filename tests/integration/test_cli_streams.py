"""``malacodactl call`` of a streaming method and ``malacodactl watch``: items as they come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import malacoda
from tests.support import ROOT, wait_for


def _env(home):
    env = dict(os.environ, MALACODA_HOME=str(home), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return env


def ctl(home, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "malacoda", *args], env=_env(home),
                          capture_output=True, text=True, timeout=timeout)


def popen(home, *args):
    return subprocess.Popen([sys.executable, "-m", "malacoda", *args], env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_call_prints_streamed_items_one_per_line(start_daemon, home):
    start_daemon("StreamDaemon")
    result = ctl(home, "call", "StreamDaemon", "count", "4")
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n1\n2\n3\n", "")
    result = ctl(home, "call", "StreamDaemon", "tail", "3", "--json")
    assert [json.loads(line) for line in result.stdout.splitlines()] == ["a", "b", "c"]
    failed = ctl(home, "call", "StreamDaemon", "fail_at", "2")
    assert failed.returncode == 1 and failed.stdout == "0\n1\n"
    assert failed.stderr.strip() == "malacodactl: remote ValueError: failed at 2"


def test_items_are_printed_as_they_come_and_ctrl_c_cancels(start_daemon, home):
    start_daemon("StreamDaemon")
    proc = popen(home, "call", "StreamDaemon", "endless", "0.05")
    try:
        assert proc.stdout.readline() == "0\n"  # before the stream ends (it never does)
        assert proc.stdout.readline() == "1\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    d = malacoda.get("StreamDaemon", timeout=10)
    wait_for(lambda: d.closed_streams == 1, timeout=3, what="the generator to be closed")


def test_watch_prints_an_attribute_as_it_changes(start_daemon, home):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    proc = popen(home, "watch", "StreamDaemon", "pst_counter")
    try:
        assert proc.stdout.readline() == "0\n"
        d.bump()
        assert proc.stdout.readline() == "1\n"
        d.pst_counter = 7
        assert proc.stdout.readline() == "7\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.kill()
        proc.wait()


def test_watch_prints_published_events_of_a_topic(start_daemon, home):
    start_daemon("StreamDaemon")
    d = malacoda.get("StreamDaemon", timeout=10)
    proc = popen(home, "watch", "StreamDaemon", "orders", "--json")
    try:
        wait_for(lambda: d.open_streams() == 1, what="the subscription")
        d.announce("orders.new", [1, "x"])
        assert json.loads(proc.stdout.readline()) == {"topic": "orders.new", "value": [1, "x"],
                                                      "missed": 0}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.kill()
        proc.wait()


def test_watch_of_a_private_name_is_bad_input(start_daemon, home):
    start_daemon("StreamDaemon")
    result = ctl(home, "watch", "StreamDaemon", "_malacoda_secret")
    assert result.returncode == 2 and "private" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    started = time.monotonic()
    result = ctl(home, "watch", "Nobody", "x")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
