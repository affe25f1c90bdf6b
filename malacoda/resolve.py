"""From ``NAME[:HOST][:PORT]`` to an endpoint a proxy can connect to.

``NAME`` alone, or ``NAME:PORT`` (a number, as in the original), is looked up in this host's
registry, then — when one is configured — in the cluster registry (:mod:`malacoda.cluster`).
``NAME:HOST`` and ``NAME:HOST:PORT`` are looked up in the cluster's entry for that host, else
on that host over SSH (see :mod:`malacoda.remote`). Every backend returns a :class:`Target`.

A cluster entry says how to reach its daemon: bound to loopback, through an SSH tunnel to its
host (the default); bound to another address, directly over TCP — with CURVE when it has a
server key — to that address, or to the host's name when it bound a wildcard address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from . import cluster, cluster_watch
from .errors import AmbiguousName, ClusterError, ConfigError, LookupFailed
from .runtime import Entry, Registry, check_host, check_name, host_name, other_users_registries
from .security import Keys, is_loopback, owner_token

log = logging.getLogger(__name__)


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


def client_curve(server_key: Optional[str], who: str,
                 keys: Optional[Keys] = None) -> Optional[Dict[str, bytes]]:
    """The client CURVE settings to reach a daemon whose entry carries ``server_key``, or None
    for one without (bound to loopback, or started ``insecure``): it is reached in the clear.

    ``who`` names the daemon in the error raised when this user has no client key.
    """
    if not server_key:
        return None
    return (keys or Keys()).client_curve(server_key, who)


def with_auth(target: Target, entry: Optional[Entry]) -> Target:
    """``target`` with the credentials ``entry`` gives (none for an older daemon's entry)."""
    if entry is not None and entry.secret and not target.curve:
        if entry.open:
            target.owner_token = owner_token(entry.secret)
        else:
            target.plain = entry.secret.encode()
    return target


def tcp_endpoint(address: str, port: int) -> str:
    address = connect_address(address)
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def local(spec: Spec, registry: Optional[Registry] = None) -> Target:
    """Resolve on this host through the registry.

    ``NAME:PORT`` reaches only a daemon whose registry entry is ours and has that port (any
    listener on a port could pose as it otherwise). Root, for a name it has never run a daemon
    under since boot (no entry, no lock file), looks in every other user's registry at its
    default place (:func:`other_users_registries`).
    """
    registry = registry or Registry()
    entry, state = registry.read(spec.name)
    if state == "running" and entry is not None and (spec.port is None or spec.port == entry.port):
        curve = client_curve(entry.server_key, str(spec), Keys(registry.paths))
        target = Target(tcp_endpoint(entry.address, entry.port), spec.name, entry, curve=curve)
        return with_auth(target, entry)
    found = []
    # Root's own name (a lock file is left by every daemon it ran since boot, a registry entry
    # by one that died) is never taken for another user's: its monitor's stop() must not
    # reach someone else's daemon of the same name.
    ours = state != "absent" or (registry.paths.run / f"{spec.name}.lock").exists()
    for theirs in ([] if ours else other_users_registries()):
        other, other_state = theirs.read(spec.name)
        if other_state == "running" and other is not None and spec.port in (None, other.port):
            found.append(other)
    if len(found) == 1:
        other = found[0]
        curve = client_curve(other.server_key, str(spec))
        target = Target(tcp_endpoint(other.address, other.port), spec.name, other, curve=curve)
        return with_auth(target, other)
    if len(found) > 1:
        ports = [str(e.port) for e in found]
        raise AmbiguousName(f"several users run a daemon named {spec.name!r} (ports "
                            f"{', '.join(ports)}): name one, as in '{spec.name}:{ports[0]}'", ports)
    if spec.port is not None:
        raise LookupFailed(
            f"no daemon named {spec.name!r} of yours is registered at port {spec.port} on this "
            f"host: NAME:PORT reaches only your own daemons (see 'malacodactl status --all')")
    raise LookupFailed(f"no daemon named {spec.name!r} is running on this host")


def resolve(spec: str, **ssh_args: Any) -> Target:
    """Resolve ``spec`` with the backend its form asks for."""
    parsed = parse(spec)
    if parsed.host is None:
        try:
            return local(parsed)
        except LookupFailed:
            config = cluster.load_config()
            if config is None or parsed.port is not None:
                raise
            return in_cluster(parsed, config, **ssh_args)
    config = cluster.load_config()
    if config is not None:
        if parsed.host == host_name():
            return local(parsed)
        try:
            found = cluster.Etcd(config).members(parsed.name)
        except ClusterError as exc:
            log.info("%s: %s; looking on %s over SSH", spec, exc, parsed.host)
            found = []
        for member in found:
            if member.host == parsed.host and parsed.port in (None, member.port):
                return connect_member(member, config, **ssh_args)
    return _remote(parsed, **ssh_args)


def _remote(spec: Spec, **ssh_args: Any) -> Target:
    from .remote import resolve_remote  # imported on demand: paramiko is slow to import

    return resolve_remote(spec, **ssh_args)


def in_cluster(spec: Spec, config: cluster.ClusterConfig, **ssh_args: Any) -> Target:
    """Resolve ``spec.name`` through the cluster registry: exactly one host must run it."""
    try:
        found = cluster.Etcd(config).members(spec.name)
    except ClusterError as exc:
        raise ClusterError(f"no daemon named {spec.name!r} is running on this host, and {exc}") from None
    here = host_name()
    # This host's entries were checked against the local registry already: one left here is a
    # daemon that died within its lease's TTL.
    found = [m for m in found if m.host != here]
    if not found:
        raise LookupFailed(f"no daemon named {spec.name!r} is running on this host or in the "
                           f"cluster (etcd at {config.where})")
    if len(found) > 1:
        hosts = [m.host for m in found]
        raise AmbiguousName(f"{spec.name!r} runs on several hosts: {', '.join(hosts)}; name one, "
                            f"as in '{spec.name}:{hosts[0]}'", hosts)
    return connect_member(found[0], config, **ssh_args)


def connect_member(member: cluster.Member, config: cluster.ClusterConfig, **ssh_args: Any) -> Target:
    """Reach the daemon ``member`` describes, the way its entry says, and watch its entry.

    Bound to loopback: through an SSH tunnel to its host. Bound to another address: directly,
    with CURVE when the entry carries a server key (this user's client key must be authorized
    there), else in the clear (a daemon started ``insecure``).
    """
    if is_loopback(member.address):
        target = _remote(Spec(member.name, member.host), **ssh_args)
    else:
        address = member.host if is_wildcard(member.address) else member.address
        curve = client_curve(member.server_key, f"{member.name}:{member.host}")
        target = Target(tcp_endpoint(address, member.port), member.name, host=member.host, curve=curve)
    view, release = cluster_watch.acquire(config)
    close = target.close

    def close_both() -> None:
        release()
        close()

    target.current = lambda: view.current(member.key, member.incarnation)
    target.close = close_both
    return target
