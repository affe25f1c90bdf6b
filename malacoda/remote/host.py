"""Daemons on other hosts: ``NAME:HOST`` (and ``NAME:HOST:PORT``) over SSH.

The lookup runs Malacoda itself on the remote host, through the process's shared SSH
connection to it (:mod:`malacoda.remote.ssh`): ``malacoda.remote_lookup NAME``, run as ``python3 -m``
would but without the remote home (sshd's current folder) on ``sys.path`` (:mod:`malacoda.host.launch`),
reads the host's own registry with its liveness checks. The calls then travel through a tunnel in that
same connection (:mod:`malacoda.remote.tunnel`) to the daemon's loopback port: the daemon never
listens on a public address for this, and SSH has already authenticated the user.

Options, as keywords of ``malacoda.get(name, **kwargs)`` (all others go to paramiko's
``SSHClient.connect``) or environment variables:

``accept_new_host_keys`` / ``MALACODA_SSH_ACCEPT_NEW=1``
    record the key of a host that is not in ``known_hosts`` yet instead of refusing it.
``remote_python`` / ``MALACODA_REMOTE_PYTHON``
    the Python that runs Malacoda there. Default: the same path as this process's interpreter
    (a venv at the same place on every host), then ``python3`` on sshd's minimal ``PATH``.
``remote_env`` (a dict) / ``MALACODA_REMOTE_HOME``
    environment for Malacoda there; ``MALACODA_REMOTE_HOME`` sets ``MALACODA_HOME`` there, for
    daemons started with a ``MALACODA_HOME`` of their own.
``direct=True``
    look up over SSH but connect straight to ``HOST:PORT``: for a daemon bound to a public
    address with CURVE (see :mod:`malacoda.security`), to spare the tunnel's hop.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from malacoda.address import Spec, Target, connect_address, is_loopback, is_wildcard, tcp_endpoint
from malacoda.errors import ConfigError, LookupFailed, NotInstalled, RemoteHostError
from malacoda.host.launch import python_command
from malacoda.host.pool import Pool
from malacoda.host.registry import Entry, EntryState
from malacoda.remote.ssh import Connection, connection
from malacoda.remote.tunnel import Tunnel
from malacoda.security import client_curve, with_auth

PYTHON_ENV = "MALACODA_REMOTE_PYTHON"
HOME_ENV = "MALACODA_REMOTE_HOME"
LOOKUP_TIMEOUT = 30.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RemoteHost:
    """Malacoda on one remote host, through this process's shared SSH connection to it."""

    def __init__(self, host: str, **ssh_args: Any) -> None:
        accept_new = ssh_args.pop("accept_new_host_keys", None)
        python = ssh_args.pop("remote_python", None) or os.environ.get(PYTHON_ENV)
        env: Dict[str, str] = {}
        if os.environ.get(HOME_ENV):
            env["MALACODA_HOME"] = os.environ[HOME_ENV]
        env.update(ssh_args.pop("remote_env", None) or {})
        for key in env:
            if not _ENV_NAME.match(key):
                raise ConfigError(f"remote_env: {key!r} is not a valid environment variable name")
        self.direct = bool(ssh_args.pop("direct", False))
        self.host = host
        self.pythons: List[str] = [python] if python else [sys.executable, "python3"]
        self.env = env
        self.connection: Connection = connection(host, accept_new=accept_new, **ssh_args)

    def command(self, python: str, module: str, args: List[str]) -> str:
        """The shell command line that runs ``module args`` there (see :func:`shell_command`)."""
        return shell_command(python, module, args, self.env)

    def run_module(self, module: str, args: List[str], timeout: Optional[float] = LOOKUP_TIMEOUT,
                   on_output: Optional[Callable[[bytes], None]] = None) -> Tuple[int, bytes, bytes]:
        """Run ``python -m module args`` with the first remote Python that has Malacoda.

        ``on_output`` receives stdout as it arrives (see :meth:`Connection.run`).
        """
        conn = self.connection
        candidates = [conn.python] if conn.python in self.pythons else self.pythons
        for python in candidates:
            assert python is not None
            status, out, err = conn.run(self.command(python, module, args), timeout, on_output)
            if _missing(status, err):
                continue
            conn.python = python
            return status, out, err
        tried = ", ".join(candidates)  # type: ignore[arg-type]
        raise NotInstalled(
            f"{self.host}: Malacoda is not installed there (tried {tried}): install it on that "
            f"host, or name a Python that has it with {PYTHON_ENV} (remote_python=)", self.host)

    def malacodactl(self, args: List[str], timeout: Optional[float] = LOOKUP_TIMEOUT,
                    on_output: Optional[Callable[[bytes], None]] = None) -> Tuple[int, bytes, bytes]:
        """Run ``malacodactl args`` there (as ``python -m malacoda``); its status, stdout, stderr."""
        return self.run_module("malacoda", args, timeout, on_output)

    def lookup(self, name: str) -> Tuple[Optional[Entry], str]:
        """``(entry, state)`` for ``name`` from the remote host's registry."""
        status, out, err = self.run_module("malacoda.remote_lookup", [name])
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
            state = answer["state"]
        except (ValueError, KeyError, IndexError, UnicodeDecodeError):
            detail = (err.decode(errors="replace").strip().splitlines() or [f"exit {status}"])[-1]
            raise RemoteHostError(f"{self.host}: the lookup of {name!r} failed: {detail}",
                                  self.host) from None
        raw = answer.get("entry")
        return (Entry.from_dict(raw) if raw else None), state


