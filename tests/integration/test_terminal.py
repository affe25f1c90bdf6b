"""Nothing hostile reaches the operator's terminal (issue 11, section 3): what malacodactl prints
that came from a daemon, a log or etcd has its control characters made visible, unless --raw.

Every case runs the real CLI against real daemons, log files and a real etcd.
"""
# ruff: noqa: F811 - the fixtures of test_cli and test_cluster, imported and used by name

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading

import pytest

import malacoda
from tests.integration.test_cluster import A, Hosts, etcd, hosts  # noqa: F401 - fixtures
from tests.support import wait_for
from tests.support.ctl import Ctl, Follower
from tests.support.etcd import ETCD, EtcdServer

#: An OSC window title, a clear-screen, a carriage return that forges the monitor's own line,
#: a one-byte CSI (C1) and a right-to-left override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r[monitor] Talk ready\x9b31m\u202eevil"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\r[monitor] Talk ready\\x9b31m\\u202eevil"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(*texts: str) -> None:
    for text in texts:
        found = RAW_CONTROLS.findall(text)
        assert not found, (found, text)


class Run:
    """``malacodactl ARGS`` with its output read as bytes, then decoded: text mode would turn
    a ``\\r`` into a newline (universal newlines) and hide what the terminal is sent."""

    def __init__(self, ctl: Ctl, *args: str) -> None:
        done = subprocess.run(ctl.argv(*args), env=ctl.env, cwd=str(ctl.home), timeout=60,
                              capture_output=True)
        self.returncode = done.returncode
        self.stdout = done.stdout.decode("utf-8", "surrogateescape")
        self.stderr = done.stderr.decode("utf-8", "surrogateescape")


class BytesFollower(Follower):
    """:class:`Follower`, its lines read as bytes (no universal newlines), then decoded."""

    def __init__(self, ctl: Ctl, spec: str) -> None:
        self.ctl, self.spec = ctl, spec
        self.proc = subprocess.Popen(ctl.argv("logs", spec, "-f", "-n", "0"), env=ctl.env,
                                     cwd=str(ctl.home), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.decode("utf-8", "surrogateescape"))
                                         for x in self.proc.stdout], daemon=True).start()


def ok(ctl: Ctl, *args: str) -> str:
    result = Run(ctl, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def one_line(result: Run, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def talk(ctl: Ctl) -> Ctl:
    ctl.unit("Talk", cls="tests.support.daemons:Defaced")
    ctl.ok("start", "Talk")
    yield ctl
    ctl("stop", "Talk")


def test_log_lines_tail_and_follow(talk: Ctl) -> None:
    ok(talk, "call", "Talk", "say", HOSTILE)
    wait_for(lambda: "evil" in ok(talk, "logs", "Talk"), what="the line in the log")
    out = ok(talk, "logs", "Talk")
    clean(out)
    [line] = [x for x in out.split("\n") if "evil" in x]
    assert line.endswith(f" {SHOWN} 0")
    raw = ok(talk, "logs", "Talk", "--raw")
    assert f"{HOSTILE} 0\n" in raw
    with BytesFollower(talk, "Talk") as follower:
        ok(talk, "call", "Talk", "say", HOSTILE)
        line = follower.next_line()
        while "evil" not in line:
            line = follower.next_line()
    assert line.endswith(f" {SHOWN} 0")


def test_values_results_and_remote_errors(talk: Ctl) -> None:
    assert ok(talk, "call", "Talk", "echo", HOSTILE) == SHOWN + "\n"
    assert ok(talk, "call", "Talk", "echo", HOSTILE, "--raw") == HOSTILE + "\n"
    ok(talk, "set", "Talk", "constant", HOSTILE)
    assert ok(talk, "get", "Talk", "constant") == SHOWN + "\n"
    # A multi-line value keeps its lines; the carriage return in it is shown.
    ok(talk, "set", "Talk", "constant", "one\r\ntwo")
    assert ok(talk, "get", "Talk", "constant") == "one\\r\ntwo\n"
    ok(talk, "set", "Talk", "constant", HOSTILE)
    as_json = ok(talk, "get", "Talk", "constant", "--json")
    clean(as_json)
    assert json.loads(as_json) == HOSTILE  # still valid JSON, the same value
    assert ok(talk, "get", "Talk", "pst_data") == "{'a': (1, 2)}\n"
    line = one_line(Run(talk, "call", "Talk", "fail_value", HOSTILE), 1)
    assert line == f"malacodactl: remote ValueError: {SHOWN}"
    verbose = Run(talk, "-v", "call", "Talk", "fail_value", HOSTILE)
    assert "Traceback" in verbose.stderr
    clean(verbose.stderr)


def test_describe(talk: Ctl) -> None:
    out = ok(talk, "describe", "Talk")
    clean(out)
    assert "\\x1b]0;pwned\\x07 a window title" in out
    assert "Returns a greeting.\\r[monitor] forged line" in out
    clean(ok(talk, "describe", "Talk", "--json"))


# ---------------------------------------------------------------------- etcd

def put_entry(etcd: EtcdServer, **fields: object) -> str:
    """Write a cluster entry as anyone who can write to etcd could (no lease, no daemon)."""
    import base64

    import etcd3gw

    entry = {"name": "Evil", "host": "127.0.0.5", "address": "127.0.0.1", "port": 1, "pid": 1,
             "start_time": 0.0, "incarnation": "0" * 16, "user": "mallory", "version": "0.1.0",
             **fields}
    key = f"malacoda/daemons/{entry['name']}/{entry['host']}"
    client = etcd3gw.client(host="127.0.0.1", port=etcd.client_port)
    client.post(client.get_url("/kv/put"), json={  # put() takes latin-1 keys only
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(json.dumps(entry).encode()).decode()})
    return key


@pytest.mark.skipif(ETCD is None, reason="etcd is not installed (apt install etcd-server)")
def test_cluster_fields(hosts: Hosts, etcd: EtcdServer) -> None:
    put_entry(etcd, user=HOSTILE, version=HOSTILE)
    put_entry(etcd, name=f"Evil{HOSTILE}")  # not a daemon name: the entry is ignored
    result = cluster_ctl(hosts, "-v", "status", "--all", "--cluster")
    assert result.returncode == 0, result.stderr
    clean(result.stdout, result.stderr)
    assert f"by user {SHOWN}, malacoda {SHOWN}" in result.stdout
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:2]] == [["Evil", "127.0.0.5"]]
    assert "ignoring" in result.stderr and "not a daemon name" in result.stderr
    as_json = cluster_ctl(hosts, "status", "--all", "--cluster", "--json")
    clean(as_json.stdout)
    assert json.loads(as_json.stdout)[0]["message"].startswith("registered from 127.0.0.5")


