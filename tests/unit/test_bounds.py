"""Bounded work in the codec and the dispatcher: hash collisions, new pst attributes."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from malacoda.daemon.dispatch import Dispatcher
from malacoda.errors import ProtocolError
from malacoda.wire import codec
from malacoda.wire import protocol as p

P = 2**61 - 1  # integers k * P all hash alike (to 0)


def round_trip(value):
    return codec.decode(*codec.encode(value), max_items=codec.MAX_REQUEST_ITEMS)


@pytest.mark.parametrize("value", [
    {k * P for k in range(5000)},
    frozenset(k * P for k in range(5000)),
    {k * P: None for k in range(5000)},
    {(k * P, 1): k for k in range(5000)},  # tuple keys of colliding items collide too
    {Decimal(k * P) for k in range(2000)},
    {uuid.UUID(int=k * P) for k in range(2000)},
    # The budget is for the whole value (of a body large enough to hold many collisions: one
    # under 4 KiB holds too few to cost anything, and is not checked as a whole).
    ["x" * 5000, *({k * P for k in range(40)} for _ in range(3))],
    ({k * P: 1 for k in range(5000)},),  # inside an extension type
], ids=["set", "frozenset", "map", "tuple-keys", "decimal", "uuid", "budget-shared", "nested"])
def test_colliding_keys_are_refused(value):
    with pytest.raises(ProtocolError, match="collide"):
        round_trip(value)


@pytest.mark.parametrize("value", [
    {-1, -2},  # hash(-1) == hash(-2)
    {0, P, 2 * P},
    {k * P for k in range(60)},
    set(range(10000)),
    {i: str(i) for i in range(10000)},
    {f"k{i}": i for i in range(10000)},
    {1.5: 1, 2: 2, "x": 3, b"y": 4, (1, 2): 5, None: 6},
    [{"a": {i: i}} for i in range(1000)],
], ids=["-1-2", "three", "sixty", "ints", "int-keys", "str-keys", "mixed", "many-small"])
def test_ordinary_sets_and_maps_round_trip(value):
    assert round_trip(value) == value


def test_maps_with_other_keys_are_still_counted():
    body, buffers = codec.encode([{i: None for i in range(2000)} for _ in range(3)])
    with pytest.raises(ProtocolError, match="container items"):
        codec.decode(body, buffers, max_items=5000)
    assert len(codec.decode(body, buffers, max_items=7000)) == 3


class Plain:
    pst_counter = 0

    def __init__(self):
        self.pst_data = 1


class Creates(Plain):
    _allow_new_pst = True


def _set(target, name, value):
    body, buffers = codec.encode(value)
    request = p.Request(b"r" * 8, p.SET, name, None, body, buffers)
    return Dispatcher(target, "i", "v").handle(request)[0]


def test_set_creates_no_new_pst_attribute_unless_the_class_allows_it():
    target = Plain()
    assert _set(target, "pst_evil", 1) == p.DENIED
    assert not hasattr(target, "pst_evil")
    assert _set(target, "pst_data", 2) == p.OK and target.pst_data == 2
    assert _set(target, "pst_counter", 3) == p.OK and target.pst_counter == 3
    assert _set(target, "other", 4) == p.OK  # only pst* names are kept from a set
    allowed = Creates()
    assert _set(allowed, "pst_new", 5) == p.OK and allowed.pst_new == 5
