"""Daemons on other hosts: ``NAME:HOST`` over SSH. (Arrives with the remote-hosts issue.)"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .resolve import Spec, Target


def resolve_remote(spec: Spec, **ssh_args: Any) -> Target:
    raise ConfigError(f"{spec}: remote hosts are not supported yet")