def cluster_ctl(hosts: Hosts, *args: str) -> Run:
    """``malacodactl ARGS`` run as a user of host A of the cluster."""
    done = subprocess.run([sys.executable, "-m", "malacoda", *args], env=hosts.env(A),
                          cwd=str(hosts.home(A)), capture_output=True, timeout=60)
    result = Run.__new__(Run)
    result.returncode = done.returncode
    result.stdout = done.stdout.decode("utf-8", "surrogateescape")
    result.stderr = done.stderr.decode("utf-8", "surrogateescape")
    return result


# ---------------------------------------------------------------------- host names (section 4)

@pytest.mark.parametrize("args", [
    ("logs", "X:../../etc"), ("logs", "X", "--host", ".."), ("call", "X:..", "echo", "x"),
    ("status", "X:a..b"), ("stop", f"X:{'a' * 64}")])
def test_a_host_that_is_no_host_name_is_one_clear_line(ctl: Ctl, args) -> None:
    line = one_line(Run(ctl, *args), 2)
    assert "is not a host name" in line, line


def test_a_host_that_is_no_host_name_through_the_api(home) -> None:
    for spec in ("X:..", "X:../../etc", "X:-oProxyCommand=x"):
        with pytest.raises(malacoda.ConfigError, match="is not a host name"):
            malacoda.get(spec)


@pytest.mark.skipif(ETCD is None, reason="etcd is not installed (apt install etcd-server)")
def test_a_cluster_entry_whose_host_is_no_host_name_is_ignored(hosts: Hosts,
                                                                etcd: EtcdServer) -> None:
    put_entry(etcd, host="..")
    hosts.be(A)
    with pytest.raises(malacoda.LookupFailed, match="no daemon named 'Evil'"):
        malacoda.get("Evil")
    result = cluster_ctl(hosts, "call", "Evil", "echo", "x")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert "ignoring cluster entry 'malacoda/daemons/Evil/..': host '..' is not a host name" \
        in result.stderr
    assert result.stderr.strip().endswith("no daemon named 'Evil' is running on this host or in "
                                          f"the cluster (etcd at {etcd.url})")
    listed = cluster_ctl(hosts, "status", "--all", "--cluster")
    assert listed.returncode == 3 and "Traceback" not in listed.stderr, listed.stderr


# ---------------------------------------------------------------------- another host's log

@pytest.mark.slow
def test_another_hosts_log(web1, home, tmp_path) -> None:
    """``logs NAME:HOST`` streams that host's malacodactl output: shown here made visible."""
    from malacoda.host.paths import Paths

    conf = tmp_path / "conf"
    conf.mkdir(mode=0o700)
    remote = Ctl(home, conf)  # its environment reaches web1, as the web1 fixture set it
    log = Paths.default().log_file("Evil")
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.write_text(f"2026-01-02 03:04:05.678 {HOSTILE}\n")
    for spec in (("Evil:web1",), ("Evil", "--host", "web1")):
        out = ok(remote, "logs", *spec)
        clean(out)
        assert out == f"2026-01-02 03:04:05.678 {SHOWN}\n"
    assert ok(remote, "logs", "Evil:web1", "--raw") == f"2026-01-02 03:04:05.678 {HOSTILE}\n"