def shell_command(python: str, module: str, args: List[str], env: Dict[str, str]) -> str:
    """The shell command line that runs ``python -m module args`` with ``env`` exported, as
    :mod:`malacoda.host.launch` runs it: sshd starts it in the remote home, which must not supply
    modules."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    argv = " ".join(shlex.quote(a) for a in python_command(module, args, python))
    return f"export {exports}; exec {argv}" if exports else f"exec {argv}"


def _missing(status: int, err: bytes) -> bool:
    """True when the remote command failed for want of the interpreter or of Malacoda."""
    if status in (126, 127):
        return True
    return status != 0 and re.search(rb"No module named '?malacoda", err) is not None


#: Shared tunnels, one per (SSH connection, remote address, port), counted by user.
_tunnels: Pool[Tuple[int, str, int], Tunnel] = Pool(close=Tunnel.close)


def acquire_tunnel(conn: Connection, address: str, port: int) -> Tuple[Tunnel, Callable[[], None]]:
    """The shared tunnel through ``conn`` to ``address:port``, and the function that releases it."""
    return _tunnels.acquire((id(conn), address, port), lambda: Tunnel(conn, address, port),
                            fits=lambda tunnel: tunnel.connection is conn)


def find(spec: Spec, **ssh_args: Any) -> Target:
    """The remote backend of :mod:`malacoda.resolve`: look ``spec`` up on its host over SSH and
    return a target reached through a tunnel."""
    assert spec.host is not None
    host = RemoteHost(spec.host, **ssh_args)
    entry, state = host.lookup(spec.name)
    if state == EntryState.RUNNING and entry is not None and spec.port in (None, entry.port):
        address, port = connect_address(entry.address), entry.port
    elif spec.port is not None:
        # The original's NAME:HOST:PORT: that port on that host, registered or not.
        entry, address, port = None, "127.0.0.1", spec.port
    else:
        raise LookupFailed(f"no daemon named {spec.name!r} is running on {spec.host}")
    curve = client_curve(entry.server_key if entry else None, str(spec))
    if host.direct:
        if curve is None or is_loopback(entry.address if entry else address):
            raise ConfigError(f"{spec}: direct=True needs a daemon bound to a public address "
                              "with CURVE; this one is reachable through SSH only")
        endpoint = tcp_endpoint(host.connection.config.hostname
                                if entry and is_wildcard(entry.address) else address, port)
        return Target(endpoint, spec.name, entry, host=spec.host, curve=curve)
    tunnel, release = acquire_tunnel(host.connection, address, port)
    # The entry came over SSH, authenticated as its owner: its secret (if the host's Malacoda
    # is recent enough to have one) lets us through the daemon's owner-only check.
    return with_auth(Target(tunnel.endpoint, spec.name, entry, host=spec.host, curve=curve,
                            close=release), entry)


def close_all() -> List[str]:
    """Close every tunnel and shared SSH connection of this process; returns the hosts."""
    from malacoda.remote.ssh import close_all as close_connections

    _tunnels.close_all()
    return close_connections()
