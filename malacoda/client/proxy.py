"""The client side: a :class:`Proxy` that feels like the daemon object itself.

::

    d = malacoda.get("MessageDaemon")
    d.insert_message("hi", timeout=2)   # a remote call; TimeoutError subclass after 2 s
    d.pst_counter                       # a remote attribute read
    d.pst_counter = 0                   # a remote attribute write
    help(d.insert_message)              # the remote signature and docstring

A proxy is bound to a *name*: when its daemon restarts (new pid, maybe a new port), the next
call resolves the name again and goes through. One proxy may be used by many threads at once.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from malacoda.address import Target
from malacoda.client.channel import NotSent
from malacoda.client.replies import checked_description, remote_exception, reply_result, signature
from malacoda.client.stream_channel import StreamChannel
from malacoda.client.streaming import RemoteIterator
from malacoda.errors import (
    AccessDenied,
    AmbiguousName,
    CallTimeout,
    CommunicationError,
    ConfigError,
    ConnectionLost,
    LookupFailed,
    MalacodaError,
    RequestTooLarge,
)
from malacoda.resolve import resolve
from malacoda.wire import codec
from malacoda.wire import protocol as p

RESEND_ATTEMPTS = 3  # re-sends of one request after dropped connections
RESEND_PROBE = 2.0  # seconds to wait for the ping that tells which daemon answers now
#: How long a call without a timeout looks its daemon's name up again while none of that name
#: runs (a restart in progress); a call with a timeout does so until its deadline.
LOOKUP_WAIT = 20.0
#: A request larger than this is checked against the daemon's max_message (from describe).
CHECK_SIZE_ABOVE = 64 << 10
LOOKUP_POLL, LOOKUP_POLL_MAX = 0.02, 0.25  # seconds between those look-ups (doubling)
#: The most milliseconds a request says its caller waits (2**32 - 1, about 49 days): a longer
#: wait is sent as this (the daemon then drops a request it cannot start within 49 days).
WIRE_TIMEOUT_MS_MAX = 2**32 - 1
#: The largest reply a proxy accepts by default (all its frames together), like a daemon's
#: largest request: a hostile or broken daemon cannot make its clients hold more.
MAX_REPLY = 64 << 20
#: The most seconds ``proxy.__doc__`` (``help(proxy)``, IPython's ``proxy?``) waits for the
#: daemon's description: then None, not the proxy's whole wait (20 s for a hung daemon).
DOC_WAIT = 2.0

log = logging.getLogger(__name__)

#: How many times this process is a fork's child: a proxy made in a parent compares it on each
#: call (a global read, not a getpid call) and starts afresh in the child.
_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)



class _DaemonDoc:
    """``Proxy.__doc__``: on the class, the Proxy class's own docs (``help(malacoda.Proxy)``);
    on a proxy, the daemon's class docstring (``proxy.__doc__``, ``help(proxy)``,
    ``inspect.getdoc(proxy)``), from its description. None when the daemon cannot be asked
    within :data:`DOC_WAIT`: introspection (help, IPython) must not fail, nor hang, for it."""

    def __init__(self, own: Optional[str]) -> None:
        self.own = own

    def __get__(self, proxy: Optional[Proxy], owner: Optional[type] = None) -> Optional[str]:
        if proxy is None:
            return self.own
        try:
            doc = proxy._describe(wait=DOC_WAIT).get("doc")
        except MalacodaError:
            return None
        return doc if isinstance(doc, str) else None

    def __set__(self, proxy: Proxy, value: Any) -> None:
        raise AccessDenied("'__doc__' is private: names starting with '_' are never reachable")


def check_timeout(value: Any) -> Optional[float]:
    """A call timeout as seconds, or None (wait for ever: ``None`` or ``float('inf')``).

    Raises :class:`~.errors.ConfigError` naming the value for anything else than a number of
    seconds more than 0: a call with no time at all to run would still be sent and run.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"timeout={value!r}: a timeout is a number of seconds (or None)")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float: for ever, or less than 0
        seconds = math.inf if cast(Any, value) > 0 else -math.inf
    if math.isnan(seconds):
        raise ConfigError(f"timeout={value!r}: a timeout is a number of seconds, not NaN")
    if seconds <= 0:
        raise ConfigError(f"timeout={value!r}: a timeout must be more than 0 seconds "
                          "(None waits for ever)")
    return None if math.isinf(seconds) else seconds


