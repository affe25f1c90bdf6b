"""One pst attribute that cannot be saved loses nothing else (issue 12, "Nothing lost"): the
others are saved, the bad one keeps its last saved value, status names it and stop says so."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Dict

import pytest

from malacoda.host.paths import Paths
from malacoda.storage import from_config
from tests.support import wait_for
from tests.support.ctl import Ctl


def check_partial_save(config: Dict[str, Any]) -> None:
    storage = from_config("Partial", Paths.default(), config)
    assert storage.save({"pst_list": [1, 2, 3], "pst_sock": "first"})
    assert storage.unsaved == {}
    with socket.socket() as sock:
        assert storage.save({"pst_list": [4], "pst_sock": sock, "pst_new": 5})
        assert list(storage.unsaved) == ["pst_sock"]
        assert "socket" in storage.unsaved["pst_sock"]
        assert not storage.save({"pst_list": [4], "pst_sock": sock, "pst_new": 5})  # unchanged
    storage.close()
    again = from_config("Partial", Paths.default(), config)
    assert again.load() == {"pst_list": [4], "pst_sock": "first", "pst_new": 5}
    assert again.save({"pst_list": [4], "pst_sock": "fine again", "pst_new": 5})
    assert again.unsaved == {}
    assert again.load()["pst_sock"] == "fine again"
    again.close()


@pytest.mark.parametrize("class_name", ["PstFileStorage", "PstSqliteStorage"])
def test_one_unsaveable_attribute_keeps_the_others_and_its_last_value(home: Path,
                                                                      class_name: str) -> None:
    check_partial_save({"class_name": class_name})


def test_an_attribute_never_saved_is_left_out(home: Path) -> None:
    storage = from_config("Partial", Paths.default(), None)
    with socket.socket() as sock:
        storage.save({"pst_list": [1], "pst_sock": sock})
    assert from_config("Partial", Paths.default(), None).load() == {"pst_list": [1]}


def test_status_names_the_unsaved_attribute_and_stop_fails(ctl: Ctl) -> None:
    """The issue's case under malacodactl: pst_sock = socket.socket() in a running daemon."""
    from malacoda.supervisor.runner import PST_INCOMPLETE

    ctl.unit("Sock", cls="tests.support.daemons:PstSocket", pst={"frequency": 0.2})
    ctl.ok("start", "Sock")
    ctl.ok("set", "Sock", "pst_list", "[1, 2, 3]")
    ctl.ok("call", "Sock", "open_socket")
    wait_for(lambda: "pst_sock" in ctl.status("Sock")["pst"], what="status to name pst_sock")
    row = ctl.status("Sock")
    assert row["state"] == "running" and "cannot be saved" in row["pst"]
    table = ctl("status", "Sock").stdout
    assert "pst_sock" in table, table
    result = ctl("stop", "Sock")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "pst_sock" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert ctl.status("Sock")["last_exit"] == {"code": PST_INCOMPLETE}
    ctl.ok("start", "Sock")
    assert ctl.ok("get", "Sock", "pst_list", "--json") == "[1, 2, 3]\n"
    assert ctl.ok("get", "Sock", "pst_sock", "--json") == "null\n"  # its last saved value
    assert ctl.status("Sock")["pst"] == ""
    ctl.ok("stop", "Sock")
