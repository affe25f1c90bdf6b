"""SSH connections to other hosts, behaving as ``ssh`` does, shared by everything in a process.

:func:`connection` returns the one :class:`Connection` of this process to a host (keyed by the
resolved host name, port and user), re-established when it has dropped. Like ``ssh``:

- ``~/.ssh/config`` is honoured: ``HostName``, ``Port``, ``User``, ``IdentityFile``,
  ``UserKnownHostsFile`` and ``StrictHostKeyChecking``; keyword arguments given by the caller
  (paramiko's ``SSHClient.connect``: ``username``, ``port``, ``key_filename``, ``password``,
  ``timeout``...) win over it. The agent and the default keys (``~/.ssh/id_*``) are tried.
- Host keys are checked against ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. An
  unknown host is refused, as with ``StrictHostKeyChecking=yes``, unless new keys are accepted
  explicitly: ``accept_new_host_keys=True``, ``MALACODA_SSH_ACCEPT_NEW=1`` or
  ``StrictHostKeyChecking accept-new`` in the config; the key is then recorded in
  ``known_hosts``. A *changed* key is always refused.

Every failure is a :class:`~malacoda.errors.RemoteHostError` subclass whose message names the
host and what failed.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import paramiko

from malacoda.errors import (
    AuthenticationFailed,
    ConfigError,
    HostKeyRejected,
    HostUnreachable,
    RemoteHostError,
)
from malacoda.host.files import make_dirs
from malacoda.host.pool import Pool

log = logging.getLogger(__name__)

ACCEPT_NEW_ENV = "MALACODA_SSH_ACCEPT_NEW"
CONNECT_TIMEOUT = 10.0
KEEPALIVE = 15


@dataclass(frozen=True)
class HostConfig:
    """Where and how to reach ``alias`` once ``~/.ssh/config`` and the caller's arguments apply."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: Tuple[str, ...]
    known_hosts: Tuple[str, ...]
    accept_new: bool

    @property
    def key(self) -> Tuple[str, int, str]:
        return (self.hostname, self.port, self.user)

    @property
    def known_hosts_name(self) -> str:
        """The name ``known_hosts`` files record this host under."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "yes", "true", "on")


def host_config(alias: str, ssh_args: Dict[str, Any], accept_new: Optional[bool] = None) -> HostConfig:
    """Resolve ``alias`` through ``~/.ssh/config``; ``port`` / ``username`` / ``key_filename``
    in ``ssh_args`` take precedence (they are removed from it)."""
    path = Path("~/.ssh/config").expanduser()
    config = paramiko.SSHConfig.from_path(str(path)) if path.is_file() else paramiko.SSHConfig()
    found = config.lookup(alias)
    hostname = str(found.get("hostname", alias))
    port = int(ssh_args.pop("port", None) or found.get("port", 22))
    user = str(ssh_args.pop("username", None) or found.get("user") or getpass.getuser())
    key_filename = ssh_args.pop("key_filename", None)
    if key_filename is None:
        identity = [os.path.expanduser(f) for f in found.get("identityfile", [])]
    else:
        identity = [key_filename] if isinstance(key_filename, str) else list(key_filename)
    user_known = found.get("userknownhostsfile", "~/.ssh/known_hosts").split()
    known = [os.path.expanduser(f) for f in user_known] + ["/etc/ssh/ssh_known_hosts"]
    if accept_new is None:
        strict = str(found.get("stricthostkeychecking", "yes")).lower()
        accept_new = _truthy(os.environ.get(ACCEPT_NEW_ENV)) or strict in ("accept-new", "no", "off")
    return HostConfig(alias, hostname, port, user, tuple(identity), tuple(known), accept_new)


class _UnknownHostKey(Exception):
    pass


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname)


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Record an unknown host's key in the user's ``known_hosts`` (``accept-new``)."""

    def __init__(self, known_hosts: str) -> None:
        self.path = Path(known_hosts)

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        make_dirs(self.path.parent)  # ~/.ssh and parents 0700 whatever the umask
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("permanently added %s (%s) to %s", hostname, key.get_name(), self.path)


