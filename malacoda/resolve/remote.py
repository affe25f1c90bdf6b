"""The remote backend: ``NAME:HOST`` looked up on that host over SSH (:mod:`malacoda.remote.host`)."""

from __future__ import annotations

from typing import Any, Optional

from malacoda.address import Spec, Target
from malacoda.cluster import ClusterConfig


def find(spec: Spec, config: Optional[ClusterConfig] = None, **ssh_args: Any) -> Target:
    """The daemon ``spec`` names on ``spec.host``, reached through an SSH tunnel (``config`` is
    not used)."""
    from malacoda.remote import host  # imported on demand: paramiko is slow to import

    return host.find(spec, **ssh_args)
