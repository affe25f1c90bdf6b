"""What a request may do to a daemon object: the operation table and the access rules.

Pure: no sockets, no threads. :class:`Dispatcher` turns a decoded :class:`~malacoda.wire.protocol.Request`
into ``(status, body)``. The rules, the same for every operation:

- a name must be an identifier that does not start with ``_``: no private names, no dunders,
  no dotted paths (supervisord CVE-2017-11610 walked a dotted name to ``os.system``);
- only methods defined on the daemon's class can be called — not callables stored in attributes;
  a method is what the class defines as one: a function, a static or class method, or a
  decorated one (``functools.lru_cache``, ``singledispatchmethod``, ``partialmethod``…);
- names the base class reserves (``name``, ``running``, ``finished``) are read-only, and a
  method cannot be replaced by ``set``;
- ``set`` creates no new ``pst*`` attribute (those are saved and loaded at every start: a
  caller could plant state the daemon never asked for) unless the daemon's class says
  ``_allow_new_pst = True``; setting an existing one is allowed.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from malacoda.errors import AccessDenied, ProtocolError
from malacoda.wire import codec
from malacoda.wire import protocol as p

log = logging.getLogger(__name__)

Outcome = Tuple[int, Any]


def _public_identifier(name: Any) -> bool:
    return type(name) is str and name.isidentifier() and not name.startswith("_")


def _is_method(cls: type, name: str) -> bool:
    """Whether ``name`` is a method of ``cls``: a function, a static or class method, a
    decorator's wrapper of a function (``lru_cache``: it has ``__wrapped__``), or a non-data
    descriptor that yields a callable (``singledispatchmethod``, ``partialmethod``). Not a
    class (no instance of an arbitrary class made through a proxy), not a property, not a
    callable stored in an instance, and not any other callable the class happens to hold
    (``system = os.system`` is no method of the daemon's)."""
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return False
    if isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr):
        return True
    if isinstance(attr, type):
        return False
    kind = type(attr)
    if hasattr(kind, "__get__") and not (hasattr(kind, "__set__") or hasattr(kind, "__delete__")):
        try:
            return callable(attr.__get__(None, cls))
        except Exception:
            return False
    return callable(attr) and hasattr(attr, "__wrapped__")


def _param_row(param: inspect.Parameter) -> List[Any]:
    default = None if param.default is inspect.Parameter.empty else repr(param.default)
    return [param.name, int(param.kind), default]


def _annotation_text(annotation: Any) -> str:
    """An annotation as its source reads: a string one (``from __future__ import
    annotations``) as it is, an object as ``inspect`` shows it (``int``, ``List[int]``)."""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _annotations(signature: inspect.Signature) -> Dict[str, str]:
    """``{parameter: text, "return": text}`` of the annotated ones (``return`` is a keyword:
    no parameter has that name)."""
    found = {name: _annotation_text(param.annotation)
             for name, param in signature.parameters.items()
             if param.annotation is not inspect.Parameter.empty}
    if signature.return_annotation is not inspect.Signature.empty:
        found["return"] = _annotation_text(signature.return_annotation)
    return found


def failure(exc: Exception) -> Outcome:
    """The reply to a request that raised ``exc`` (called in its ``except`` block): DENIED for
    :class:`~.errors.AccessDenied`, BAD_REQUEST for :class:`~.errors.ProtocolError`, else ERROR
    with the remote code's own exception and its traceback. For the calls of plain methods and
    of ``async def`` ones (:mod:`malacoda.daemon.aioloop`) alike."""
    if isinstance(exc, AccessDenied):
        return p.DENIED, p.error_body(exc)
    if isinstance(exc, ProtocolError):
        return p.BAD_REQUEST, p.error_body(exc)
    return p.ERROR, p.error_body(exc, traceback.format_exc())


