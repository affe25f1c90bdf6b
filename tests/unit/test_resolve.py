"""resolve's address and CURVE helpers, shared by the local, cluster and SSH backends."""

from __future__ import annotations

import pytest

import malacoda
from malacoda.address import Spec, connect_address, is_wildcard, parse, tcp_endpoint
from malacoda.errors import ConfigError
from malacoda.host.paths import Paths
from malacoda.security import Keys, client_curve


@pytest.mark.parametrize("address, wildcard, connect", [
    ("0.0.0.0", True, "127.0.0.1"), ("*", True, "127.0.0.1"), ("", True, "127.0.0.1"),
    ("::", True, "::1"), ("127.0.0.1", False, "127.0.0.1"), ("192.168.1.5", False, "192.168.1.5"),
    ("::1", False, "::1"),
])
def test_wildcard_addresses(address: str, wildcard: bool, connect: str) -> None:
    assert is_wildcard(address) is wildcard
    assert connect_address(address) == connect


def test_tcp_endpoint_brackets_ipv6() -> None:
    assert tcp_endpoint("::", 5000) == "tcp://[::1]:5000"
    assert tcp_endpoint("0.0.0.0", 5000) == "tcp://127.0.0.1:5000"


def test_client_curve_only_for_an_entry_with_a_server_key(home) -> None:
    keys = Keys(Paths.default())
    assert client_curve(None, "Web") is None and client_curve("", "Web") is None
    server_key = "x" * 40
    with pytest.raises(ConfigError, match="Web:web1 requires CURVE .* keys init"):
        client_curve(server_key, "Web:web1")
    keys.init()
    curve = client_curve(server_key, "Web:web1")
    pair = keys.pair("client")
    assert pair is not None and curve == {"secret": pair.secret, "public": pair.public,
                                          "server": server_key.encode()}


@pytest.mark.parametrize("spec", ["td:²", "td:١٢٣", "td:web1:²", "td:web1:x", "td:web1:"])
def test_a_port_not_of_ascii_digits_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="the port must be a number"):
        parse(spec)


def test_ports_and_hosts_parse() -> None:
    assert parse("td:51003") == Spec("td", None, 51003)
    assert parse("td:web1") == Spec("td", "web1", None)
    assert parse("td:web1:51003") == Spec("td", "web1", 51003)


def test_get_with_a_non_ascii_port_is_a_config_error(home) -> None:
    with pytest.raises(ConfigError, match="'²'"):
        malacoda.get("td:²")


def test_credentials_follow_the_entry_and_an_older_entry_means_null() -> None:
    """An entry printed by an older Malacoda (remote_lookup on another host) has no 'secret':
    its daemon serves NULL, and the client presents nothing. A current entry gives PLAIN, an
    open one the owner's routing-id token, a CURVE one CURVE alone."""
    from malacoda.address import Target
    from malacoda.host.registry import Entry
    from malacoda.security import owner_token, with_auth

    base = {"name": "X", "pid": 1, "port": 2, "address": "127.0.0.1", "start_time": 0.0,
            "incarnation": "i", "uid": 0, "version": "0.0.9"}
    older = with_auth(Target("tcp://127.0.0.1:2", "X"), Entry.from_dict(base))
    assert (older.plain, older.owner_token) == (None, None)
    current = with_auth(Target("tcp://127.0.0.1:2", "X"), Entry.from_dict({**base, "secret": "s"}))
    assert (current.plain, current.owner_token) == (b"s", None)
    shared = with_auth(Target("tcp://127.0.0.1:2", "X"),
                       Entry.from_dict({**base, "secret": "s", "open": True}))
    assert (shared.plain, shared.owner_token) == (None, owner_token("s"))
    curve = with_auth(Target("tcp://127.0.0.1:2", "X", curve={"server": b"k"}),
                      Entry.from_dict({**base, "secret": "s"}))
    assert curve.plain is None
    assert "'s'" not in repr(current) and "secret" not in repr(Entry.from_dict({**base, "secret": "zz"}))
