"""The local backend: a daemon of this host, from its registry (ours, else, for root, another
user's)."""

from __future__ import annotations

from typing import Any, Optional

from malacoda.address import Spec, Target, tcp_endpoint
from malacoda.cluster import ClusterConfig
from malacoda.errors import AmbiguousName, LookupFailed
from malacoda.host.registry import EntryState, Registry, other_users_registries
from malacoda.security import Keys, client_curve, with_auth


def find(spec: Spec, config: Optional[ClusterConfig] = None, *, registry: Optional[Registry] = None,
         **ssh_args: Any) -> Target:
    """Resolve on this host through the registry (``config`` and ``ssh_args`` are not used).

    ``NAME:PORT`` reaches only a daemon whose registry entry is ours and has that port (any
    listener on a port could pose as it otherwise). Root, for a name it has never run a daemon
    under since boot (no entry, no lock file), looks in every other user's registry at its
    default place (:func:`other_users_registries`).
    """
    registry = registry or Registry()
    entry, state = registry.read(spec.name)
    if state == EntryState.RUNNING and entry is not None and (spec.port is None or spec.port == entry.port):
        curve = client_curve(entry.server_key, str(spec), Keys(registry.paths))
        target = Target(tcp_endpoint(entry.address, entry.port), spec.name, entry, curve=curve)
        return with_auth(target, entry)
    found = []
    # Root's own name (a lock file is left by every daemon it ran since boot, a registry entry
    # by one that died) is never taken for another user's: its monitor's stop() must not
    # reach someone else's daemon of the same name.
    ours = state != EntryState.ABSENT or (registry.paths.run / f"{spec.name}.lock").exists()
    for theirs in ([] if ours else other_users_registries()):
        other, other_state = theirs.read(spec.name)
        if other_state == EntryState.RUNNING and other is not None and spec.port in (None, other.port):
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
