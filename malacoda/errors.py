"""Malacoda's exceptions: one root, subclasses by failure domain.

Callers branch on these types, never on message text::

    MalacodaError
    ├── CommunicationError        talking to a daemon failed
    │   ├── CallTimeout           (also a TimeoutError) no reply before the deadline
    │   ├── ConnectionLost        (also a ConnectionError) the daemon went away mid-call
    │   ├── Busy                  the daemon's workers and queue are full
    │   ├── ProtocolError         a frame that does not follow docs/protocol.md
    │   │   ├── RequestTooLarge   a request over the daemon's max_message (not sent)
    │   │   └── UnsupportedVersion  a message in a protocol version this end does not speak
    │   ├── ClusterError          the cluster registry (etcd) is unreachable or refused a request
    │   └── RemoteHostError       another host could not be used (``host`` names it)
    │       ├── HostUnreachable       unknown host name, connection refused, no route
    │       ├── HostKeyRejected       its SSH host key is unknown or has changed
    │       ├── AuthenticationFailed  SSH refused our user and keys
    │       └── NotInstalled          no Malacoda to run there
    ├── RemoteError               the remote code raised a non built-in exception (also an
    │                             instance of its nearest built-in ancestor: ValueError…)
    ├── AccessDenied              (also an AttributeError) a private or forbidden name
    ├── LookupFailed              (also a LookupError) no daemon of that name is running
    │   └── AmbiguousName         that name runs on several hosts of the cluster
    ├── AlreadyRunning            a daemon of that name already runs on this host
    ├── ConfigError               a unit file, a pst_config or an argument is wrong
    ├── StateError                persistent state cannot be read or written
    └── ProcessError              a daemon could not be started or stopped
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence


class MalacodaError(Exception):
    """The root of every error Malacoda raises on purpose.

    ``remote_type`` is None: the error is Malacoda's own, here (a remote exception, built-in
    or not, has the remote type's qualified name there).
    """

    remote_type: Optional[str] = None


class CommunicationError(MalacodaError):
    """Talking to a daemon failed; the call may or may not have run."""


class CallTimeout(CommunicationError, TimeoutError):
    """No reply arrived before the call's timeout. The proxy stays usable."""


class ConnectionLost(CommunicationError, ConnectionError):
    """The daemon went away (died, or its connection dropped) while a call waited."""


class ReplyLost(ConnectionLost):
    """The call ran, but its connection dropped before the reply came and the daemon had not
    kept that reply for a re-send (too large, or pushed out by newer ones): the result is lost.
    The call did not run twice."""


class Busy(CommunicationError):
    """The daemon's worker pool and its bounded queue are full; try again later."""


class ProtocolError(CommunicationError):
    """A message that does not follow the wire protocol (docs/protocol.md)."""


class RequestTooLarge(ProtocolError):
    """A request larger than the daemon accepts (its ``max_message``, learnt from ``describe``):
    it was not sent. Send less per call (split it), or raise the daemon's ``max_message``."""


class UnsupportedVersion(ProtocolError):
    """A message with Malacoda's signature but a protocol version this end does not speak (a
    daemon answers it with the status BAD_VERSION)."""


class RemoteHostError(CommunicationError):
    """Another host could not be reached or used; ``host`` is the name as the user gave it."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class HostUnreachable(RemoteHostError, ConnectionError):
    """The host name is unknown, or its SSH port refused or did not answer."""


class HostKeyRejected(RemoteHostError):
    """The host's SSH key is not in ``known_hosts`` (unknown host) or differs from it (changed)."""


class AuthenticationFailed(RemoteHostError):
    """The SSH server accepted none of our credentials (agent, keys, password)."""


class NotInstalled(RemoteHostError):
    """Malacoda (or a Python that can import it) is not installed on the remote host."""


class RemoteError(MalacodaError):
    """The remote method raised an exception that has no built-in equivalent here.

    ``remote_type`` is the remote exception's qualified type name and
    ``remote_traceback`` the traceback text as the daemon saw it.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


_families: Dict[type, type] = {}


def remote_error_class(builtin: type) -> type:
    """``RemoteError`` that is also an instance of the built-in exception type ``builtin``
    (``except ValueError`` catches a remote ``json.JSONDecodeError``); made once per type.
    A type that cannot be made from a message alone (``UnicodeDecodeError``) gives its
    nearest ancestor that can (``UnicodeError``); nothing (``Exception``): ``RemoteError``."""
    found = _families.get(builtin)
    if found is None:
        found = RemoteError
        for base in builtin.__mro__:
            if base in (Exception, BaseException) or not issubclass(base, Exception):
                break
            kind = type(f"Remote{base.__name__}", (RemoteError, base), {"__module__": __name__})
            try:
                kind("x", "y")
            except Exception:
                continue
            found = kind
            break
        _families[builtin] = found
    return found


class AccessDenied(MalacodaError, AttributeError):
    """A name that is never reachable through a proxy (private, dotted or reserved)."""


class LookupFailed(MalacodaError, LookupError):
    """No running daemon answers to that name."""


class AmbiguousName(LookupFailed):
    """Daemons of that name run on several hosts of the cluster; ``hosts`` lists them.

    Name one as ``NAME:HOST``.
    """

    def __init__(self, message: str, hosts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.hosts = list(hosts)


class AlreadyRunning(MalacodaError):
    """A daemon of that name already runs on this host; ``pid`` names it."""

    def __init__(self, message: str, pid: Optional[int] = None) -> None:
        super().__init__(message)
        self.pid = pid


class ConfigError(MalacodaError):
    """A unit file, a ``pst_config`` or another setting is wrong."""


class StateError(MalacodaError):
    """Persistent (pst) state could not be read or written."""


class ProcessError(MalacodaError):
    """A daemon could not be started, stopped or supervised."""


class ClusterError(CommunicationError):
    """The cluster registry (etcd) is unreachable or refused a request; the message names it.

    A communication error: the daemon may well run, but where could not be learnt.
    """