class Dispatcher:
    """Runs the operations of the protocol on ``target``."""

    def __init__(
        self,
        target: Any,
        incarnation: str,
        version: str,
        read_only: FrozenSet[str] = frozenset(),
        hidden: FrozenSet[str] = frozenset(),
    ) -> None:
        self.target = target
        self.incarnation = incarnation
        self.version = version
        self.read_only = read_only
        self.hidden = hidden
        self.max_items = codec.MAX_REQUEST_ITEMS  # container items in one request body
        self.max_message: Optional[int] = None  # the server's, told in describe when set
        self._cls = type(target)
        self.new_pst = bool(getattr(self._cls, "_allow_new_pst", False))
        # Names that passed the access check and that _is_method said yes to (a cache).
        self._known_methods: Set[str] = set()
        self.table: Dict[str, Callable[[p.Request], Outcome]] = {
            p.CALL: self.call,
            p.GET: self.get,
            p.SET: self.set,
            p.DESCRIBE: self.describe,
        }

    def handle(self, request: p.Request) -> Outcome:
        """Run one request; every failure becomes a status and an error map."""
        operation = self.table.get(request.op)
        if operation is None:
            exc: BaseException = ProtocolError(f"unknown operation {request.op!r}")
            return p.UNKNOWN_OP, p.error_body(exc)
        try:
            return operation(request)
        except Exception as exc:
            return failure(exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            # Raised by the remote code itself (signals reach only the main thread, which
            # serves no calls): the caller gets it back; the daemon does not stop for it.
            return p.ERROR, p.error_body(exc, traceback.format_exc())

    def _check(self, name: Optional[str]) -> str:
        if not _public_identifier(name) or name in self.hidden:
            raise AccessDenied(f"{name!r} is not reachable: private, dotted or reserved names "
                               "cannot be used through a proxy")
        assert name is not None
        return name

    def call(self, request: p.Request) -> Outcome:
        name = request.name
        if name not in self._known_methods:
            name = self._check(name)
            if _is_method(self._cls, name):
                self._known_methods.add(name)  # bounded by the class: only real methods
            elif hasattr(self.target, name):
                raise TypeError(f"{name!r} is an attribute, not a method: use get/set")
            else:
                raise AttributeError(f"{self._cls.__name__!r} daemon has no method {name!r}")
        body = codec.decode(request.body, request.buffers, self.max_items)
        if (type(body) is not list or len(body) != 2 or type(body[0]) is not list
                or type(body[1]) is not dict
                or (body[1] and not all(type(k) is str for k in body[1]))):
            raise ProtocolError("a call body is [args, kwargs] with str keyword names")
        return p.OK, getattr(self.target, name)(*body[0], **body[1])

    def get(self, request: p.Request) -> Outcome:
        name = self._check(request.name)
        if _is_method(self._cls, name):
            raise TypeError(f"{name!r} is a method: call it")
        return p.OK, getattr(self.target, name)

    def set(self, request: p.Request) -> Outcome:
        name = self._check(request.name)
        if name in self.read_only or _is_method(self._cls, name):
            raise AccessDenied(f"{name!r} is read-only through a proxy")
        if name.startswith("pst") and not self.new_pst and not hasattr(self.target, name):
            raise AccessDenied(f"{name!r} does not exist: a new pst attribute (saved and loaded "
                               "at every start) is made by the daemon itself, not through a "
                               "proxy (a daemon class allows it with _allow_new_pst = True)")
        setattr(self.target, name, codec.decode(request.body, request.buffers, self.max_items))
        return p.OK, None

    def describe(self, request: p.Request) -> Outcome:
        return p.OK, self.description()

    def description(self) -> Dict[str, Any]:
        """The public face of the daemon: methods with signatures and docs, and attributes."""
        methods: Dict[str, Any] = {}
        attributes: List[str] = []
        names = set(dir(self._cls)) | set(vars(self.target))
        for name in sorted(names):
            if not _public_identifier(name) or name in self.hidden:
                continue
            if _is_method(self._cls, name):
                method = getattr(self.target, name)
                annotations: Dict[str, str] = {}
                try:
                    signature = inspect.signature(method)
                    params = [_param_row(x) for x in signature.parameters.values()]
                    annotations = _annotations(signature)
                except (TypeError, ValueError):
                    params = [["args", 2, None], ["kwargs", 4, None]]
                methods[name] = {"doc": inspect.getdoc(method), "params": params}
                if inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method):
                    methods[name]["stream"] = True  # a key more: older clients skip it
                if annotations:  # a key more, only when there are some: older clients skip it
                    methods[name]["annotations"] = annotations
            else:
                attributes.append(name)
        found = {
            "name": getattr(self.target, "name", self._cls.__name__),
            "class": f"{self._cls.__module__}.{self._cls.__qualname__}",
            "doc": inspect.getdoc(self._cls),
            "incarnation": self.incarnation,
            "version": self.version,
            "methods": methods,
            "attributes": attributes,
            "extensions": {"streams": p.STREAMS_VERSION},
        }
        if self.max_message is not None:  # a key more: older clients skip it
            found["max_message"] = self.max_message
        return found
