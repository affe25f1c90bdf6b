"""From ``NAME[:HOST][:PORT]`` to an endpoint a proxy can connect to, by one of three backends.

``NAME`` alone, or ``NAME:PORT`` (a number, as in the original), is looked up in this host's
registry (:mod:`.local`), then — when one is configured and no port is named — in the cluster
registry (:mod:`.cluster`). ``NAME:HOST`` and ``NAME:HOST:PORT`` are looked up in the cluster's
entry for that host, else on that host over SSH (:mod:`.remote`); without a cluster, over SSH.
Every backend is a ``find(spec, config, **ssh_args) -> Target`` in :data:`BACKENDS`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from malacoda.address import Spec, Target, parse
from malacoda.cluster import ClusterConfig, load_config
from malacoda.errors import LookupFailed
from malacoda.host.paths import host_name
from malacoda.resolve import cluster, local, remote

#: The backends by name: each finds the daemon a spec names, or raises LookupFailed.
BACKENDS: Dict[str, Callable[..., Target]] = {
    "local": local.find, "cluster": cluster.find, "remote": remote.find}


def backend(spec: Spec, config: Optional[ClusterConfig]) -> str:
    """The backend for ``NAME:HOST[:PORT]``: over SSH without a cluster; with one, this host's
    own name is local, another host's is its cluster entry (else SSH)."""
    if config is None:
        return "remote"
    return "local" if spec.host == host_name() else "cluster"


def resolve(spec: str, **ssh_args: Any) -> Target:
    """Resolve ``spec`` with the backend its form asks for."""
    parsed = parse(spec)
    if parsed.host is None:
        try:
            return BACKENDS["local"](parsed)
        except LookupFailed:  # not here: in the cluster, if there is one (the config read only now)
            config = load_config()
            if config is None or parsed.port is not None:
                raise
            return BACKENDS["cluster"](parsed, config, **ssh_args)
    config = load_config()
    return BACKENDS[backend(parsed, config)](parsed, config, **ssh_args)
