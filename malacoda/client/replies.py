"""What a daemon's replies become on the client side: a reply's value or the error its status
stands for (:func:`reply_result`, one table), the exception of an ERROR reply rebuilt
(:func:`remote_exception`), a description checked (:func:`checked_description`) and the
signature of a remote method (:func:`signature`). No I/O here.
"""

from __future__ import annotations

import builtins
import inspect
from typing import Any, Dict, List, Optional, Type, cast

from malacoda.errors import (
    AccessDenied,
    Busy,
    MalacodaError,
    ProtocolError,
    RemoteError,
    ReplyLost,
    remote_error_class,
)
from malacoda.wire import protocol as p

_NO_DEFAULT = inspect.Parameter.empty

#: The error a reply's status raises, with the reply's message (OK returns the value, ERROR
#: raises the remote exception, any other status is a ProtocolError naming it).
_STATUS_ERRORS: Dict[int, Type[MalacodaError]] = {
    p.BUSY: Busy, p.GONE: ReplyLost, p.DENIED: AccessDenied}


def reply_result(reply: p.Reply) -> Any:
    """The value an OK ``reply`` carries; else the error its status stands for, raised."""
    value = reply.value()
    status = reply.status
    if status == p.OK:
        return value
    if status == p.ERROR:
        raise remote_exception(value)
    message = value.get("message", "") if isinstance(value, dict) else str(value)
    error = _STATUS_ERRORS.get(status)
    if error is not None:
        raise error(message)
    raise ProtocolError(f"{p.STATUS_NAMES.get(status, status)}: {message}")


class _RemoteTraceback(Exception):
    """Carries the remote traceback text as the ``__cause__`` of a re-raised exception."""

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + (self.args[0] if self.args else "")


class _Default:
    """Shows a remote parameter's default as the daemon wrote it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def remote_exception(body: Any) -> BaseException:
    """Rebuild the exception an ERROR reply describes (built-in types as themselves)."""
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error reply: {body!r}")
    type_name = str(body.get("type", "Exception"))
    module = str(body.get("module", ""))
    message = str(body.get("message", ""))
    text = str(body.get("traceback", ""))
    exc: Optional[BaseException] = None
    remote_type = f"{module}.{type_name}" if module else type_name
    cls = getattr(builtins, type_name, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        args = body.get("args")
        try:
            exc = cls(*args) if isinstance(args, list) else cls(message)
        except Exception:
            exc = cls(message)
    if exc is None:
        family = getattr(builtins, str(body.get("builtin", "")), None)
        kind: type = RemoteError
        if isinstance(family, type) and issubclass(family, Exception):
            kind = remote_error_class(family)
        exc = cast(BaseException, kind(remote_type, message, text))
    if isinstance(exc, OSError):  # errno, strerror, filename(2) travel beside the args
        for attr in ("errno", "strerror", "filename", "filename2"):
            if attr in body:
                try:
                    setattr(exc, attr, body[attr])
                except (TypeError, AttributeError):
                    pass
    exc.remote_type = remote_type  # type: ignore[attr-defined]
    exc.remote_traceback = text  # type: ignore[attr-defined]
    if text:
        exc.__cause__ = _RemoteTraceback(text)
    return exc


class _Text(str):
    """A remote annotation: the text the daemon's source has (``int``, ``List[int]``), shown
    without quotes in a signature; it is a ``str`` (nothing is evaluated here)."""

    def __repr__(self) -> str:
        return str(self)


def signature(params: List[Any], annotations: Optional[Dict[str, Any]] = None) -> inspect.Signature:
    """A remote method's signature from its description's ``params`` and ``annotations``, with
    the ``timeout=`` keyword every proxy method takes (unless it has a parameter of that name)."""
    parameters = []
    has_timeout = False
    notes = annotations if isinstance(annotations, dict) else {}

    def annotation(key: str) -> Any:
        text = notes.get(key)
        return _Text(text) if isinstance(text, str) else _NO_DEFAULT

    for name, kind, default in params:
        kind = inspect._ParameterKind(kind)
        value = _NO_DEFAULT if default is None else _Default(default)
        parameters.append(inspect.Parameter(name, kind, default=value, annotation=annotation(name)))
        has_timeout = has_timeout or name == "timeout"
    if not has_timeout:
        timeout = inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=None)
        if parameters and parameters[-1].kind == inspect.Parameter.VAR_KEYWORD:
            parameters.insert(len(parameters) - 1, timeout)
        else:
            parameters.append(timeout)
    return inspect.Signature(parameters, return_annotation=annotation("return"))


def checked_description(value: Any) -> Dict[str, Any]:
    """``value`` if it is a description as docs/protocol.md gives it; else ProtocolError (a
    hostile or broken daemon's reply must not surface as a TypeError in ``dir()``)."""
    def bad(what: str) -> ProtocolError:
        return ProtocolError(f"malformed describe reply: {what}")

    if not isinstance(value, dict):
        raise bad(f"a {type(value).__name__}, not a map")
    methods, attributes = value.get("methods"), value.get("attributes")
    if not isinstance(methods, dict) or not isinstance(attributes, list):
        raise bad("'methods' must be a map and 'attributes' an array")
    if not all(type(a) is str for a in attributes):
        raise bad("'attributes' must hold str names")
    if not (value.get("doc") is None or type(value.get("doc")) is str):
        raise bad("'doc' must be a str or nil")
    for name, info in methods.items():
        if type(name) is not str or not isinstance(info, dict):
            raise bad(f"method {name!r} must be a str name with a map")
        params, doc = info.get("params", []), info.get("doc")
        if not (doc is None or type(doc) is str) or not isinstance(params, list):
            raise bad(f"method {name!r}: 'doc' must be a str or nil and 'params' an array")
        for row in params:
            if (not isinstance(row, list) or len(row) != 3 or type(row[0]) is not str
                    or type(row[1]) is not int or not 0 <= row[1] <= 4
                    or not (row[2] is None or type(row[2]) is str)):
                raise bad(f"method {name!r}: a parameter must be [str name, int kind 0-4, "
                          "str default or nil]")
        try:
            signature(params)
        except (TypeError, ValueError) as exc:
            raise bad(f"method {name!r}: {exc}") from None
    return value
