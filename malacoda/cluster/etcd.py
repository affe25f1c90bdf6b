"""etcd through its JSON gateway (``etcd3gw``): the daemons' entries read, written and leased.
"""

from __future__ import annotations

import base64
import json
import logging
import pwd
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from malacoda.cluster.config import ClusterConfig, config_files, load_config
from malacoda.errors import ClusterError, ConfigError
from malacoda.host.paths import check_host, check_name, known_fields
from malacoda.host.registry import Entry

log = logging.getLogger(__name__)

PREFIX = "malacoda/daemons/"
T = TypeVar("T")


# ---------------------------------------------------------------------------------- records


@dataclass
class Member:
    """A daemon as it registered itself in the cluster."""

    name: str
    host: str
    address: str
    port: int
    pid: int
    start_time: float
    incarnation: str
    user: str
    version: str
    server_key: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.name}/{self.host}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: bytes) -> Member:
        """The entry ``data`` holds; :class:`ValueError` (saying why) for one that is not a
        daemon's: anyone who can write to etcd wrote it, and its name and host become file
        names, SSH host names and endpoints here."""
        member = cls(**known_fields(cls, json.loads(data)))
        for check, key, what in ((check_name, "name", "a daemon name"),
                                 (check_host, "host", "a host name")):
            try:
                check(getattr(member, key))
            except ConfigError:
                raise ValueError(f"{key} {getattr(member, key)!r} is not {what}") from None
        for key in ("address", "incarnation", "user", "version"):
            if not isinstance(getattr(member, key), str):
                raise ValueError(f"{key} is not a string")
        if not all(type(getattr(member, key)) is int for key in ("port", "pid")) \
                or not 0 < member.port < 65536:
            raise ValueError("port or pid is not a number")
        if type(member.start_time) not in (int, float):
            raise ValueError("start_time is not a number")
        if member.server_key is not None and not isinstance(member.server_key, str):
            raise ValueError("server_key is not a string")
        return member

    @classmethod
    def from_entry(cls, entry: Entry, host: str) -> Member:
        try:
            user = pwd.getpwuid(entry.uid).pw_name
        except KeyError:
            user = str(entry.uid)
        return cls(entry.name, host, entry.address, entry.port, entry.pid, entry.start_time,
                   entry.incarnation, user, entry.version, entry.server_key)


def _members(kvs: List[Tuple[bytes, Dict[str, Any]]]) -> List[Member]:
    found = []
    for value, meta in kvs:
        try:
            found.append(Member.from_json(value))
        except (ValueError, TypeError) as exc:
            key = meta.get("key")
            log.warning("ignoring cluster entry %r: %s", key.decode(errors="replace")
                        if isinstance(key, bytes) else key, exc)
    return found


# ---------------------------------------------------------------------------------- the client


