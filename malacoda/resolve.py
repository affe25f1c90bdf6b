"""From ``NAME[:HOST][:PORT]`` to an endpoint a proxy can connect to.

``NAME`` alone, or ``NAME:PORT`` (a number, as in the original), is looked up in this host's
registry, then — when one is configured — in the cluster registry (:mod:`malacoda.cluster`).
``NAME:HOST`` and ``NAME:HOST:PORT`` are looked up in the cluster's entry for that host, else
on that host over SSH (see :mod:`malacoda.remote.host`). Every backend returns a :class:`Target`.

A cluster entry says how to reach its daemon: bound to loopback, through an SSH tunnel to its
host (the default); bound to another address, directly over TCP — with CURVE when it has a
server key — to that address, or to the host's name when it bound a wildcard address.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from malacoda import cluster
from malacoda.address import Spec, Target, is_loopback, is_wildcard, parse, tcp_endpoint
from malacoda.cluster import view as cluster_watch
from malacoda.errors import AmbiguousName, ClusterError, LookupFailed
from malacoda.host.paths import host_name
from malacoda.host.registry import Registry, other_users_registries
from malacoda.security import Keys, client_curve, with_auth

log = logging.getLogger(__name__)


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
    from malacoda.remote.host import resolve_remote  # imported on demand: paramiko is slow to import

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
