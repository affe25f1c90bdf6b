"""Unit files and command-line values, without processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from malacoda import ConfigError
from malacoda.client.control import as_text, parse_value
from malacoda.supervisor.units import SCHEMA, load_file, ordered
from malacoda.testing import write_unit
from tests.support import ROOT


def test_readme_documents_every_unit_key_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Unit files (reference)")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `\[?([a-z_]+)\]?` \|", section, re.M))
    assert documented == set(SCHEMA)


def test_two_keys_are_enough_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    unit = load_file(write_unit(tmp_path, "Tiny", cls="m:C", path=["../lib"]))
    assert unit.name == "Tiny" and unit.cls == "m:C"
    assert unit.path == [(tmp_path / "../lib").resolve()]
    assert unit.restart == "on-failure" and unit.start_limit == 5 and unit.workdir == tmp_path
    assert unit.stop_timeout == SCHEMA["stop_timeout"][1]


@pytest.mark.parametrize("keys, message", [
    ({"cls": "nocolon"}, "'class' must be 'module:Class'"),
    ({"cls": "m:C", "backoff": 0}, "'backoff' must be positive"),
    ({"cls": "m:C", "port": 70000}, "out of range"),
    ({"cls": "m:C", "env": {"A": 1}}, "every value of 'env' must be a string"),
    ({"cls": "m:C", "workers": True}, "'workers' must be an integer"),
    ({"cls": "m:C", "args": {"daemonize": True}}, "daemonize"),
    ({"cls": "m:C", "log_level": "LOUD"}, "not a logging level"),
    ({"cls": "m:C", "insecure": "yes"}, "'insecure' must be a boolean"),
])
def test_bad_values_name_the_file_and_key(tmp_path: Path, keys: dict, message: str) -> None:
    path = write_unit(tmp_path, "Bad", **keys)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_file(path)
    assert str(path) in str(info.value)


def test_requires_are_ordered_and_unknown_ones_named(tmp_path: Path) -> None:
    a = load_file(write_unit(tmp_path, "A", cls="m:C", requires=["B"]))
    write_unit(tmp_path, "B", cls="m:C")
    assert [u.name for u in ordered({"A": a}, [tmp_path])] == ["B", "A"]
    c = load_file(write_unit(tmp_path, "C", cls="m:C", requires=["Nope"]))
    with pytest.raises(ConfigError, match="unknown unit 'Nope'"):
        ordered({"C": c}, [tmp_path])


def test_values_are_literals_else_strings() -> None:
    assert parse_value("5") == 5 and parse_value("'5'") == "5" and parse_value("hi") == "hi"
    assert parse_value("(1, [2])") == (1, [2]) and parse_value("None") is None
    assert parse_value("hello world") == "hello world" and parse_value("3 apples") == "3 apples"
    assert parse_value("__import__('os')") == "__import__('os')"  # never evaluated
    for bad in ("[1, 2", "{'a': }", "'unclosed"):
        with pytest.raises(ConfigError, match="bad literal"):
            parse_value(bad)
    assert as_text("text") == "text" and as_text((1,)) == "(1,)" and as_text({1}, True) == "[1]"
