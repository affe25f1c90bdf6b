"""malacoda.terminal: control characters made visible, nothing else changed."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from malacoda.cli.terminal import visible, visible_json

ACTING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                    "\ud800-\udfff]")


def test_the_forms() -> None:
    assert visible("\x1b]0;t\x07\x1b[2J\r[monitor] x ready") == \
        "\\x1b]0;t\\x07\\x1b[2J\\r[monitor] x ready"
    assert visible("a\tb\nc") == "a\tb\\nc"
    assert visible("a\tb\r\nc", newlines=True) == "a\tb\\r\nc"
    assert visible("\x00\x7f\x9b\u202e\u2066\udc80") == "\\x00\\x7f\\x9b\\u202e\\u2066\\udc80"
    plain = "héllo wörld — 日本 \\x1b"
    assert visible(plain) is plain  # nothing to change: not even a copy


@given(st.text())
def test_nothing_that_acts_is_left_and_the_rest_is_kept(text: str) -> None:
    line = visible(text)
    assert not ACTING.search(line)
    block = visible(text, newlines=True)
    assert not ACTING.search(block.replace("\n", ""))
    assert block.count("\n") == text.count("\n")
    if not ACTING.search(text):
        assert line == text


@given(st.recursive(st.none() | st.text() | st.integers(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_json_stays_json_with_the_same_value(value: object) -> None:
    text = visible_json(json.dumps(value, ensure_ascii=False, indent=2))
    assert not ACTING.search(text.replace("\n", ""))
    assert json.loads(text) == value
