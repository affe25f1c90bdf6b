"""Where the cluster registry is configured: ``MALACODA_REGISTRY`` and ``config.toml``
(see :mod:`malacoda.cluster`).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from malacoda.errors import ConfigError
from malacoda.host.files import check_not_writable_by_others
from malacoda.host.paths import Paths

log = logging.getLogger(__name__)
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
