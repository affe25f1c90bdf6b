"""Names and folders: what a daemon may be called, and where its files live.

Every file Malacoda writes lives under four folders (see :class:`Paths`); ``MALACODA_HOME``
moves all of them under one folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict

from malacoda.errors import ConfigError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a daemon (it becomes part of file names)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            f"invalid daemon name {name!r}: use letters, digits, '_', '.', '-' "
            "(starting with a letter, at most 128 characters)"
        )
    return name


#: One label of a host name: letters, digits, '-' and '_' (some ``~/.ssh/config`` aliases and
#: internal names have one), neither first nor last a '-'; at most 63 characters.
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_host(host: str, what: str = "") -> str:
    """Return ``host`` if it can be a host name, an IPv4 address or an SSH alias; else a
    :class:`ConfigError` naming it (``what`` says where it was given).

    Labels of letters, digits, '-' and '_' between single dots, 253 characters at most; an
    internationalised name is checked in its IDNA (``xn--``) form. ``..``, ``../../etc`` or an
    option such as ``-oProxyCommand=...`` are refused here, before any lookup, rather than
    failing deep in the resolver (``..`` raised ``UnicodeError``).
    """
    try:
        ascii_form = host.encode("idna").decode("ascii") if isinstance(host, str) else ""
    except UnicodeError:
        ascii_form = ""
    labels = ascii_form[:-1].split(".") if ascii_form.endswith(".") else ascii_form.split(".")
    if not ascii_form or len(ascii_form) > 253 or not all(HOST_LABEL_RE.match(x) for x in labels):
        raise ConfigError(f"{what}{': ' if what else ''}{host!r} is not a host name (letters, "
                          "digits, '-' and '_', with single dots between labels)")
    return host


@dataclass(frozen=True)
class Paths:
    """The folders Malacoda uses on this host, for the current user."""

    run: Path
    log: Path
    lib: Path
    units: Path
    keys: Path

    @classmethod
    def default(cls) -> Paths:
        """Folders from ``MALACODA_HOME``, else the root or per-user locations."""
        home = os.environ.get("MALACODA_HOME")
        if home:
            base = Path(home).expanduser().absolute()
            return cls(base / "run", base / "log", base / "lib", base / "units", base / "keys")
        if os.geteuid() == 0:
            return cls(
                Path("/run/malacoda"),
                Path("/var/log/malacoda"),
                Path("/var/lib/malacoda"),
                Path("/etc/malacoda/units"),
                Path("/etc/malacoda/keys"),
            )
        user_home = Path.home()
        xdg_run = os.environ.get("XDG_RUNTIME_DIR")
        state = user_home / ".local" / "state" / "malacoda"
        config = Path(os.environ.get("XDG_CONFIG_HOME") or user_home / ".config") / "malacoda"
        run = Path(xdg_run) / "malacoda" if xdg_run else state / "run"
        return cls(run, state / "log", state / "lib", config / "units", config / "keys")

    @property
    def registry(self) -> Path:
        return self.run / "registry"

    def log_file(self, name: str) -> Path:
        """The log of the daemon ``name``: ``<log>/<name>.log`` (rotated ones add ``.1`` …)."""
        return self.log / f"{check_name(name)}.log"

    def as_dict(self) -> Dict[str, str]:
        d = {k: str(v) for k, v in asdict(self).items()}
        d["registry"] = str(self.registry)
        return d


def host_name() -> str:
    """This host's name in the cluster: ``MALACODA_HOSTNAME``, else ``socket.gethostname()``.

    ``MALACODA_HOSTNAME`` lets several "hosts" share one machine (tests, containers).
    """
    return os.environ.get("MALACODA_HOSTNAME") or socket.gethostname()


def known_fields(cls: type, raw: Dict[str, Any]) -> Dict[str, Any]:
    """The items of ``raw`` that are fields of dataclass ``cls`` (a newer writer's extra keys
    are dropped, so records written by another version still load)."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
