"""NAME:HOST over SSH against a real OpenSSH server on 127.0.0.1 (see tests/support/sshd.py)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import psutil
import pytest

import malacoda
from malacoda.client.proxy import close
from malacoda.host.paths import Paths
from malacoda.host.registry import Registry
from malacoda.remote import host as remote
from malacoda.security import Keys
from tests.support import wait_for
from tests.support.sshd import keygen


def _known_hosts() -> Path:
    return Path(os.environ["HOME"]) / ".ssh" / "known_hosts"


def test_call_get_set_stop_over_ssh(start_daemon, web1):
    proc = start_daemon()
    d = malacoda.get("TestDaemon:web1")
    assert d.echo("over ssh") == "over ssh"
    assert d.add(2, b=3) == 5
    assert d.constant == 10
    d.pst_counter = 7
    assert d.bump() == 8
    assert d.pid() == proc.pid
    # reached through a tunnel whose local end only this user can open
    port = Registry().lookup("TestDaemon").port
    endpoint = d._target.endpoint
    assert endpoint.startswith("ipc://") and str(port) not in endpoint
    folder = Path(endpoint[len("ipc://"):]).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
    with malacoda.get(f"TestDaemon:web1:{port}") as by_port:  # NAME:HOST:PORT
        assert by_port.echo(1) == 1
        assert by_port._target.endpoint == endpoint  # one tunnel per remote port, shared
    malacoda.stop("TestDaemon:web1")
    assert proc.wait(10) == 0
    with pytest.raises(malacoda.LookupFailed, match="'TestDaemon' is running on web1"):
        d.echo("gone")
    assert not folder.exists()  # the tunnel was closed with its last user


def test_no_such_daemon_there(web1):
    with pytest.raises(malacoda.LookupFailed, match="no daemon named 'Nobody' is running on web1"):
        malacoda.get("Nobody:web1")


def test_proxy_follows_a_restart_over_ssh(start_daemon, web1):
    proc = start_daemon()
    d = malacoda.get("TestDaemon:web1")
    first = d.pid()
    proc.kill()
    proc.wait()
    start_daemon()  # a new pid and a new port behind the same name
    assert d.pid() != first


@pytest.mark.slow
def test_proxy_survives_sshd_restart(start_daemon, web1):
    proc = start_daemon()
    d = malacoda.get("TestDaemon:web1")
    assert d.echo(1) == 1
    web1.stop()  # sshd and every session it served are gone, as when the host's SSH drops
    with pytest.raises(malacoda.CommunicationError):
        d.echo(2, timeout=10)
    with pytest.raises(malacoda.HostUnreachable, match=r"web1 \(127.0.0.1:\d+\): connection refused"):
        malacoda.get("TestDaemon:web1")
    web1.start()
    assert d.echo(3) == 3  # a new SSH connection, a new tunnel, the same daemon
    assert d.pid() == proc.pid


def test_unknown_host_key_is_refused_unless_accepted(start_daemon, web1):
    start_daemon()
    _known_hosts().write_text("")
    with pytest.raises(malacoda.HostKeyRejected, match="web1.*host key unknown"):
        malacoda.get("TestDaemon:web1")
    assert malacoda.get("TestDaemon:web1", accept_new_host_keys=True).echo(1) == 1
    assert web1.host_public.split()[1] in _known_hosts().read_text()
    remote.close_all()
    assert malacoda.get("TestDaemon:web1").echo(2) == 2  # known now, without the opt-in


def test_accept_new_from_the_environment(start_daemon, web1, monkeypatch):
    start_daemon()
    _known_hosts().unlink()
    monkeypatch.setenv("MALACODA_SSH_ACCEPT_NEW", "1")
    assert malacoda.get("TestDaemon:web1").echo(1) == 1
    assert stat.S_IMODE(_known_hosts().stat().st_mode) == 0o600


def test_changed_host_key_is_refused(start_daemon, web1, tmp_path):
    start_daemon()
    other = keygen(tmp_path / "other_host_key").split()
    _known_hosts().write_text(f"[127.0.0.1]:{web1.port} {other[0]} {other[1]}\n")
    for options in ({}, {"accept_new_host_keys": True}):
        with pytest.raises(malacoda.HostKeyRejected, match="web1.*CHANGED.*ssh-keygen -R"):
            malacoda.get("TestDaemon:web1", **options)


def test_authentication_failure(web1, tmp_path):
    keygen(tmp_path / "stranger")
    with pytest.raises(malacoda.AuthenticationFailed, match="web1.*authentication failed"):
        malacoda.get("TestDaemon:web1", key_filename=str(tmp_path / "stranger"),
                     look_for_keys=False)


def test_unknown_host_and_refused_connection(web1, tmp_path):
    with pytest.raises(malacoda.HostUnreachable, match="no-such-host.invalid: unknown host"):
        malacoda.get("TestDaemon:no-such-host.invalid")
    web1.stop()
    with pytest.raises(malacoda.HostUnreachable, match="web1.*connection refused"):
        malacoda.get("TestDaemon:web1")


def test_malacoda_not_installed_there(web1, tmp_path):
    bare = tmp_path / "bare-python"  # a Python without site-packages nor this checkout
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    for python in (str(bare), "/nonexistent/python3"):
        with pytest.raises(malacoda.NotInstalled, match="web1: Malacoda is not installed there"):
            malacoda.get("TestDaemon:web1", remote_python=python)


def test_curve_daemon_over_ssh_and_direct(start_daemon, web1):
    keys = Keys(Paths.default())
    client = keys.init()["client"]
    keys.authorize(client.public.decode())
    start_daemon(bind_address="0.0.0.0")
    tunnelled = malacoda.get("TestDaemon:web1")  # the server key comes from the remote registry
    assert tunnelled.echo("tunnel") == "tunnel"
    direct = malacoda.get("TestDaemon:web1", direct=True)
    assert direct.echo("direct") == "direct"
    port = Registry().lookup("TestDaemon").port
    assert repr(direct).endswith(f"tcp://127.0.0.1:{port}>")
    keys.revoke(client.public.decode())
    with pytest.raises(malacoda.ConnectionLost, match="CURVE authentication failed"):
        malacoda.get("TestDaemon:web1", timeout=10).echo(1)


def test_direct_needs_curve(start_daemon, web1):
    start_daemon()
    with pytest.raises(malacoda.ConfigError, match="direct=True needs .* CURVE"):
        malacoda.get("TestDaemon:web1", direct=True)


def test_one_ssh_connection_per_host(start_daemon, web1):
    start_daemon()
    start_daemon(name="Second")
    a = malacoda.get("TestDaemon:web1")
    b = malacoda.get("Second:web1")
    c = malacoda.get("TestDaemon:web1")
    assert (a.echo(1), b.echo(2), c.echo(3)) == (1, 2, 3)
    assert len(_ssh_connections(web1.port)) == 1
    assert remote.close_all() == ["web1"]
    assert a.echo(4) == 4  # re-established on demand
    assert len(_ssh_connections(web1.port)) == 1


def _ssh_connections(port: int) -> list:
    return [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


def test_owner_only_daemon_over_ssh_needs_no_set_up(start_daemon, web1):
    """NAME:HOST reaches an owner-only daemon: the lookup over SSH returns its entry with the
    secret (over the authenticated SSH session), and the proxy presents it through the tunnel."""
    start_daemon()
    entry = Registry().lookup("TestDaemon")
    assert entry.secret and not entry.open
    looked_up, state = remote.RemoteHost("web1").lookup("TestDaemon")
    assert state == "running" and looked_up is not None and looked_up.secret == entry.secret
    d = malacoda.get("TestDaemon:web1")
    assert d.echo("owner over ssh") == "owner over ssh"
    assert d._target.plain == entry.secret.encode()
    close(d)


def test_a_stream_over_ssh(start_daemon, web1):
    """NAME:HOST: a generator's items come through the SSH tunnel, with credit; break closes
    the generator on the far side."""
    start_daemon()
    d = malacoda.get("TestDaemon:web1", timeout=20)
    assert list(d.count(3000)) == list(range(3000))
    for item in d.endless():
        if item == 3:
            break
    local = malacoda.get("TestDaemon", timeout=10)
    wait_for(lambda: local.closed_streams == 2, timeout=3, what="the generator to close")
    watch = d.watch("pst_counter")
    assert next(watch) == 0
    local.bump()
    assert next(watch) == 1
    watch.close()
