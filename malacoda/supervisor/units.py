"""TOML unit files: where they are found, what they may say, and clear errors when they are wrong.

A unit file ``<folder>/<Name>.toml`` names a daemon class and how to run it; the unit's name is
the file's stem. Two keys are enough::

    class = "message_daemon:MessageDaemon"
    path = ["../examples"]          # import path entries, relative to the unit file

Every key, its type and its default is in :data:`SCHEMA` (a test checks that the README's
unit-file reference lists each of them). Unit files are looked up along :func:`search_path`. A unit names
code to import, so a unit file or folder that other users can write is refused.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from malacoda.daemon.options import DaemonOptions, option
from malacoda.errors import ConfigError
from malacoda.host.files import check_not_writable_by_others
from malacoda.host.paths import Paths, check_name
from malacoda.supervisor.logfile import LOG_BACKUPS, LOG_MAX_BYTES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

log = logging.getLogger(__name__)

SYSTEM_UNITS = Path("/etc/malacoda/units")
RESTART_POLICIES = ("on-failure", "always", "no")
DEFAULT_STOP_TIMEOUT = 10.0  # seconds from the stop request to SIGKILL

@dataclass
class Unit:
    """A validated unit file. Its keys are the fields below that carry a ``doc``, and the
    daemon's own options (:class:`~malacoda.daemon.options.DaemonOptions`, in ``daemon``):
    :data:`SCHEMA` is made of both, so each key, its type and its default are written once."""

    name: str
    file: Path
    cls: str
    daemon: DaemonOptions = field(default_factory=DaemonOptions)
    path: List[Path] = option([], "folders put first on the import path, relative to the unit "
                              "file", list)
    args: Dict[str, Any] = option({}, "keyword arguments for the class's constructor", dict)
    restart: str = option("on-failure", "restart policy: 'on-failure', 'always' or 'no'", str)
    backoff: float = option(1.0, "seconds before the first restart; doubled at each failure",
                            int, float)
    backoff_max: float = option(60.0, "the cap of the restart delay, in seconds", int, float)
    backoff_reset: float = option(60.0, "seconds up after which the delay and count reset",
                                  int, float)
    start_limit: int = option(5, "restarts in a row (without a stable period) before 'failed'",
                              int)
    start_timeout: float = option(30.0, "seconds a start may take before it counts as failed",
                                  int, float)
    stop_timeout: float = option(DEFAULT_STOP_TIMEOUT, "seconds from the stop request to SIGKILL "
                                 "(SIGTERM at half)", int, float)
    env: Dict[str, str] = option({}, "environment variables for the daemon (string values)",
                                 dict)
    workdir: Path = option(Path("."), "working directory, relative to the unit file (default: "
                           "its folder)", str, file_default=None)
    requires: List[str] = option([], "units started before this one (and stopped after it)",
                                 list)
    log_max_bytes: int = option(LOG_MAX_BYTES, "the log file is rotated past this size (0: "
                                "never)", int)
    log_backups: int = option(LOG_BACKUPS, "rotated log files kept (<name>.log.1 … .N)", int)
    log_level: str = option("INFO", "level of the daemon's Python logging", str)
    text: str = field(default="", repr=False)  # the file's content as it was loaded


def _keys(record: type) -> Dict[str, Tuple[Tuple[type, ...], Any, str]]:
    return {f.name: (f.metadata["types"], f.metadata["file_default"], f.metadata["doc"])
            for f in fields(record) if "doc" in f.metadata}


#: key → (accepted types, default, meaning): built from :class:`Unit` and
#: :class:`~malacoda.daemon.options.DaemonOptions`, where each is written once.
SCHEMA: Dict[str, Tuple[Tuple[type, ...], Any, str]] = {
    "class": ((str,), None, "the daemon class as 'module:Class' (required)"),
    **_keys(DaemonOptions), **_keys(Unit)}


def search_path(unit_path: Optional[str] = None, paths: Optional[Paths] = None) -> List[Path]:
    """Folders searched for unit files, first match wins.

    ``unit_path`` (``--unit-path``, else ``MALACODA_UNIT_PATH``; ``os.pathsep``-separated), then
    ``./conf``, the user's (or ``MALACODA_HOME``'s) units folder, then ``/etc/malacoda/units``
    unless ``MALACODA_HOME`` is set: a home of its own is isolated from the system's units.
    """
    paths = paths or Paths.default()
    given = unit_path if unit_path is not None else os.environ.get("MALACODA_UNIT_PATH", "")
    folders = [Path(p).expanduser() for p in given.split(os.pathsep) if p]
    folders += [Path("conf"), paths.units]
    if not os.environ.get("MALACODA_HOME"):
        folders.append(SYSTEM_UNITS)
    seen: List[Path] = []
    for folder in folders:
        folder = folder.absolute()
        if folder not in seen:
            seen.append(folder)
    return seen


def find(name: str, search: Sequence[Path]) -> Path:
    """The unit file for ``name`` along ``search``, or a :class:`ConfigError` naming the folders."""
    check_name(name)
    for folder in search:
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return candidate
    where = ", ".join(str(f) for f in search)
    raise ConfigError(f"unknown unit {name!r}: no {name}.toml in {where}")


def names(search: Sequence[Path]) -> List[str]:
    """Every unit name along ``search`` (the first folder holding a name wins).

    A ``.toml`` file whose stem cannot name a unit (an editor's ``.#Name.toml`` lock,
    ``sp ace.toml``) is skipped with a warning: one stray file never breaks the others.
    """
    found: Dict[str, Path] = {}
    for folder in search:
        if folder.is_dir():
            for file in sorted(folder.glob("*.toml")):
                try:
                    check_name(file.stem)
                except ConfigError:
                    log.warning("skipping %s: %r is not a unit name (use letters, digits, "
                                "'_', '.', '-')", file, file.stem)
                    continue
                found.setdefault(file.stem, file)
    return sorted(found)


def load(name: str, search: Sequence[Path]) -> Unit:
    """Find and validate the unit ``name``."""
    return load_file(find(name, search))


def _check_not_writable_by_others(path: Path, what: str = "", fix: str = "") -> None:
    check_not_writable_by_others(path, what, "a unit names code to run", fix)


def _module_files(module: str, search: Sequence[Path]) -> List[Path]:
    """The package folders and files ``module`` is imported from when ``search`` comes first on
    ``sys.path`` (nothing when it is not found there); found without importing anything."""
    from importlib.machinery import PathFinder

    found: List[Path] = []
    locations = [str(p) for p in search]
    for part in module.split("."):
        spec = PathFinder.find_spec(part, locations)
        if spec is None:
            break
        folders = list(spec.submodule_search_locations or [])
        found += [Path(p) for p in folders]
        if spec.has_location and spec.origin:
            found.append(Path(spec.origin))
        locations = folders
    return found


def check_code_sources(unit: Unit) -> None:
    """Refuse a unit whose ``path`` entries, class module or ``workdir`` others can write.

    A ``path`` entry that does not exist is refused when another user could create it (its
    nearest existing parent is writable by others, as ``/tmp`` is).
    """
    where = f"{unit.file}: "
    for folder in unit.path:
        if folder.exists():
            _check_not_writable_by_others(folder, f"{where}'path' entry ")
            continue
        parent = folder.parent
        while not parent.exists():
            parent = parent.parent
        _check_not_writable_by_others(parent, f"{where}'path' entry {folder} does not exist, "
                                              "and its parent ",
                                      f"create {folder} yourself, or take it out of 'path'")
    for source in _module_files(unit.cls.partition(":")[0], unit.path):
        _check_not_writable_by_others(source, f"{where}the code of {unit.cls!r}, ")
    if unit.workdir.exists():
        _check_not_writable_by_others(unit.workdir, f"{where}'workdir' ")


def load_file(file: Path, text: Optional[str] = None) -> Unit:
    """Parse and validate one unit file; every error names the file and the problem.

    ``text``: the file's content as read earlier (the supervisor runs a unit as it was loaded, not
    as a half-saved edit may have left the file since).
    """
    file = Path(file).absolute()
    name = file.stem
    try:
        check_name(name)
    except ConfigError:
        raise ConfigError(f"{file}: {name!r} cannot name a unit: use letters, digits, '_', '.', '-'")
    _check_not_writable_by_others(file.parent)
    _check_not_writable_by_others(file)
    try:
        if text is None:
            text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read it: {exc}") from None
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in SCHEMA:
            raise ConfigError(f"{file}: unknown key {key!r} (known keys: {', '.join(SCHEMA)})")
        types = SCHEMA[key][0]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(_toml_type(t) for t in types)
            raise ConfigError(f"{file}: {key!r} must be {wanted}, not {_toml_type(type(value))} "
                              f"{value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{file}: {key!r} must be a finite number, not {value!r}")
        values[key] = value
    if "class" not in values:
        raise ConfigError(f"{file}: the key 'class' is required, e.g. class = \"module:Class\"")
    unit = _build(file, name, values)
    unit.text = text
    check_code_sources(unit)
    return unit


def digest(text: str) -> str:
    """What tells a unit file's content apart from an edited one (``status`` compares them)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _toml_type(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "an array",
            dict: "a table", bool: "a boolean"}.get(t, t.__name__)


