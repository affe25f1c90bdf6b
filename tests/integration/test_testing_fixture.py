"""malacoda.testing as a user's conftest uses it: requirements started, inline paths resolved
against the test file (issue 14, fix on the way)."""

from __future__ import annotations

from pathlib import Path

import malacoda
from malacoda.testing import write_unit


def test_the_fixture_starts_what_a_unit_requires(malacoda_unit, tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    write_unit(tmp_path / "units", "Needed", cls="tests.support.daemons:TestDaemon", path=[root])
    d = malacoda_unit(name="Needing", cls="tests.support.daemons:TestDaemon", path=[root],
                      requires=["Needed"])
    assert d.echo("x") == "x"
    needed = malacoda.get("Needed", timeout=5)
    assert needed.echo("needed") == "needed"


def test_an_inline_relative_path_is_the_test_files_folder(malacoda_unit) -> None:
    d = malacoda_unit(name="Beside", cls="fixture_daemon:Beside", path=["."])
    assert d.where() == "beside the test file"
