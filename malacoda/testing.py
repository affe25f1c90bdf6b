"""pytest fixtures: your units under the real host supervisor, in a temporary ``MALACODA_HOME``.

Make them available in your ``conftest.py``::

    from malacoda.testing import malacoda_home, malacoda_unit  # noqa: F401

and use them::

    def test_insert(malacoda_unit):
        d = malacoda_unit("conf/MessageDaemon.toml")          # a unit file, as it is
        assert d.insert_message("hi") == "Message received!"

    def test_other(malacoda_unit):
        d = malacoda_unit(name="Echo", cls="mypkg.echo:Echo", args={"size": 3})   # keys

``malacoda_unit`` starts the unit exactly as ``malacodactl start`` does (host supervisor, log file,
restart policy, the units it ``requires`` first: looked up beside the unit file, then along the
unit search path), returns once it serves, and yields a :class:`~malacoda.proxy.Proxy`; every
unit it started is stopped when the test ends, requirements last. The temporary home is the
test's own. Relative ``path`` entries and ``workdir`` given inline (``path=["."]``) are the
test file's folder, as they would be for a unit file written beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from malacoda.client.proxy import Proxy, close
from malacoda.host.paths import Paths
from malacoda.supervisor.supervise import end_supervisor, start, stop
from malacoda.supervisor.units import Unit, load_file, ordered, search_path


def write_unit(folder: Path, name: str, **keys: Any) -> Path:
    """Write ``<folder>/<name>.toml`` from keyword values (``cls`` stands for ``class``)."""
    if "cls" in keys:
        keys["class"] = keys.pop("cls")
    plain = {k: v for k, v in keys.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in keys.items() if isinstance(v, dict)}
    lines = [f"{key} = {_toml_value(value)}" for key, value in plain.items()]
    for key, table in tables.items():
        lines.append(f"\n[{key}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} in a unit file")


@pytest.fixture
def malacoda_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary ``MALACODA_HOME`` for this test and every process it starts."""
    home = tmp_path / "malacoda-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("MALACODA_HOME", str(home))
    return home


@pytest.fixture
def malacoda_unit(malacoda_home: Path, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., Proxy]]:
    """Start a unit under the real host supervisor and get a proxy to it (see the module docstring)."""
    started: List[Unit] = []
    proxies: List[Proxy] = []
    paths = Paths.default()
    here = Path(str(request.node.fspath)).resolve().parent  # the test file's folder

    def start_unit(unit_file: Optional[str] = None, name: Optional[str] = None,
                   timeout: float = 10.0, **keys: Any) -> Proxy:
        if unit_file is None:
            if not name or "cls" not in keys:
                raise TypeError("give a unit file, or name= and cls= (and other unit keys)")
            if "path" in keys:
                keys["path"] = [str(here / p) for p in keys["path"]]
            if "workdir" in keys:
                keys["workdir"] = str(here / keys["workdir"])
            unit_file = str(write_unit(tmp_path / "units", name, **keys))
        unit = load_file(Path(unit_file))
        search = [unit.file.parent, *search_path(paths=paths)]
        for needed in ordered({unit.name: unit}, search):
            if all(u.name != needed.name for u in started):
                start(needed, paths)
                started.append(needed)
        proxy = Proxy(unit.name, timeout=timeout)
        proxies.append(proxy)
        return proxy

    yield start_unit
    for proxy in proxies:
        close(proxy)
    for unit in reversed(started):
        stop(unit.name, paths, unit.stop_timeout)
    end_supervisor(paths)  # its MALACODA_HOME goes with this test
