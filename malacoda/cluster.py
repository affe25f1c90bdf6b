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
The host is ``socket.gethostname()``, or ``MALACODA_HOSTNAME`` (see :func:`malacoda.runtime.host_name`).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import stat
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from .errors import ClusterError, ConfigError
from .runtime import (
    Entry,
    Paths,
    check_host,
    check_name,
    check_not_writable_by_others,
    host_name,
    known_fields,
)

log = logging.getLogger(__name__)

PREFIX = "malacoda/daemons/"
DEFAULT_TTL = 10
DEFAULT_TIMEOUT = 2.0
SYSTEM_CONFIG = Path("/etc/malacoda/config.toml")
_ETCD_KEYS = {"ttl", "timeout", "ca", "cert", "key", "user", "password"}
_ENV = {
    "ttl": "MALACODA_REGISTRY_TTL",
    "ca": "MALACODA_ETCD_CA",
    "cert": "MALACODA_ETCD_CERT",
    "key": "MALACODA_ETCD_KEY",
    "user": "MALACODA_ETCD_USER",
    "password": "MALACODA_ETCD_PASSWORD",
}
T = TypeVar("T")


# ---------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster registry is and how to talk to it."""

    endpoints: Tuple[str, ...]  # base URLs, e.g. ("http://10.0.0.1:2379",)
    ttl: int = DEFAULT_TTL
    timeout: float = DEFAULT_TIMEOUT
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    source: str = ""

    @property
    def where(self) -> str:
        """The endpoints as error messages name them."""
        return ", ".join(self.endpoints)


def config_files() -> List[Path]:
    """The config files looked at, first found wins (see the module docstring)."""
    paths = Paths.default()
    own = paths.units.parent / "config.toml"
    if os.environ.get("MALACODA_HOME"):
        return [own]
    return [own] if own == SYSTEM_CONFIG else [own, SYSTEM_CONFIG]


def _read_toml(path: Path) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return dict(tomllib.load(f))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def parse_registry(url: str, origin: str) -> Tuple[Tuple[str, ...], bool]:
    """``etcd://h1:2379,h2:2379`` → (("http://h1:2379", "http://h2:2379"), tls?)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds") or not rest.strip("/"):
        raise ConfigError(f"{origin}: registry {url!r} must look like etcd://HOST:PORT[,HOST:PORT...] "
                          "(etcds:// for TLS)")
    proto = "https" if scheme == "etcds" else "http"
    endpoints = []
    for part in rest.strip("/").split(","):
        part = part.strip()
        split = urlsplit(f"//{part}")
        try:
            port = split.port or 2379
        except ValueError:
            raise ConfigError(f"{origin}: registry {url!r}: bad port in {part!r}") from None
        if not split.hostname or split.path:
            raise ConfigError(f"{origin}: registry {url!r}: bad endpoint {part!r}")
        host = f"[{split.hostname}]" if ":" in split.hostname else split.hostname
        endpoints.append(f"{proto}://{host}:{port}")
    return tuple(endpoints), scheme == "etcds"


def load_config() -> Optional[ClusterConfig]:
    """The cluster registry's settings, or None when none is configured (then nothing changes)."""
    env_url = os.environ.get("MALACODA_REGISTRY", "").strip()
    settings: Dict[str, Any] = {}
    url, source = "", ""
    for path in config_files():
        if not path.is_file():
            continue
        # It names the registry that tells clients where daemons are: another user's, or one
        # others can write, could send every client to their own endpoint.
        check_not_writable_by_others(path, why="it names the registry clients trust")
        data = _read_toml(path)
        etcd = data.get("etcd", {})
        if not isinstance(etcd, dict):
            raise ConfigError(f"{path}: [etcd] must be a table")
        unknown = sorted(set(etcd) - _ETCD_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} in [etcd] "
                              f"(known: {', '.join(sorted(_ETCD_KEYS))})")
        if "password" in etcd and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} holds an etcd password but other users can read it: "
                              f"run 'chmod 600 {path}'")
        url, source, settings = str(data.get("registry", "")).strip(), str(path), dict(etcd)
        break
    if env_url:
        url, source = env_url, "MALACODA_REGISTRY"
    if not url:
        return None
    for key, var in _ENV.items():
        if os.environ.get(var):
            settings[key] = os.environ[var]
    endpoints, tls = parse_registry(url, source)
    try:
        ttl = int(settings.get("ttl", DEFAULT_TTL))
        timeout = float(settings.get("timeout", DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: etcd ttl and timeout must be numbers") from None
    if ttl < 1 or timeout <= 0:
        raise ConfigError(f"{source}: etcd ttl must be >= 1 s and timeout > 0")
    if tls or settings.get("ca") or settings.get("cert"):
        endpoints = tuple(e.replace("http://", "https://", 1) for e in endpoints)
    if bool(settings.get("cert")) != bool(settings.get("key")):
        raise ConfigError(f"{source}: etcd TLS needs both cert and key")
    return ClusterConfig(endpoints, ttl, timeout, settings.get("ca"), settings.get("cert"),
                         settings.get("key"), settings.get("user"), settings.get("password"),
                         source)


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
        from etcd3gw.utils import _encode, _increment_last_byte

        def range_all(c: Any) -> Dict[str, Any]:
            return c.post(c.get_url("/kv/range"), json={
                "key": _encode(PREFIX), "range_end": _encode(_increment_last_byte(PREFIX))})

        reply = self.call("list daemons", range_all)
        found = {}
        for kv in reply.get("kvs", []):
            key, value = _b64(kv["key"]).decode(), _b64(kv.get("value", ""))
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


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


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
