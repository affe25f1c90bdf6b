"""The cluster registry: daemons on many hosts found by name, through etcd.

Opt-in: nothing here runs, and ``etcd3gw`` is not even imported, unless a registry is
configured, by ``MALACODA_REGISTRY=etcd://host1:2379,host2:2379`` or by ``registry = "..."`` in
the first ``config.toml`` found of ``<MALACODA_HOME>/config.toml`` (when ``MALACODA_HOME`` is set),
else ``~/.config/malacoda/config.toml`` (``/etc/malacoda/config.toml`` for root), then
``/etc/malacoda/config.toml``. Its optional ``[etcd]`` table::

    registry = "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"   # etcds:// for TLS

    [etcd]
    ttl = 10                  # lease seconds: a dead host's daemons vanish after this
    timeout = 2.0             # seconds per etcd request
    ca = "/etc/malacoda/etcd/ca.pem"        # TLS: verify the server (implies https)
    cert = "/etc/malacoda/etcd/client.pem"  # TLS client certificate and key
    key = "/etc/malacoda/etcd/client-key.pem"
    user = "malacoda"         # etcd authentication; the file must then not be readable by others
    password = "..."

The same settings from the environment win over the file: ``MALACODA_REGISTRY``,
``MALACODA_REGISTRY_TTL``, ``MALACODA_ETCD_CA``, ``MALACODA_ETCD_CERT``, ``MALACODA_ETCD_KEY``,
``MALACODA_ETCD_USER``, ``MALACODA_ETCD_PASSWORD``.

A daemon, once ready, puts ``malacoda/daemons/<name>/<host>`` → a JSON :class:`Member` under a
lease that a thread of its own refreshes every TTL/3 (:class:`Registration`); a clean stop
revokes the lease, and a daemon killed or a host that dies vanishes when the lease runs out.
When etcd is unreachable the daemon serves on and the registration retries with backoff.
The host is ``socket.gethostname()``, or ``MALACODA_HOSTNAME`` (see :func:`malacoda.host.paths.host_name`).
"""

from __future__ import annotations

from malacoda.cluster.config import ClusterConfig, config_files, load_config, parse_registry
from malacoda.cluster.etcd import PREFIX, Etcd, Member, cluster, list_daemons
from malacoda.cluster.registration import Registration, register

__all__ = ["PREFIX", "ClusterConfig", "Etcd", "Member", "Registration", "cluster", "config_files",
           "list_daemons", "load_config", "parse_registry", "register"]
