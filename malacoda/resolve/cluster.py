"""The cluster backend: a daemon found in the cluster registry (etcd, :mod:`malacoda.cluster`).

A cluster entry says how to reach its daemon: bound to loopback, through an SSH tunnel to its
host (the default); bound to another address, directly over TCP — with CURVE when it has a
server key — to that address, or to the host's name when it bound a wildcard address. The
proxy's target then watches the entry (:mod:`malacoda.cluster.view`).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from malacoda import cluster
from malacoda.address import Spec, Target, is_loopback, is_wildcard, tcp_endpoint
from malacoda.cluster import view as cluster_watch
from malacoda.errors import AmbiguousName, ClusterError, LookupFailed
from malacoda.host.paths import host_name
from malacoda.resolve import remote
from malacoda.security import client_curve

log = logging.getLogger(__name__)


def find(spec: Spec, config: Optional[cluster.ClusterConfig] = None, **ssh_args: Any) -> Target:
    """``NAME:HOST``: the cluster's entry for that host, else over SSH to it (etcd unreachable
    included). ``NAME``: the one host of the cluster that runs it (this host's entries were
    checked against the local registry already)."""
    config = config or cluster.cluster().config  # ConfigError when none is configured
    if spec.host is None:
        return _only_one(spec, config, **ssh_args)
    try:
        found = cluster.Etcd(config).members(spec.name)
    except ClusterError as exc:
        log.info("%s: %s; looking on %s over SSH", spec, exc, spec.host)
        found = []
    for member in found:
        if member.host == spec.host and spec.port in (None, member.port):
            return connect_member(member, config, **ssh_args)
    return remote.find(spec, **ssh_args)


def _only_one(spec: Spec, config: cluster.ClusterConfig, **ssh_args: Any) -> Target:
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
        target = remote.find(Spec(member.name, member.host), **ssh_args)
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
