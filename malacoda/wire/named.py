"""Types registered by name: the codec's extension type 13 (see :mod:`malacoda.wire.codec`).

A class travels as ``[name, data]`` only once both ends registered it under the same name; a
name nobody registered is an error on receipt, never imported. This is the one table of them,
which the encoder looks up by class and the decoder by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class NamedType:
    name: str
    cls: type
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


by_type: Dict[type, NamedType] = {}
by_name: Dict[str, NamedType] = {}


def register_type(
    cls: type,
    name: Optional[str] = None,
    to_data: Optional[Callable[[Any], Any]] = None,
    from_data: Optional[Callable[[Any], Any]] = None,
) -> type:
    """Allow ``cls`` on the wire under ``name`` (default: ``module.QualName``).

    Both ends must register the same name. A dataclass needs nothing more: its fields travel as a
    map and it is rebuilt with its constructor. Other classes give ``to_data`` (object → codec
    value) and ``from_data`` (codec value → object). Usable as a class decorator.
    """
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    if to_data is None or from_data is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass: give to_data and from_data")
        fields = [f.name for f in dataclasses.fields(cls)]

        def to_data(obj: Any, _fields: List[str] = fields) -> Any:
            return {f: getattr(obj, f) for f in _fields}

        def from_data(data: Any, _cls: type = cls) -> Any:
            return _cls(**data)

    entry = NamedType(name, cls, to_data, from_data)
    by_type[cls] = entry
    by_name[name] = entry
    return cls