def wire_timeout_ms(timeout: float) -> int:
    """A call's remaining ``timeout`` (seconds) as the request's timeout field: at least 1 ms
    (0 would be dropped), at most :data:`WIRE_TIMEOUT_MS_MAX`."""
    return max(1, min(int(timeout * 1000), WIRE_TIMEOUT_MS_MAX))


class Proxy:
    """A stand-in for the daemon ``spec`` names (``NAME[:HOST][:PORT]``).

    ``timeout`` is the default for every call (None: wait as long as the call takes, failing
    with :class:`~.errors.ConnectionLost` if the daemon dies meanwhile); a call's own
    ``timeout=`` keyword overrides it, except for a remote method that has a ``timeout``
    parameter of its own: the keyword is then that method's. A timeout is a number of seconds
    more than 0; ``None`` or ``float('inf')`` waits for ever; anything else raises
    :class:`~.errors.ConfigError`. ``max_message`` (bytes, default 64 MiB) is the largest reply
    accepted: a larger one fails the call with :class:`~.errors.ProtocolError` (a single frame
    over it drops the connection), and a reply decodes into at most ``max_message / 64``
    container items. Every malformed reply is a :class:`~.errors.ProtocolError`. Other
    keywords go to the SSH connection of a remote spec (paramiko's ``SSHClient.connect``).

    On a proxy, ``__doc__`` (and so ``help(proxy)``) is the daemon's class docstring, and each
    ``dir(proxy)`` asks the daemon again: attributes it made since are listed.
    """

    __doc__ = _DaemonDoc(__doc__)  # type: ignore[assignment]

    def __init__(self, spec: str, timeout: Optional[float] = None,
                 max_message: int = MAX_REPLY, **ssh_args: Any) -> None:
        d = self.__dict__
        d["_spec"] = spec
        d["_timeout"] = check_timeout(timeout)
        if isinstance(max_message, bool) or not isinstance(max_message, int) or max_message < 1:
            raise ConfigError(f"max_message={max_message!r}: give the largest reply accepted, "
                              "in bytes (an int of at least 1)")
        d["_max_message"] = max_message
        d["_ssh_args"] = ssh_args
        d["_lock"] = threading.Lock()
        d["_target"] = None
        d["_channel"] = None
        d["_description"] = None
        d["_methods"] = {}
        d["_incarnation"] = None
        d["_rid_prefix"] = os.urandom(8)
        d["_counter"] = itertools.count(1)
        d["_generation"] = _fork_generation
        self._connect()

    # ------------------------------------------------------------------ plumbing

    def _start_afresh_after_fork(self) -> None:
        """In a fork's child: forget the parent's connection without closing it (its ZeroMQ
        sockets, tunnel and locks belong to the parent), and take request ids of its own:
        the parent's would be answered from the daemon's reply cache with the parent's replies.
        """
        d = self.__dict__
        channel = d["_channel"]
        if channel is not None:
            channel.abandon()  # else its __del__ would close the parent's sockets
        d["_generation"] = _fork_generation
        d["_lock"] = threading.Lock()
        d["_channel"] = None
        d["_target"] = None
        d["_rid_prefix"] = os.urandom(8)
        d["_counter"] = itertools.count(1)

    def _connect(self) -> StreamChannel:
        if self._generation != _fork_generation:
            self._start_afresh_after_fork()
        with self._lock:
            channel = self._channel
            if channel is not None and channel.poll_broken() is None and self._target.current():
                return channel
            if channel is not None:
                channel.close()
                self._target.close()
            target: Target = resolve(self._spec, **self._ssh_args)
            channel = StreamChannel(target.endpoint, curve=target.curve,
                                    max_message=self._max_message,
                                    plain=target.plain, owner_token=target.owner_token)
            self.__dict__["_target"] = target
            self.__dict__["_channel"] = channel
            return channel

    def _connect_waiting(self, timeout: Optional[float], started: float) -> StreamChannel:
        """:meth:`_connect`, looking the name up again while no daemon of that name runs, until
        the call's deadline (without one: :data:`LOOKUP_WAIT` seconds): a daemon its monitor
        restarts (after ``kill -9``, in its backoff) is found once it is back."""
        delay = LOOKUP_POLL
        while True:
            try:
                return self._connect()
            except AmbiguousName:
                raise
            except LookupFailed as exc:
                waited = time.monotonic() - started
                left = (LOOKUP_WAIT if timeout is None else timeout) - waited
                if left <= 0:
                    raise LookupFailed(f"{exc} (looked up again for {waited:.1f} s: "
                                       "the request was not sent)") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, LOOKUP_POLL_MAX)

    def _request(self, op: str, name: Optional[str], body: Any, timeout: Optional[float],
                 encoded: Optional[Tuple[bytes, List[bytes]]] = None) -> Any:
        started = time.monotonic()
        per_item = timeout  # a stream's wait for each item: the caller's whole timeout
        channel = self._channel
        if (channel is None or self._generation != _fork_generation or channel.broken is not None
                or not self._target.current()):
            channel = self._connect_waiting(timeout, started)
        rid = self._rid_prefix + next(self._counter).to_bytes(8, "big")
        timeout_ms = None
        if timeout is not None:  # what is left of it after the look-ups; 0 ms would be dropped
            timeout = max(timeout - (time.monotonic() - started), 0.001)
            timeout_ms = wire_timeout_ms(timeout)
            started = time.monotonic()
        frames = p.request_frames(rid, op, name, body, timeout_ms, encoded)
        if op != p.DESCRIBE and sum(map(len, frames)) > CHECK_SIZE_ABOVE:
            self._check_size(frames)
        try:
            try:
                reply = channel.request(frames, rid, timeout)
            except NotSent:  # the link was down before the request left: resolve, send
                left = None if timeout is None else timeout - (time.monotonic() - started)
                if left is not None and left <= 0:
                    raise CallTimeout(f"no connection to {self._spec} within {timeout} s: "
                                      "the request was not sent") from None
                resolving = time.monotonic()
                channel = self._connect_waiting(left, resolving)
                if left is not None:
                    left -= time.monotonic() - resolving
                    if left <= 0:
                        raise CallTimeout(f"no connection to {self._spec} within {timeout} s: "
                                          "the request was not sent") from None
                reply = channel.request(frames, rid, left)
        except ConnectionLost as lost:
            reply = self._resend(frames, rid, timeout, started, lost)
        if reply.incarnation != self._incarnation:
            if self._incarnation is not None:
                self._forget_methods()
            self.__dict__["_incarnation"] = reply.incarnation
        if reply.status == p.STREAM:  # the method's result is an iterator: its items follow
            return RemoteIterator(self._channel or channel, rid, reply.incarnation, reply.value(),
                                  per_item, f"{self._spec}.{name}", self, remote_exception)
        return reply_result(reply)

    def _check_size(self, frames: List[bytes]) -> None:
        """Refuse a request larger than the daemon's ``max_message`` before sending it (the
        daemon would drop the connection, and the call would look lost). The limit comes from
        ``describe``, asked once per daemon incarnation; an older daemon does not tell it."""
        limit = self._describe().get("max_message")
        size = sum(map(len, frames))
        if type(limit) is int and size > limit:
            raise RequestTooLarge(
                f"the request is too large: {size} bytes, and {self._spec} accepts at most "
                f"{limit} (its max_message); it was not sent: send less per call, or raise the "
                "daemon's max_message")

    def _resend(self, frames: List[bytes], rid: bytes, timeout: Optional[float], started: float,
                lost: ConnectionLost) -> p.Reply:
        """After the connection dropped mid-request: send the same frames (same id) again.

        Only to the same daemon incarnation, whose reply cache answers a request it already ran
        instead of running it again; a restarted daemon (or none) re-raises ``lost``: the call
        may or may not have run, and running it again could run it twice.
        """
        def remaining() -> Optional[float]:
            return None if timeout is None else timeout - (time.monotonic() - started)

        for _ in range(RESEND_ATTEMPTS):
            known, left = self._incarnation, remaining()
            if known is None or (left is not None and left <= 0):
                raise lost
            try:
                channel = self._connect()
                probe = self._rid_prefix + next(self._counter).to_bytes(8, "big")
                ping = p.request_frames(probe, p.PING, None, None, None)
                now = channel.request(ping, probe, RESEND_PROBE if left is None
                                      else min(left, RESEND_PROBE)).incarnation
            except ConnectionLost:
                continue  # dropped again: try again; the first loss is what is reported
            except (CommunicationError, LookupFailed):
                raise lost from None
            if now != known:
                raise lost  # another daemon now: the call may have run in the old one
            log.info("connection to %s dropped mid-request: re-sending request %s",
                     self._spec, rid.hex())
            try:
                return channel.request(frames, rid, remaining())
            except ConnectionLost:
                continue
        raise lost

    def _forget_methods(self) -> None:
        """The daemon restarted: its methods may have changed."""
        d = self.__dict__
        for name in d["_methods"]:
            d.pop(name, None)
        d["_description"] = None
        d["_methods"] = {}

    def _describe(self, fresh: bool = False, wait: Optional[float] = None) -> Dict[str, Any]:
        """The daemon's description, asked once (methods change only with the incarnation),
        or again when ``fresh`` (attributes come and go); ``wait``: at most that long."""
        description = None if fresh else self._description
        if description is None:
            timeout = self._timeout if wait is None else min(self._timeout or wait, wait)
            description = checked_description(
                self._request(p.DESCRIBE, None, None, timeout))
            self.__dict__["_description"] = description
        return description

    def _method(self, name: str, info: Dict[str, Any]) -> Callable[..., Any]:
        proxy = self
        # A method with a parameter of that name gets its timeout= keyword itself.
        own_timeout = any(row[0] == "timeout" for row in info.get("params", []))

        def method(*args: Any, **kwargs: Any) -> Any:
            timeout = proxy._timeout
            if kwargs and "timeout" in kwargs and not own_timeout:
                timeout = check_timeout(kwargs.pop("timeout"))
            return proxy._request(p.CALL, name, None, timeout, codec.encode_call(args, kwargs))

        method.__name__ = method.__qualname__ = name
        method.__doc__ = info.get("doc")
        method.__signature__ = signature(  # type: ignore[attr-defined]
            info.get("params", []), info.get("annotations"))
        method.__module__ = "malacoda.remote_method"
        return method

    def _close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._generation != _fork_generation:
            self._start_afresh_after_fork()  # the parent's connection is the parent's to close
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._target.close()
            self.__dict__["_channel"] = None

    # ------------------------------------------------------------------ the object's face

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        description = self._describe()
        info = description["methods"].get(name)
        if info is not None:
            method = self._methods.get(name)
            if method is None:
                method = self._methods[name] = self._method(name, info)
                # Found in the instance dict from now on: no __getattr__ on the next call.
                self.__dict__[name] = method
            return method
        return self._request(p.GET, name, None, self._timeout)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        self._request(p.SET, name, value, self._timeout)

    def __delattr__(self, name: str) -> None:
        raise AccessDenied("attributes of a daemon cannot be deleted through a proxy")

    def __dir__(self) -> List[str]:
        description = self._describe(fresh=True)  # attributes made since the last describe too
        return sorted([*description["methods"], *description["attributes"]])

    def __repr__(self) -> str:
        target = self._target
        where = target.endpoint if target is not None else "not connected"
        return f"<malacoda.Proxy {self._spec} at {where}>"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass


# ---------------------------------------------------------------------- Malacoda's own use
# A proxy's attributes are its daemon's names (``d.stop`` is the daemon's stop), so what the
# rest of Malacoda asks of a proxy besides them is a function here, not a method: no name of
# Malacoda's can hide one of the daemon's, and the methods behind these stay private.


def request(proxy: Proxy, op: str, name: Optional[str], body: Any, timeout: Optional[float],
            encoded: Optional[Tuple[bytes, List[bytes]]] = None) -> Any:
    """One request of the operation ``op`` (``protocol.CALL``, ``GET``, ``PING``…) through
    ``proxy``, as its calls go: the reply's value, or the error its status stands for."""
    return proxy._request(op, name, body, timeout, encoded)


def describe(proxy: Proxy, fresh: bool = False, wait: Optional[float] = None) -> Dict[str, Any]:
    """The daemon's description, asked once per incarnation (again when ``fresh``); ``wait``:
    at most that long. Shared by the proxy: do not change it."""
    return proxy._describe(fresh, wait)


def close(proxy: Proxy) -> None:
    """Close ``proxy``'s connection (a later call through it opens a new one)."""
    proxy._close()
