"""Direct TCP: a daemon bound to a public address serves CURVE, or refuses to start."""

from __future__ import annotations

import pytest

import malacoda
from malacoda.client.channel import Channel
from malacoda.client.proxy import close
from malacoda.host.paths import Paths
from malacoda.host.registry import Registry
from malacoda.security import Keys
from malacoda.wire.protocol import request_frames


def test_public_bind_without_curve_is_refused(start_daemon):
    proc = start_daemon(bind_address="0.0.0.0", wait=False)
    assert proc.wait(20) != 0
    out = proc.output()
    assert "requires CURVE" in out and "insecure" in out and "malacodactl keys init" in out
    assert Registry().read("TestDaemon")[1] == "absent"


def test_insecure_public_bind_starts_with_a_warning(start_daemon):
    proc = start_daemon(bind_address="0.0.0.0", insecure=True)
    entry = Registry().lookup("TestDaemon")
    assert entry.address == "0.0.0.0" and entry.server_key is None
    assert malacoda.get("TestDaemon").echo("open") == "open"
    malacoda.stop("TestDaemon")
    assert proc.wait(10) == 0
    assert "WITHOUT CURVE" in proc.output()


def test_authorized_client_calls_and_revoked_client_is_refused(start_daemon):
    keys = Keys(Paths.default())
    pairs = keys.init()
    keys.authorize(pairs["client"].public.decode())
    start_daemon(bind_address="0.0.0.0")
    entry = Registry().lookup("TestDaemon")
    assert entry.server_key == pairs["server"].public.decode()

    d = malacoda.get("TestDaemon", timeout=10)  # learns the server key from the registry
    assert d.echo("secret") == "secret"
    assert d.add(1, b=2) == 3

    keys.revoke(pairs["client"].public.decode())  # takes effect for new connections
    refused = malacoda.get("TestDaemon", timeout=10)
    with pytest.raises(malacoda.ConnectionLost, match="CURVE authentication failed") as info:
        refused.echo(1)
    assert pairs["client"].public.decode() in str(info.value)  # the key to authorize
    close(refused)
    assert d.echo("still connected") == "still connected"  # an established session stays


def test_client_without_curve_is_refused(start_daemon):
    keys = Keys(Paths.default())
    keys.init()
    start_daemon(bind_address="0.0.0.0")
    entry = Registry().lookup("TestDaemon")
    channel = Channel(f"tcp://127.0.0.1:{entry.port}")
    try:
        rid = b"r" * 16
        with pytest.raises(malacoda.ConnectionLost):  # never served
            channel.request(request_frames(rid, "ping", None, None, None), rid, 10)
    finally:
        channel.close()


def test_curve_daemon_needs_a_client_key(start_daemon, home):
    keys = Keys(Paths.default())
    keys.init()
    start_daemon(bind_address="0.0.0.0")
    for path in keys.folder.glob("client.*"):
        path.unlink()
    with pytest.raises(malacoda.ConfigError, match="no client key.*keys init"):
        malacoda.get("TestDaemon")
