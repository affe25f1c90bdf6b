"""From ``NAME[:HOST][:PORT]`` to an endpoint a proxy can connect to.

``NAME`` alone, or ``NAME:PORT`` (a number, as in the original), is looked up in this host's
registry. ``NAME:HOST`` and ``NAME:HOST:PORT`` are looked up on another host over SSH (see
:mod:`malacoda.remote`). Every backend returns a :class:`Target`; a new backend (a cluster
registry) is one more function, not a rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from .errors import ConfigError, LookupFailed
from .runtime import Entry, Registry, check_name


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
    close: Callable[[], None] = field(default=lambda: None)


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
        if rest[0].isdigit():
            port = int(rest[0])
        else:
            host = rest[0]
    elif len(rest) == 2:
        host = rest[0]
        if not rest[1].isdigit():
            raise ConfigError(f"{spec!r}: the port after the host must be a number")
        port = int(rest[1])
    elif rest:
        raise ConfigError(f"{spec!r}: expected NAME[:HOST][:PORT]")
    if host is not None and not host:
        raise ConfigError(f"{spec!r}: the host is empty")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{spec!r}: port {port} is out of range")
    return Spec(name, host, port)


def connect_address(address: str) -> str:
    """The address to connect to for a daemon bound to ``address``."""
    if address in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def tcp_endpoint(address: str, port: int) -> str:
    address = connect_address(address)
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def local(spec: Spec, registry: Optional[Registry] = None) -> Target:
    """Resolve on this host through the registry."""
    registry = registry or Registry()
    entry, state = registry.read(spec.name)
    if state == "running" and entry is not None and (spec.port is None or spec.port == entry.port):
        return Target(tcp_endpoint(entry.address, entry.port), spec.name, entry)
    if spec.port is not None:
        # The original's NAME:PORT: a daemon on this host at that port, registered or not.
        return Target(tcp_endpoint("127.0.0.1", spec.port), spec.name)
    raise LookupFailed(f"no daemon named {spec.name!r} is running on this host")


def resolve(spec: str, **ssh_args: Any) -> Target:
    """Resolve ``spec`` with the backend its form asks for."""
    parsed = parse(spec)
    if parsed.host is None:
        return local(parsed)
    from .remote import resolve_remote  # imported on demand: paramiko is slow to import

    return resolve_remote(parsed, **ssh_args)
