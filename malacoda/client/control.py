"""Talking to a running daemon on the command line's behalf: ping, describe, values as text.

``malacodactl call/get/set/describe`` go through :class:`~malacoda.client.proxy.Proxy` like any client;
this module adds what a command line needs on top: a ping, the daemon's description as data,
and the rule for turning an argument into a value (:func:`parse_value`).
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any, Dict

from malacoda.client import proxy as client
from malacoda.client.proxy import Proxy
from malacoda.errors import CommunicationError, ConfigError, LookupFailed
from malacoda.wire import protocol as p

#: A word starting with one of these is meant as a literal: when it does not parse, it is an error.
LITERAL_STARTS = tuple("[{(\"'")


def ping(spec: str, timeout: float) -> bool:
    """True when the daemon ``spec`` answers a ping within ``timeout`` seconds."""
    try:
        with Proxy(spec) as proxy:
            client.request(proxy, p.PING, None, None, timeout)
            return True
    except (CommunicationError, LookupFailed):
        return False


def describe(proxy: Proxy) -> Dict[str, Any]:
    """The daemon's description: ``name``, ``class``, ``doc``, ``methods`` (with ``params``
    and ``doc``), ``attributes``, ``incarnation``, ``version``."""
    return dict(client.describe(proxy))


def parse_value(text: str) -> Any:
    """A command-line word as a value: a Python literal (``ast.literal_eval``), else the string.

    ``5`` is the int 5, ``'5'`` the string '5', ``hi`` the string 'hi'. A word that starts like
    a literal (``[ { ( " '``) but does not parse is a :class:`ConfigError`, not a string.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        if text.lstrip().startswith(LITERAL_STARTS):
            reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            raise ConfigError(f"bad literal {text!r}: {reason}") from None
        return text


def to_jsonable(value: Any) -> Any:
    """``value`` with the types JSON lacks converted (see the README's CLI reference)."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and value != value:
        return None
    return value


def as_text(value: Any, as_json: bool = False) -> str:
    """A result as the CLI prints it: JSON, a string as it is, anything else as its repr."""
    if as_json:
        return json.dumps(to_jsonable(value), ensure_ascii=False)
    return value if isinstance(value, str) else repr(value)
