"""Malacoda: Python daemons that talk to each other, and to people, across machines.

The public API is what ``__all__`` lists; every other module is an implementation detail.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any, Optional

from malacoda.errors import (
    AccessDenied,
    AlreadyRunning,
    AmbiguousName,
    AuthenticationFailed,
    Busy,
    CallTimeout,
    ClusterError,
    CommunicationError,
    ConfigError,
    ConnectionLost,
    HostKeyRejected,
    HostUnreachable,
    LookupFailed,
    MalacodaError,
    NotInstalled,
    ProcessError,
    ProtocolError,
    RemoteError,
    RemoteHostError,
    ReplyLost,
    RequestTooLarge,
    StateError,
)
from malacoda.version import __version__

if TYPE_CHECKING:
    from malacoda.client.proxy import Proxy
    from malacoda.client.streaming import RemoteIterator
    from malacoda.daemon.base import Malacoda
    from malacoda.storage import PstFileStorage, PstS3Storage, PstSqliteStorage, PstStorage
    from malacoda.wire.codec import register_type

# Imported on first use: a command line (malacodactl) needs none of the daemon's side.
_LAZY = {"Malacoda": "daemon.base", "register_type": "wire.codec", "Proxy": "client.proxy",
         "PstFileStorage": "storage", "PstS3Storage": "storage", "PstSqliteStorage": "storage",
         "PstStorage": "storage", "RemoteIterator": "client.streaming"}


def __getattr__(name: str) -> Any:
    if name == "aio":  # the asyncio proxy's module (malacoda.aio.get): imported on first use
        return importlib.import_module(".aio", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'malacoda' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "AccessDenied",
    "AlreadyRunning",
    "AmbiguousName",
    "AuthenticationFailed",
    "Busy",
    "CallTimeout",
    "ClusterError",
    "CommunicationError",
    "ConfigError",
    "ConnectionLost",
    "ReplyLost",
    "HostKeyRejected",
    "HostUnreachable",
    "LookupFailed",
    "Malacoda",
    "MalacodaError",
    "NotInstalled",
    "ProcessError",
    "ProtocolError",
    "Proxy",
    "RemoteIterator",
    "PstFileStorage",
    "PstS3Storage",
    "PstSqliteStorage",
    "PstStorage",
    "RemoteError",
    "RemoteHostError",
    "RequestTooLarge",
    "StateError",
    "__version__",
    "aio",
    "get",
    "register_type",
    "stop",
]


def get(name: str, timeout: Optional[float] = None, **ssh_args: Any) -> Proxy:
    """A proxy to the daemon ``name`` (``NAME``, ``NAME:PORT``, ``NAME:HOST``, ``NAME:HOST:PORT``).

    Raises :class:`LookupFailed` when no daemon of that name runs. ``timeout`` is the default
    timeout of every call made through the proxy; ``ssh_args`` go to paramiko's
    ``SSHClient.connect`` for a remote host.
    """
    from malacoda.client.proxy import Proxy

    return Proxy(name, timeout=timeout, **ssh_args)


def stop(name: str, wait: float = 10.0, **ssh_args: Any) -> None:
    """Ask the daemon ``name`` to stop and wait up to ``wait`` seconds until it has gone.

    Raises :class:`LookupFailed` when it is not running and :class:`ProcessError` when it is
    still there after ``wait`` seconds.
    """
    from malacoda.client.proxy import Proxy, request

    with Proxy(name, **ssh_args) as proxy:
        incarnation = request(proxy, "describe", None, None, wait)["incarnation"]
        proxy.stop(timeout=wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if request(proxy, "describe", None, None, 0.5)["incarnation"] != incarnation:
                    return
            except (CommunicationError, LookupFailed):
                return
            time.sleep(0.05)
    raise ProcessError(f"{name} did not stop within {wait} s")
