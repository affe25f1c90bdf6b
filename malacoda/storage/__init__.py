"""Persisters for ``pst*`` attributes: one small interface; file, SQLite and S3 backends.

A daemon's ``pst_config`` names the persister and its options, as in the original::

    pst_config={'class_name': 'PstFileStorage', 'frequency': timedelta(minutes=1),
                'file_path': '/var/lib/app/state.pst'}

``class_name`` is a built-in name (``PstFileStorage``, ``PstSqliteStorage``, ``PstS3Storage``) or
``package.module:Class`` for a subclass of :class:`PstStorage`. ``frequency`` (a
``timedelta`` or seconds, default 60) is how often changed state is saved; every other key goes
to the persister's constructor.

State is serialised with ``dill``, and loading it runs code: a state file that is not ours or
is writable by others is refused before it is read, and state kept in S3 is loaded only with
this host's signature on it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Dict, Optional, Type

from malacoda.errors import ConfigError
from malacoda.host.paths import Paths
from malacoda.storage.base import DEFAULT_FREQUENCY, PstStorage, serialise
from malacoda.storage.file import PstFileStorage
from malacoda.storage.s3 import PstS3Storage
from malacoda.storage.sqlite import SQLITE_COMPANIONS, PstSqliteStorage

__all__ = ["DEFAULT_FREQUENCY", "SQLITE_COMPANIONS", "BUILTIN", "PstStorage", "PstFileStorage",
           "PstSqliteStorage", "PstS3Storage", "serialise", "storage_class", "from_config"]


BUILTIN: Dict[str, Type[PstStorage]] = {
    "PstFileStorage": PstFileStorage,
    "PstSqliteStorage": PstSqliteStorage,
    "PstS3Storage": PstS3Storage,
    "file": PstFileStorage,
    "sqlite": PstSqliteStorage,
    "s3": PstS3Storage,
}


def storage_class(class_name: str) -> Type[PstStorage]:
    """A built-in persister name or ``package.module:Class`` → the class."""
    if class_name in BUILTIN:
        return BUILTIN[class_name]
    if ":" not in class_name:
        raise ConfigError(f"unknown persister {class_name!r}: use one of "
                          f"{', '.join(sorted(BUILTIN))} or 'package.module:Class'")
    module_name, _, attr = class_name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"persister {class_name!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, PstStorage)):
        raise ConfigError(f"persister {class_name!r} is not a subclass of malacoda.PstStorage")
    return cls


def from_config(name: str, paths: Paths, config: Optional[Dict[str, Any]]) -> PstStorage:
    """Build the persister a ``pst_config`` dict describes (None: the file default)."""
    options = dict(config or {})
    cls = storage_class(str(options.pop("class_name", "PstFileStorage")))
    try:
        return cls(name, paths, **options)
    except TypeError as exc:
        raise ConfigError(f"pst_config for {name!r}: {exc}") from exc
