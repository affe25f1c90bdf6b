"""A daemon's own entry in the cluster registry, kept alive under a lease while it runs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from malacoda.cluster.config import ClusterConfig, load_config
from malacoda.cluster.etcd import Etcd, Member
from malacoda.errors import ClusterError
from malacoda.host.paths import host_name
from malacoda.host.registry import Entry

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- registration


class Registration:
    """Keeps one daemon's entry in the cluster while the daemon runs.

    ``start()`` returns at once; a thread grants a lease, puts the entry, and refreshes the lease
    every TTL/3, granting a new one and putting the entry again when the lease has expired (etcd
    was down longer than the TTL). Failures are retried with exponential backoff (capped at the
    TTL) and never stop the daemon. ``stop()`` revokes the lease: the entry vanishes at once.
    """

    def __init__(self, config: ClusterConfig, member: Member) -> None:
        self.config = config
        self.member = member
        self.registered = threading.Event()
        self._etcd = Etcd(config)
        self._stop = threading.Event()
        self._lease: Any = None
        self._thread = threading.Thread(target=self._loop, name="malacoda-cluster", daemon=True)

    def start(self) -> Registration:
        self._thread.start()
        return self

    def _loop(self) -> None:
        backoff, warned = 0.1, False
        while not self._stop.is_set():
            try:
                self._keep()
            except ClusterError as exc:
                self.registered.clear()
                if not warned:
                    log.warning("%s: not registered in the cluster: %s (retrying)", self.member.name, exc)
                    warned = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, float(self.config.ttl))
                continue
            if warned:
                log.info("%s: registered in the cluster at %s", self.member.name, self.config.where)
                warned = False
            backoff = 0.1
            self._stop.wait(self.config.ttl / 3)

    def _keep(self) -> None:
        lease = self._lease
        if lease is not None and self._etcd.refresh(lease) > 0:
            return
        lease = self._etcd.grant(self.config.ttl)
        self._lease = lease
        self._etcd.put(self.member.key, self.member.to_json(), lease)
        self.registered.set()
        log.debug("%s registered as %s (lease %x)", self.member.name, self.member.key, lease.id)

    def stop(self) -> None:
        """Revoke the lease, if etcd was reachable lately (else the lease expires by itself).

        Waits at most one request timeout for a refresh in progress: a stop is never held up
        for long by an etcd that went away.
        """
        self._stop.set()
        self._thread.join(timeout=self.config.timeout)
        lease, self._lease = self._lease, None
        if lease is None or not self.registered.is_set():
            return
        try:
            self._etcd.revoke(lease)
        except ClusterError as exc:
            log.warning("%s: could not leave the cluster (%s); the entry expires in %d s",
                        self.member.name, exc, self.config.ttl)


def register(entry: Entry) -> Optional[Registration]:
    """Start registering ``entry`` when a cluster is configured; None otherwise."""
    config = load_config()
    if config is None:
        return None
    return Registration(config, Member.from_entry(entry, host_name())).start()