def _build(file: Path, name: str, v: Dict[str, Any]) -> Unit:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{file}: {message}")

    module, _, cls = v["class"].partition(":")
    if not module or not cls:
        raise fail(f"'class' must be 'module:Class', not {v['class']!r}")
    for key in ("path", "requires"):
        if not all(isinstance(x, str) for x in v.get(key, [])):
            raise fail(f"{key!r} must be an array of strings")
    for key in ("env",):
        if not all(isinstance(x, str) for x in v.get(key, {}).values()):
            raise fail(f"every value of {key!r} must be a string")
    for env_name, env_value in v.get("env", {}).items():
        if not env_name or "=" in env_name or "\0" in env_name:
            raise fail(f"'env': {env_name!r} cannot name an environment variable "
                       "(it must not be empty or hold '=' or a NUL)")
        if "\0" in env_value:
            raise fail(f"'env': the value of {env_name!r} holds a NUL, which no environment "
                       "variable can")
    if v.get("restart", "on-failure") not in RESTART_POLICIES:
        raise fail(f"'restart' must be one of {', '.join(RESTART_POLICIES)}, not {v['restart']!r}")
    for key in ("backoff", "backoff_max", "backoff_reset", "start_timeout", "stop_timeout"):
        if key in v and v[key] <= 0:
            raise fail(f"{key!r} must be positive, not {v[key]!r}")
    for key in ("workers", "max_message", "max_connections"):
        if key in v and v[key] < 1:
            raise fail(f"{key!r} must be at least 1, not {v[key]!r}")
    for key in ("start_limit", "log_max_bytes", "log_backups"):
        if key in v and v[key] < 0:
            raise fail(f"{key!r} must not be negative, not {v[key]!r}")
    if "port" in v and not 0 <= v["port"] < 65536:
        raise fail(f"'port' {v['port']} is out of range")
    if "daemonize" in v.get("args", {}):
        raise fail("'args' must not set daemonize: the supervisor runs the daemon")
    for other in v.get("requires", []):
        try:
            check_name(other)
        except ConfigError as exc:
            raise fail(f"'requires': {exc}") from None
    if v.get("log_level", "INFO").upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise fail(f"'log_level' {v['log_level']!r} is not a logging level")
    base = file.parent
    merged = {**{k: d for k, (_, d, _) in SCHEMA.items()}, **v}
    own = {f.name: merged[f.name] for f in fields(Unit) if f.name in SCHEMA}
    for f in fields(Unit):  # a number of seconds given as an integer is a float all the same
        if f.name in own and float in f.metadata["types"]:
            own[f.name] = float(own[f.name])
    own.update(path=[(base / p).resolve() for p in merged["path"]], args=dict(merged["args"]),
               env=dict(merged["env"]), requires=list(merged["requires"]),
               workdir=(base / (merged["workdir"] or ".")).resolve(),
               log_level=merged["log_level"].upper())
    daemon = DaemonOptions(**{f.name: merged[f.name] for f in fields(DaemonOptions)})
    return Unit(name=name, file=file, cls=v["class"], daemon=daemon, **own)


