"""The settings a supervisor gives the daemon it starts, over the class's own keywords.

:class:`DaemonOptions` is the one record of them: a unit file's keys for its daemon are its
field names (:mod:`malacoda.supervisor.units` builds its schema from these fields, their types
and their docs), and :class:`RunOptions` is what the unit runner hands the daemon's process:
those options, plus the callbacks the supervisor needs. ``None`` leaves the class's value.

The runner calls :func:`use` before it instantiates the class; :class:`~.base.Malacoda` reads
:func:`current` once, in ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import zmq

from malacoda.host.registry import Entry


def option(default: Any, doc: str, *types: type, file_default: Any = None) -> Any:
    """A field of an options record: its default, what it means, the types a unit file may give
    it, and (when it differs from ``default``) the default a unit file's schema shows."""
    metadata = {"doc": doc, "types": types or (type(default),),
                "file_default": default if file_default is None else file_default}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DaemonOptions:
    """What a unit file may set of its daemon; ``None`` leaves the constructor's value."""

    bind: Optional[str] = option(None, "address to bind (the class's default: 127.0.0.1)", str)
    port: Optional[int] = option(None, "a fixed port (the class's default: one the kernel picks)",
                                 int)
    workers: Optional[int] = option(None, "calls that may run at once (the class's default: 8)",
                                    int)
    queue: Optional[int] = option(None, "requests that may wait for a worker (the class's "
                                  "default: 64)", int)
    max_message: Optional[int] = option(None, "bytes: a larger request is refused (the class's "
                                        "default: 64 MiB)", int)
    max_connections: Optional[int] = option(None, "connections kept open; past it the oldest is "
                                            "closed (the class's default: 1024, fewer if the "
                                            "open files limit is low)", int)
    insecure: Optional[bool] = option(None, "serve a non-loopback 'bind' without CURVE (the "
                                      "class's: false)", bool)
    curve: Optional[bool] = option(None, "serve CURVE on loopback too, for a shared host (the "
                                   "class's: false)", bool)
    open: Optional[bool] = option(None, "let any local user call it (no owner check; the "
                                  "class's: false)", bool)
    pst: Optional[Dict[str, Any]] = option(None, "pst_config over the class's own (class_name, "
                                           "frequency, file_path…)", dict)


@dataclass
class RunOptions(DaemonOptions):
    """:class:`DaemonOptions` as a supervisor hands them to the daemon's process, with its name
    and callbacks: ``on_ready`` is called with the registry entry once the daemon serves;
    ``on_failure`` with the exception as soon as ``_run`` (or a ``_run_*``) failed, before the
    daemon saves its state and closes."""

    name: Optional[str] = None
    configure_socket: Optional[Callable[[zmq.Socket], object]] = None
    on_ready: List[Callable[[Entry], None]] = field(default_factory=list)
    on_failure: List[Callable[[BaseException], None]] = field(default_factory=list)
    stop_grace: float = 5.0


_current: Optional[RunOptions] = None


def use(options: Optional[RunOptions]) -> None:
    """The options of the daemons this process makes from now on (None: the classes' own)."""
    global _current
    _current = options


def current() -> RunOptions:
    """The options :func:`use` set, else empty ones."""
    return _current or RunOptions()