class Etcd:
    """A thin layer over ``etcd3gw``: several endpoints, authentication, one error type.

    Every method raises :class:`ClusterError` (one line naming the endpoints) when no endpoint
    answers.
    """

    def __init__(self, config: ClusterConfig) -> None:
        try:
            import etcd3gw  # imported only when a cluster is configured
        except ImportError:
            raise ConfigError(f"{config.source} configures a cluster registry, which needs etcd3gw: "
                              "pip install 'malacoda[cluster]'") from None

        self.config = config
        self._exceptions = etcd3gw.exceptions
        self._clients = []
        for url in config.endpoints:
            split = urlsplit(url)
            session = _session(config)
            self._clients.append(etcd3gw.client(
                host=split.hostname or "", port=split.port or 2379, protocol=split.scheme,
                timeout=config.timeout, api_path="/v3/", session=session))
        self._current = 0

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` on the first endpoint that answers (the last good one first)."""
        errors = []
        n = len(self._clients)
        for i in range(n):
            index = (self._current + i) % n
            client = self._clients[index]
            try:
                result = self._with_auth(client, fn)
            except (self._exceptions.ConnectionFailedError,
                    self._exceptions.ConnectionTimeoutError) as exc:
                errors.append(_reason(exc))
                continue
            except self._exceptions.Etcd3Exception as exc:
                raise ClusterError(f"etcd at {client.base_url} refused to {what}: {_reason(exc)}") from None
            except (ValueError, KeyError):
                raise ClusterError(f"{client.base_url} does not answer as etcd's v3 JSON API does "
                                   f"(is it etcd >= 3.4?): cannot {what}") from None
            self._current = index
            return result
        reasons = "; ".join(dict.fromkeys(errors))
        raise ClusterError(f"etcd at {self.config.where} is unreachable ({reasons}): cannot {what}")

    def _with_auth(self, client: Any, fn: Callable[[Any], T]) -> T:
        if self.config.user and "Authorization" not in client.session.headers:
            self._authenticate(client)
        try:
            return fn(client)
        except self._exceptions.Etcd3Exception as exc:
            if not (self.config.user and "auth token" in str(exc.detail_text)):
                raise
        self._authenticate(client)  # the token expired: log in again, once
        return fn(client)

    def _authenticate(self, client: Any) -> None:
        client.session.headers.pop("Authorization", None)
        try:
            reply = client.post(client.get_url("/auth/authenticate"),
                                json={"name": self.config.user, "password": self.config.password or ""})
        except self._exceptions.Etcd3Exception as exc:
            if isinstance(exc, (self._exceptions.ConnectionFailedError,
                                self._exceptions.ConnectionTimeoutError)):
                raise
            raise ClusterError(f"etcd at {client.base_url} refused user {self.config.user!r}: "
                               f"{_reason(exc)}") from None
        client.session.headers["Authorization"] = reply["token"]

    def current_client(self) -> Any:
        """The ``etcd3gw`` client of the endpoint that answered last (for a watch stream)."""
        return self._clients[self._current]

    # -------------------------------------------------------------- operations

    def members(self, name: Optional[str] = None) -> List[Member]:
        """Every registered daemon, or those named ``name``, sorted by name and host."""
        prefix = f"{PREFIX}{name}/" if name else PREFIX
        kvs = self.call("list daemons", lambda c: c.get_prefix(prefix, sort_target="key"))
        return _members(kvs)

    def snapshot(self) -> Tuple[Dict[str, str], int]:
        """``({key: incarnation}, revision)`` of every registered daemon."""
        def range_all(c: Any) -> Dict[str, Any]:
            return c.post(c.get_url("/kv/range"), json=prefix_range(PREFIX))

        reply = self.call("list daemons", range_all)
        found = {}
        for kv in reply.get("kvs", []):
            key, value = decode(kv["key"]).decode(), decode(kv.get("value", ""))
            try:
                found[key] = Member.from_json(value).incarnation
            except (ValueError, TypeError):
                continue
        return found, int(reply["header"]["revision"])

    def grant(self, ttl: int) -> Any:
        return self.call("grant a lease", lambda c: c.lease(ttl))

    def refresh(self, lease: Any) -> int:
        """The lease's new TTL, or -1 when it has expired."""
        return self.call("refresh a lease", lambda c: _on(c, lease).refresh())

    def revoke(self, lease: Any) -> None:
        self.call("revoke a lease", lambda c: _on(c, lease).revoke())

    def put(self, key: str, value: str, lease: Any) -> None:
        self.call("register", lambda c: c.put(key, value, lease=_on(c, lease)))


def _session(config: ClusterConfig) -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # an http_proxy variable must not divert etcd traffic
    if config.ca:
        session.verify = config.ca
    if config.cert and config.key:
        session.cert = (config.cert, config.key)
    return session


def _on(client: Any, lease: Any) -> Any:
    """The same lease, bound to ``client`` (leases are cluster-wide, clients per endpoint)."""
    from etcd3gw.lease import Lease

    return Lease(lease.id, client=client)


# ------------------------------------------------------------------- the gateway's encoding
# etcd's JSON gateway sends keys and values as base64 text, and a prefix as the range from the
# prefix to the prefix with its last byte one higher. Every module here uses these (etcd3gw's
# own are private).


def encode(text: str) -> str:
    """``text`` (a key or value) as the gateway sends it: the base64 of its UTF-8 bytes."""
    return base64.b64encode(text.encode()).decode()


def decode(text: str) -> bytes:
    """The bytes of a key or value as the gateway sent it (base64 text)."""
    return base64.b64decode(text)


def prefix_range(prefix: str) -> Dict[str, str]:
    """The gateway's ``key`` and ``range_end`` that select every key starting with ``prefix``."""
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])  # "malacoda/daemons/" -> "malacoda/daemons0"
    return {"key": encode(prefix), "range_end": base64.b64encode(end).decode()}


_REASONS = (  # (marker in the error text, what to tell the user)
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "name or service not known"),
    ("No route to host", "no route to host"),
    ("certificate verify failed", "its certificate does not verify against the CA (ca)"),
    ("KEY_VALUES_MISMATCH", "the client certificate and key do not match (cert, key)"),
    ("BAD_CERTIFICATE", "it refused the client certificate or wants one (cert, key)"),
    ("CERTIFICATE_REQUIRED", "it wants a client certificate (cert, key)"),
    ("EOF occurred in violation", "it closed the TLS connection (does it want a client certificate: "
     "cert, key?)"),
    ("WRONG_VERSION_NUMBER", "it does not speak TLS (etcd:// instead of etcds://?)"),
    ("Remote end closed", "it closed the connection (does it want TLS: etcds://?)"),
)


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "detail_text", "") or exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    try:
        body = json.loads(text)
        return str(body.get("error") or body.get("message"))
    except (ValueError, AttributeError):
        return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------------- lookups


def cluster(config: Optional[ClusterConfig] = None) -> Etcd:
    """A client for the configured cluster; :class:`ConfigError` when none is configured."""
    config = config or load_config()
    if config is None:
        raise ConfigError("no cluster registry is configured: set MALACODA_REGISTRY=etcd://HOST:PORT "
                          "or 'registry = \"etcd://HOST:PORT\"' in " + str(config_files()[0]))
    return Etcd(config)


def list_daemons(config: Optional[ClusterConfig] = None) -> List[Member]:
    """Every daemon registered in the cluster, sorted by name then host."""
    return cluster(config).members()