def secrets_warning(unit: Unit) -> Optional[str]:
    """A warning when the unit has ``[env]`` values (where credentials go) and other users can
    read its file; None otherwise. Warned, not refused: most units' ``[env]`` holds no secret."""
    try:
        readable = unit.env and unit.file.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH)
    except OSError:
        return None
    if not readable:
        return None
    return (f"warning: {unit.file} has [env] values and other users can read it: if they hold "
            f"secrets, run 'chmod go-r {unit.file}'")


def check_class(unit: Unit) -> type:
    """Import the unit's class (in this process); a :class:`ConfigError` names what failed."""
    from malacoda.daemon.base import load_class

    try:
        return load_class(unit.cls, unit.path)
    except ConfigError as exc:
        raise ConfigError(f"{unit.file}: {exc}") from None
    except Exception as exc:  # the user's module may raise anything while importing
        raise ConfigError(f"{unit.file}: cannot import {unit.cls!r}: "
                          f"{type(exc).__name__}: {exc}") from None


def ordered(units: Dict[str, Unit], search: Sequence[Path]) -> List[Unit]:
    """``units`` and everything they require, requirements first; a cycle is a ConfigError."""
    result: List[Unit] = []
    done: Dict[str, Unit] = {}
    visiting: List[str] = []

    def visit(unit: Unit) -> None:
        if unit.name in done:
            return
        if unit.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(unit.name):], unit.name])
            raise ConfigError(f"{unit.file}: 'requires' forms a cycle: {cycle}")
        visiting.append(unit.name)
        for other in unit.requires:
            visit(units[other] if other in units else load(other, search))
        visiting.pop()
        done[unit.name] = unit
        result.append(unit)

    for unit in units.values():
        visit(unit)
    return result