class Connection:
    """One SSH connection to one host, shared; :meth:`transport` reconnects when it dropped."""

    def __init__(self, config: HostConfig, connect_args: Dict[str, Any]) -> None:
        self.config = config
        self.connect_args = connect_args
        self.python: Optional[str] = None  # the remote interpreter that runs Malacoda, once known
        self._lock = threading.Lock()
        self._client: Optional[paramiko.SSHClient] = None

    def __repr__(self) -> str:
        c = self.config
        return f"<ssh {c.user}@{c.hostname}:{c.port} ({c.alias})>"

    def active_transport(self) -> Optional[paramiko.Transport]:
        """The transport if the connection is up, without reconnecting."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport if transport is not None and transport.is_active() else None

    def transport(self) -> paramiko.Transport:
        """The live transport, connecting (again) first if needed."""
        with self._lock:
            transport = self.active_transport()
            if transport is None:
                transport = self._open()
            return transport

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _open(self) -> paramiko.Transport:
        c = self.config
        if self._client is not None:
            self._client.close()
            self._client = None
        client = paramiko.SSHClient()
        for path in c.known_hosts:
            if os.path.isfile(path):
                try:
                    client.load_system_host_keys(path)
                except (OSError, paramiko.SSHException) as exc:
                    log.warning("cannot read %s: %s", path, exc)
        client.set_missing_host_key_policy(_AcceptNew(c.known_hosts[0]) if c.accept_new
                                           else _RefuseUnknown())
        args = {"timeout": CONNECT_TIMEOUT, "banner_timeout": CONNECT_TIMEOUT,
                "auth_timeout": CONNECT_TIMEOUT, **self.connect_args}
        if c.identity_files:
            args.setdefault("key_filename", [f for f in c.identity_files if os.path.exists(f)] or None)
        where = f"{c.alias} ({c.hostname}:{c.port})" if c.alias != c.hostname else \
            f"{c.alias}:{c.port}"
        try:
            client.connect(c.hostname, port=c.port, username=c.user, **args)
        except BaseException as exc:
            client.close()
            raise _translate(exc, c, where) from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)
        self._client = client
        log.debug("connected to %s", where)
        return transport

    def run(self, command: str, timeout: Optional[float] = 60.0,
            on_output: Optional[Callable[[bytes], None]] = None) -> Tuple[int, bytes, bytes]:
        """Run ``command`` (a shell command line) there; ``(exit status, stdout, stderr)``.

        With ``on_output``, stdout is handed to it chunk by chunk as it arrives (and not
        returned); ``timeout`` then bounds each wait for more output (None: no bound).
        """
        for attempt in (1, 2):
            transport = self.transport()
            try:
                chan = transport.open_session(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError):
                if attempt == 2:
                    raise RemoteHostError(f"{self.config.alias}: the SSH connection dropped",
                                          self.config.alias) from None
                self.close()  # a dead connection not noticed yet: open a new one
                continue
            try:
                chan.settimeout(timeout)
                chan.exec_command(command)
                return _collect(chan, timeout, on_output)
            except socket.timeout:
                raise RemoteHostError(f"{self.config.alias}: no answer to {command!r} within "
                                      f"{timeout} s", self.config.alias) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RemoteHostError(f"{self.config.alias}: the SSH connection dropped while "
                                      f"running a command: {exc}", self.config.alias) from None
            finally:
                with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                    chan.close()
        raise AssertionError("unreachable")


def _collect(chan: paramiko.Channel, timeout: Optional[float],
             on_output: Optional[Callable[[bytes], None]]) -> Tuple[int, bytes, bytes]:
    err = bytearray()
    reader = threading.Thread(target=lambda: err.extend(chan.makefile_stderr("rb").read()),
                              daemon=True)
    reader.start()
    out = bytearray()
    while True:
        chunk = chan.recv(1 << 16)
        if not chunk:
            break
        if on_output is not None:
            on_output(chunk)
        else:
            out += chunk
    reader.join(timeout)
    return chan.recv_exit_status(), bytes(out), bytes(err)


def _translate(exc: BaseException, c: HostConfig, where: str) -> BaseException:
    host = c.alias
    if isinstance(exc, TypeError):
        return ConfigError(f"{host}: invalid SSH option: {exc}")
    if isinstance(exc, UnicodeError):  # the idna codec: a HostName such as '..' in ~/.ssh/config
        return HostUnreachable(f"{host}: {c.hostname!r} is not a host name", host)
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(f"{host}: unknown host (not in DNS, /etc/hosts or ~/.ssh/config)", host)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes == {errno.ECONNREFUSED}:
            return HostUnreachable(f"{where}: connection refused (is sshd running there?)", host)
        return HostUnreachable(f"{where}: cannot connect: {exc}", host)
    if isinstance(exc, _UnknownHostKey):
        return HostKeyRejected(
            f"{where}: host key unknown (not in known_hosts): check it with 'ssh {c.alias}' "
            f"once, or accept new keys explicitly ({ACCEPT_NEW_ENV}=1)", host)
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyRejected(
            f"{where}: the host key has CHANGED since it was recorded in known_hosts; refusing "
            f"(if the change is expected: ssh-keygen -R '{c.known_hosts_name}')", host)
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthenticationFailed(
            f"{where}: SSH authentication failed for user {c.user!r} (agent, "
            f"{', '.join(c.identity_files) or 'default keys'})", host)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return HostUnreachable(f"{where}: no answer within {CONNECT_TIMEOUT:.0f} s", host)
    if isinstance(exc, OSError):
        return HostUnreachable(f"{where}: cannot connect: {exc.strerror or exc}", host)
    if isinstance(exc, (paramiko.SSHException, EOFError)):
        return RemoteHostError(f"{where}: SSH failed: {exc or type(exc).__name__}", host)
    return exc


#: This process's SSH connections, one per host, port and user (not counted: they stay).
_connections: Pool[Tuple[str, int, str], Connection] = Pool(close=Connection.close)


def connection(alias: str, accept_new: Optional[bool] = None, **ssh_args: Any) -> Connection:
    """This process's shared connection to ``alias`` (connecting lazily, on first use).

    The first caller's ``ssh_args`` (paramiko ``SSHClient.connect`` keywords) are the ones
    used for a given host, port and user.
    """
    args = dict(ssh_args)
    config = host_config(alias, args, accept_new)
    return _connections.get(config.key, lambda: Connection(config, args),
                            fits=lambda conn: conn.config == config)


def close_all() -> List[str]:
    """Close every shared SSH connection; returns the hosts that were connected."""
    return [conn.config.alias for conn in _connections.close_all()]
