"""Shared fixtures: a private MALACODA_HOME per test and daemon processes cleaned up by pid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

# The fixtures users get (malacoda.testing) are the ones our own tests use.
from malacoda.testing import malacoda_home, malacoda_unit  # noqa: F401
from tests.support import ROOT, DaemonProcess, Processes, wait_for
from tests.support.ctl import Ctl
from tests.support.wire import Wire


@pytest.fixture
def home(malacoda_home: Path) -> Path:  # noqa: F811 - the fixture, by name
    """A temporary MALACODA_HOME for this test (and the processes it starts): the same one
    :mod:`malacoda.testing` gives users."""
    return malacoda_home


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.cleanup()


def _env(home: Path) -> dict:
    env = dict(os.environ)
    env["MALACODA_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def ctl(home: Path, tmp_path: Path) -> Iterator[Ctl]:
    """malacodactl with this test's MALACODA_HOME and a unit folder of its own; every process
    it started is killed at the end."""
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o700)
    runner = Ctl(home, conf)
    yield runner
    runner.cleanup()


@pytest.fixture
def dealer() -> Iterator[Callable[..., Wire]]:
    """``dealer(port, **options)``: a raw DEALER (:class:`tests.support.wire.Wire`) to the
    daemon or server at ``port``, closed at the end of the test."""
    made: List[Wire] = []

    def make(port: int, **options: Any) -> Wire:
        made.append(Wire(port, **options))
        return made[-1]

    yield make
    for wire in made:
        wire.close()


@pytest.fixture
def start_daemon(home: Path, processes: Processes) -> Callable[..., DaemonProcess]:
    """Start ``tests.support.daemons.<cls>(**kwargs)`` in a new process and wait until it is registered.

    ``module`` names another module of daemon classes; ``prelude`` is code run first.
    """
    from malacoda.host.registry import Registry

    def start(cls: str = "TestDaemon", wait: bool = True, module: str = "tests.support.daemons",
              prelude: str = "", **kwargs: Any) -> DaemonProcess:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        code = f"{prelude}\nimport datetime; from {module} import {cls}; {cls}({args})"
        proc = processes.add(DaemonProcess(code, _env(home)))
        if wait:
            name = kwargs.get("name") or cls

            def ready() -> bool:
                if not proc.alive():
                    raise AssertionError(f"daemon exited early:\n{proc.output()}")
                entry, state = Registry().read(name)
                return state == "running" and entry is not None and entry.pid == proc.pid

            wait_for(ready, what=f"{name} to register")
        return proc

    return start


from tests.support.sshd import web1  # noqa: E402,F401  (the sshd fixture, for the remote tests)
