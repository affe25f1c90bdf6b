"""CURVE keys and the allow-list: files, modes, parsing (no sockets)."""

from __future__ import annotations

import stat

import pytest
import zmq
import zmq.auth

from malacoda.address import is_loopback
from malacoda.errors import ConfigError
from malacoda.host.paths import Paths
from malacoda.security import Keys, parse_public_key, server_curve


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_private_key_pairs_once(home):
    keys = Keys(Paths.default())
    pairs = keys.init()
    assert set(pairs) == {"server", "client"}
    assert _mode(keys.folder) == 0o700 and _mode(keys.authorized_folder) == 0o700
    for role in ("server", "client"):
        for suffix in (".key", ".key_secret"):
            path = keys.folder / f"{role}{suffix}"
            assert _mode(path) == 0o600, path
        # readable by pyzmq's own loader: the zmq.auth format
        public, secret = zmq.auth.load_certificate(keys.folder / f"{role}.key_secret")
        assert (public, secret) == (pairs[role].public, pairs[role].secret)
    assert keys.init() == pairs  # idempotent: existing keys are kept
    assert pairs["server"].public != pairs["client"].public


def test_authorize_and_revoke(home):
    keys = Keys(Paths.default())
    client = keys.init()["client"]
    other_public, _ = zmq.curve_keypair()
    path = keys.authorize(client.public.decode())
    assert _mode(path) == 0o600
    assert keys.is_authorized(client.public)
    assert keys.authorize(client.public.decode()) == path  # no duplicate
    named = keys.authorize(other_public.decode(), label="laptop")
    assert named.name == "laptop.key"
    assert set(keys.authorized()) == {path.stem, "laptop"}
    keys.revoke("laptop")
    keys.revoke(client.public.decode())
    assert keys.authorized() == {}
    with pytest.raises(ConfigError, match="not an authorized key"):
        keys.revoke("laptop")


def test_public_keys_are_checked(home, tmp_path):
    with pytest.raises(ConfigError, match="not a CURVE public key"):
        parse_public_key("hello")
    keys = Keys(Paths.default())
    pair = keys.init()["client"]
    assert parse_public_key(str(keys.folder / "client.key")) == pair.public
    with pytest.raises(ConfigError, match="invalid key name"):
        keys.authorize(pair.public.decode(), label="../x")


def test_secret_key_readable_by_others_is_refused(home):
    keys = Keys(Paths.default())
    keys.init()
    (keys.folder / "client.key_secret").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.pair("client")


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("*", False), ("192.168.1.5", False), ("eth0", False),
])
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_public_bind_needs_a_server_key_or_insecure(home, caplog):
    assert server_curve("127.0.0.1", False, "D") is None
    with pytest.raises(ConfigError, match="requires CURVE.*insecure = true"):
        server_curve("0.0.0.0", False, "D")
    assert server_curve("0.0.0.0", True, "D") is None
    assert "WITHOUT CURVE" in caplog.text
    Keys().init()
    curve = server_curve("0.0.0.0", False, "D")
    assert curve is not None and curve.public_key == Keys().pair("server").public.decode()
