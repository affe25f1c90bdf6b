"""Daemon addresses: ``NAME[:HOST][:PORT]`` parsed (:class:`Spec`), where to connect
(:class:`Target`), and what a bind address means (loopback, wildcard).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from malacoda.errors import ConfigError
from malacoda.host.paths import check_host, check_name
from malacoda.host.registry import Entry


@dataclass
class Spec:
    """A parsed daemon address."""

    name: str
    host: Optional[str] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        parts = [self.name]
        if self.host:
            parts.append(self.host)
        if self.port:
            parts.append(str(self.port))
        return ":".join(parts)


@dataclass
class Target:
    """Where to connect: a ZeroMQ endpoint and how to reach it."""

    endpoint: str
    name: str
    entry: Optional[Entry] = None
    host: Optional[str] = None
    curve: Optional[Dict[str, bytes]] = None
    #: The ZAP PLAIN password of an owner-only daemon (its entry's secret), else None.
    plain: Optional[bytes] = field(default=None, repr=False)
    #: For an ``open`` daemon of ours: the routing-id prefix that marks us as its owner.
    owner_token: Optional[bytes] = field(default=None, repr=False)
    close: Callable[[], None] = field(default=lambda: None)
    #: False once the target is known to be gone (a cluster entry deleted or replaced): the
    #: proxy then resolves the name again even though its connection did not drop.
    current: Callable[[], bool] = field(default=lambda: True)


def _port(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{spec!r}: the port must be a number (digits 0-9), got {text!r}")
    return int(text)


def parse(spec: str) -> Spec:
    """``'NAME'``, ``'NAME:PORT'``, ``'NAME:HOST'`` or ``'NAME:HOST:PORT'`` → :class:`Spec`."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"a daemon is named as NAME[:HOST][:PORT], got {spec!r}")
    parts = spec.split(":")
    name, rest = parts[0], parts[1:]
    check_name(name)
    host: Optional[str] = None
    port: Optional[int] = None
    if len(rest) == 1:
        if rest[0].isdigit():  # any script's digits: a port, or a mistyped one
            port = _port(spec, rest[0])
        else:
            host = rest[0]
    elif len(rest) == 2:
        host = rest[0]
        port = _port(spec, rest[1])
    elif rest:
        raise ConfigError(f"{spec!r}: expected NAME[:HOST][:PORT]")
    if host is not None and not host:
        raise ConfigError(f"{spec!r}: the host is empty")
    if host is not None:
        check_host(host, repr(spec))
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{spec!r}: port {port} is out of range")
    return Spec(name, host, port)


#: Bind addresses that mean "every interface" rather than one address to connect to.
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "*", "")


def is_wildcard(address: str) -> bool:
    """True for a bind address that means every interface (``0.0.0.0``, ``::``, ``*``)."""
    return address in WILDCARD_ADDRESSES


def connect_address(address: str) -> str:
    """The address to connect to on the daemon's own host for a daemon bound to ``address``."""
    if is_wildcard(address):
        return "::1" if address == "::" else "127.0.0.1"
    return address


def tcp_endpoint(address: str, port: int) -> str:
    address = connect_address(address)
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def is_loopback(address: str) -> bool:
    """True when a daemon bound to ``address`` is reachable from this host only."""
    if address in ("localhost", "localhost6"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a wildcard, an interface name or a host name: assume it is public
