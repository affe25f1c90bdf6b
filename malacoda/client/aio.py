"""asyncio: an :class:`AsyncProxy` whose calls are awaited, many at once on one connection.

::

    import malacoda.aio

    async def main():
        async with malacoda.aio.get("MessageDaemon") as d:
            print(await d.insert_message("hi", timeout=2))    # CallTimeout after 2 s
            replies = await asyncio.gather(*(d.echo(i) for i in range(1000)))
            await d.set("pst_counter", 0)
            print(await d.get("pst_counter"))

No thread per call: every call of one proxy goes over one zmq.asyncio DEALER, its request
carrying an id; one reader task settles the awaiting futures by id. The rules are the
synchronous :class:`~malacoda.client.proxy.Proxy`'s, from the same code: the name is resolved the same way
(``NAME``, ``NAME:PORT``, ``NAME:HOST`` over SSH, the cluster; the blocking look-up runs in the
loop's default executor), the same credentials prove the caller is the daemon's owner, a
daemon that restarted is found again (a call that finds no daemon of that name looks it up
again until its deadline), and replies map to the same exceptions (a remote ``KeyError`` is a
``KeyError``; :class:`~malacoda.errors.CallTimeout`, :class:`~malacoda.errors.ConnectionLost`,
:class:`~malacoda.errors.Busy`, :class:`~malacoda.errors.AccessDenied`…).

A streaming method (a generator, an iterator returned, an ``async def`` generator, the
daemon's ``subscribe`` and ``watch``) is iterated with ``async for x in d.tail(100)``; see
:mod:`malacoda.client.aiostream`.

Cancelling the task that awaits a call abandons the call as a timeout does: a request not yet
sent (no connection yet) is withdrawn and never runs; a reply that comes later is dropped, and
the next call is not disturbed by it.

A proxy belongs to the event loop of its first call; used from another loop later, it opens a
new connection there. It does not travel across ``fork()``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from malacoda.address import Target, parse
from malacoda.client.aiocall import RemoteMethod
from malacoda.client.aiochannel import AsyncChannel
from malacoda.client.aiostream import AsyncStream
from malacoda.client.channel import NotSent
from malacoda.client.proxy import (
    CHECK_SIZE_ABOVE,
    LOOKUP_POLL,
    LOOKUP_POLL_MAX,
    LOOKUP_WAIT,
    MAX_REPLY,
    RESEND_ATTEMPTS,
    RESEND_PROBE,
    check_timeout,
    wire_timeout_ms,
)
from malacoda.client.replies import checked_description, remote_exception, reply_result
from malacoda.errors import (
    AccessDenied,
    AmbiguousName,
    CallTimeout,
    CommunicationError,
    ConfigError,
    ConnectionLost,
    LookupFailed,
    ProcessError,
    RequestTooLarge,
)
from malacoda.resolve import resolve
from malacoda.wire import codec
from malacoda.wire import protocol as p

__all__ = ["AsyncProxy", "AsyncStream", "get", "stop"]

log = logging.getLogger(__name__)


def get(name: str, timeout: Optional[float] = None, **ssh_args: Any) -> AsyncProxy:
    """An :class:`AsyncProxy` to the daemon ``name`` (``NAME``, ``NAME:PORT``, ``NAME:HOST``,
    ``NAME:HOST:PORT``).

    Returns at once, without I/O: the name is looked up by the first call (or ``async with``),
    which raises :class:`~malacoda.errors.LookupFailed` when no daemon of that name runs. A malformed
    name raises :class:`~malacoda.errors.ConfigError` here. ``timeout`` is the default timeout of every
    call; ``ssh_args`` go to paramiko's ``SSHClient.connect`` for a remote host.
    """
    return AsyncProxy(name, timeout=timeout, **ssh_args)


async def stop(name: str, wait: float = 10.0, **ssh_args: Any) -> None:
    """Ask the daemon ``name`` to stop, and wait up to ``wait`` seconds until it has gone.

    Raises :class:`~malacoda.errors.LookupFailed` when it is not running and
    :class:`~malacoda.errors.ProcessError` when it is still there after ``wait`` seconds.
    """
    async with AsyncProxy(name, **ssh_args) as proxy:
        incarnation = (await proxy.describe(timeout=wait))["incarnation"]
        await proxy.call("stop", timeout=wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if (await proxy.describe(timeout=0.5))["incarnation"] != incarnation:
                    return
            except (CommunicationError, LookupFailed):
                return
            await asyncio.sleep(0.05)
    raise ProcessError(f"{name} did not stop within {wait} s")


class AsyncProxy:
    """A stand-in for the daemon ``spec`` names, for asyncio code: ``await d.method(...)``.

    ``d.NAME(...)`` calls the remote method ``NAME`` (a coroutine to await); ``await
    d.get('attr')`` and ``await d.set('attr', value)`` read and write an attribute;
    ``await d.call('NAME', ...)`` calls a method whatever its name (one named ``get``, ``set``
    or ``call``); ``await d.describe()`` is the daemon's description. ``async with`` (or
    ``await d.aclose()``) closes the connection.

    ``timeout``, ``max_message`` and the SSH keywords mean what they mean for the synchronous
    :class:`~malacoda.client.proxy.Proxy`; a call's own ``timeout=`` keyword overrides the
    proxy's, except for a remote method with a ``timeout`` parameter of its own (the keyword is
    then that method's).
    Names starting with ``_`` are never reachable (:class:`~malacoda.errors.AccessDenied`).
    """

    _spec: str
    _timeout: Optional[float]
    _max_message: int
    _ssh_args: Dict[str, Any]
    _target: Optional[Target]
    _channel: Optional[AsyncChannel]
    _connecting: Optional[Tuple[asyncio.AbstractEventLoop, asyncio.Lock]]
    _description: Optional[Dict[str, Any]]
    _describing: Optional[asyncio.Task[Dict[str, Any]]]
    _incarnation: Optional[str]
    _rid_prefix: bytes
    _counter: Iterator[int]

    def __init__(self, spec: str, timeout: Optional[float] = None,
                 max_message: int = MAX_REPLY, **ssh_args: Any) -> None:
        parse(spec)  # a malformed name is the caller's error now, not at the first await
        d = self.__dict__
        d["_spec"] = spec
        d["_timeout"] = check_timeout(timeout)
        if isinstance(max_message, bool) or not isinstance(max_message, int) or max_message < 1:
            raise ConfigError(f"max_message={max_message!r}: give the largest reply accepted, "
                              "in bytes (an int of at least 1)")
        d["_max_message"] = max_message
        d["_ssh_args"] = ssh_args
        d["_target"] = None
        d["_channel"] = None
        d["_connecting"] = None  # the lock of the loop that connects
        d["_description"] = None
        d["_describing"] = None
        d["_incarnation"] = None
        d["_rid_prefix"] = os.urandom(8)
        d["_counter"] = itertools.count(1)

    # ------------------------------------------------------------------ the object's face

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        method = RemoteMethod(self, name)
        self.__dict__[name] = method  # found in the instance dict from now on
        return method

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"set remote attributes with 'await proxy.set({name!r}, value)'")

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the remote method ``name`` with ``args`` and ``kwargs``; its return value.

        ``timeout=`` (seconds) bounds this call, unless the method has a ``timeout``
        parameter of its own."""
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        timeout = self._timeout
        if self._description is None:  # once per incarnation, as the synchronous proxy does
            await self._described(timeout if not kwargs or "timeout" not in kwargs else None)
        if kwargs and "timeout" in kwargs:
            # Whose keyword is it? The description says (asked once per incarnation, within
            # the call's own timeout: a hung daemon must not hold this call longer).
            try:
                wait = check_timeout(kwargs["timeout"])
            except ConfigError:  # not a timeout: the method's own argument, or a mistake
                wait = self._timeout
            started = time.monotonic()
            if not await self._has_own_timeout(name, wait):
                timeout = check_timeout(kwargs.pop("timeout"))
                if timeout is not None:
                    timeout = max(timeout - (time.monotonic() - started), 0.001)
        return await self._request(p.CALL, name, None, timeout, codec.encode_call(args, kwargs))

    async def get(self, name: str, timeout: Any = None) -> Any:
        """The value of the remote attribute ``name``."""
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        return await self._request(p.GET, name, None, self._call_timeout(timeout))

    async def set(self, name: str, value: Any, timeout: Any = None) -> None:
        """Set the remote attribute ``name`` to ``value``."""
        if name.startswith("_"):
            raise AccessDenied(f"{name!r} is private: names starting with '_' are never reachable")
        await self._request(p.SET, name, value, self._call_timeout(timeout))

    async def describe(self, timeout: Any = None) -> Dict[str, Any]:
        """The daemon's description (docs/protocol.md): its methods with their signatures and
        docs, its attributes, its incarnation."""
        description = checked_description(
            await self._request(p.DESCRIBE, None, None, self._call_timeout(timeout)))
        self.__dict__["_description"] = description
        return description

    async def aclose(self) -> None:
        """Close the connection (a later call opens a new one)."""
        channel, target = self._channel, self._target
        self.__dict__["_channel"] = None
        self.__dict__["_target"] = None
        if channel is not None:
            channel.close()
        if target is not None:
            await asyncio.get_running_loop().run_in_executor(None, target.close)

    async def __aenter__(self) -> AsyncProxy:
        await self._connect_waiting(self._timeout, time.monotonic())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        target = self._target
        where = target.endpoint if target is not None else "not connected"
        return f"<malacoda.aio.AsyncProxy {self._spec} at {where}>"

    def __del__(self) -> None:
        # Dropped without aclose(): close the sockets, unless the channel's loop runs in
        # another thread (only that thread may touch what the loop watches).
        channel = self.__dict__.get("_channel")
        if channel is None or channel.closed:
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is channel.loop or not channel.loop.is_running():
            try:
                channel.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ plumbing

    def _call_timeout(self, timeout: Any) -> Optional[float]:
        return self._timeout if timeout is None else check_timeout(timeout)

    async def _described(self, wait: Optional[float]) -> Dict[str, Any]:
        """The daemon's description, asked once however many calls need it at once (the
        first thousand of a gather share one describe)."""
        description = self._description
        if description is not None:
            return description
        loop = asyncio.get_running_loop()
        asking = self._describing
        if asking is None or asking.done() or asking.get_loop() is not loop:
            asking = self.__dict__["_describing"] = loop.create_task(self.describe(timeout=wait))
            asking.add_done_callback(_seen)  # its failure is its awaiters'; never logged
        return await asyncio.shield(asking)

    async def _has_own_timeout(self, name: str, wait: Optional[float]) -> bool:
        """Whether the remote method ``name`` has a parameter named ``timeout``."""
        description = self._description
        if description is None:
            description = await self.describe(timeout=wait)
        info = description["methods"].get(name)
        return info is not None and any(row[0] == "timeout" for row in info.get("params", []))

    async def _connect(self) -> AsyncChannel:
        """The channel to the daemon, resolving the name (in an executor) when there is none,
        when it broke, or when its target is no longer current. One task resolves; the others
        that need a channel meanwhile wait for it and share it."""
        loop = asyncio.get_running_loop()
        lock = self._connecting
        if lock is None or lock[0] is not loop:
            lock = self.__dict__["_connecting"] = (loop, asyncio.Lock())
        async with lock[1]:
            channel, target = self._channel, self._target
            if (channel is not None and target is not None and channel.loop is loop
                    and channel.broken is None and not channel.closed and target.current()):
                return channel
            if channel is not None:
                if not channel.loop.is_closed():
                    channel.close()
                self.__dict__["_channel"] = None
            if target is not None:
                self.__dict__["_target"] = None
                loop.run_in_executor(None, target.close)
            target = await _resolve(loop, self._spec, self._ssh_args)
            try:
                channel = AsyncChannel(target.endpoint, curve=target.curve,
                                       max_message=self._max_message, plain=target.plain,
                                       owner_token=target.owner_token)
            except BaseException:
                target.close()
                raise
            self.__dict__["_target"] = target
            self.__dict__["_channel"] = channel
            return channel

    async def _connect_waiting(self, timeout: Optional[float], started: float) -> AsyncChannel:
        """:meth:`_connect`, looking the name up again while no daemon of that name runs, until
        the call's deadline (without one: ``LOOKUP_WAIT`` seconds), as the synchronous proxy
        does: a daemon its monitor restarts is found once it is back."""
        delay = LOOKUP_POLL
        while True:
            try:
                return await self._connect()
            except AmbiguousName:
                raise
            except LookupFailed as exc:
                waited = time.monotonic() - started
                left = (LOOKUP_WAIT if timeout is None else timeout) - waited
                if left <= 0:
                    raise LookupFailed(f"{exc} (looked up again for {waited:.1f} s: "
                                       "the request was not sent)") from None
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, LOOKUP_POLL_MAX)

    def _next_rid(self) -> bytes:
        return self._rid_prefix + next(self._counter).to_bytes(8, "big")

    async def _request(self, op: str, name: Optional[str], body: Any, timeout: Optional[float],
                       encoded: Optional[Tuple[bytes, List[bytes]]] = None) -> Any:
        started = time.monotonic()
        per_item = timeout  # a stream's wait for each item: the caller's whole timeout
        channel = self._channel
        target = self._target
        if (channel is None or target is None or channel.broken is not None or channel.closed
                or channel.loop is not asyncio.get_running_loop() or not target.current()):
            channel = await self._connect_waiting(timeout, started)
        rid = self._next_rid()
        timeout_ms = None
        if timeout is not None:  # what is left of it after the look-ups
            timeout = max(timeout - (time.monotonic() - started), 0.001)
            timeout_ms = wire_timeout_ms(timeout)
            started = time.monotonic()
        frames = p.request_frames(rid, op, name, body, timeout_ms, encoded)
        if op != p.DESCRIBE and sum(map(len, frames)) > CHECK_SIZE_ABOVE:
            await self._check_size(frames)
        try:
            try:
                reply = await channel.request(frames, rid, timeout)
            except NotSent:  # the link was down before the request left: resolve, send
                left = None if timeout is None else timeout - (time.monotonic() - started)
                if left is not None and left <= 0:
                    raise CallTimeout(f"no connection to {self._spec} within {timeout} s: "
                                      "the request was not sent") from None
                resolving = time.monotonic()
                channel = await self._connect_waiting(left, resolving)
                if left is not None:
                    left -= time.monotonic() - resolving
                    if left <= 0:
                        raise CallTimeout(f"no connection to {self._spec} within {timeout} s: "
                                          "the request was not sent") from None
                reply = await channel.request(frames, rid, left)
        except ConnectionLost as lost:
            reply = await self._resend(frames, rid, timeout, started, lost)
        if reply.incarnation != self._incarnation:
            if self._incarnation is not None:
                self.__dict__["_description"] = None  # its methods may have changed
            self.__dict__["_incarnation"] = reply.incarnation
        if reply.status == p.STREAM:  # the method's result is an iterator: its items follow
            return AsyncStream(self._channel or channel, rid, reply.incarnation, reply.value(),
                               per_item, f"{self._spec}.{name}", remote_exception)
        return reply_result(reply)

    async def _check_size(self, frames: List[bytes]) -> None:
        """Refuse a request larger than the daemon's ``max_message`` before sending it, as
        the synchronous proxy does."""
        description = self._description
        if description is None:
            description = await self.describe()
        limit = description.get("max_message")
        size = sum(map(len, frames))
        if type(limit) is int and size > limit:
            raise RequestTooLarge(
                f"the request is too large: {size} bytes, and {self._spec} accepts at most "
                f"{limit} (its max_message); it was not sent: send less per call, or raise the "
                "daemon's max_message")

    async def _resend(self, frames: List[bytes], rid: bytes, timeout: Optional[float],
                      started: float, lost: ConnectionLost) -> p.Reply:
        """After the connection dropped mid-request: the same frames (same id) again, only to
        the same daemon incarnation (its reply cache answers a request it already ran); else
        ``lost`` is raised: the call may or may not have run. As the synchronous proxy."""
        def remaining() -> Optional[float]:
            return None if timeout is None else timeout - (time.monotonic() - started)

        for _ in range(RESEND_ATTEMPTS):
            known, left = self._incarnation, remaining()
            if known is None or (left is not None and left <= 0):
                raise lost
            try:
                channel = await self._connect()
                probe = self._next_rid()
                ping = p.request_frames(probe, p.PING, None, None, None)
                now = (await channel.request(ping, probe, RESEND_PROBE if left is None
                                             else min(left, RESEND_PROBE))).incarnation
            except ConnectionLost:
                continue  # dropped again: try again; the first loss is what is reported
            except (CommunicationError, LookupFailed):
                raise lost from None
            if now != known:
                raise lost  # another daemon now: the call may have run in the old one
            log.info("connection to %s dropped mid-request: re-sending request %s",
                     self._spec, rid.hex())
            try:
                return await channel.request(frames, rid, remaining())
            except ConnectionLost:
                continue
        raise lost


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _resolve(loop: asyncio.AbstractEventLoop, spec: str,
                   ssh_args: Dict[str, Any]) -> Target:
    """:func:`~malacoda.resolve.resolve` in the loop's default executor (it reads files, may ask etcd or
    open an SSH connection). If the awaiting task is cancelled meanwhile, the target the
    look-up still returns is closed, not leaked (an SSH tunnel holds a thread and a socket)."""
    future = loop.run_in_executor(None, functools.partial(resolve, spec, **ssh_args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def close_late(done: asyncio.Future[Target]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().close()

        future.add_done_callback(close_late)
        raise
