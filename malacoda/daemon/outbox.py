"""How a reply of the daemon's socket (:class:`~.server.Server`, of which :class:`Outbox` is a
base class) is made and reaches the socket.

Only the thread that owns the ROUTER may send on it. A reply made anywhere else (a call that
outlived its leadership, a queued call's worker, the event loop's ``async def`` calls) goes
through this thread's own PUSH socket to the inproc PULL socket, and the socket's owner
forwards it (:meth:`_forward`), keeping the count of replies on their way (``_late``) that
tells it to poll both sockets. An empty frame there is a stream's doorbell, not a reply.

A reply's frames: a remote traceback only for the owner's connections of an ``open`` daemon
(``owner_prefix``), and a result that cannot be encoded becomes an ERROR reply saying so.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

import zmq

from malacoda.daemon.dispatch import Dispatcher
from malacoda.daemon.streams import StreamHub
from malacoda.wire import protocol as p
from malacoda.wire.frames import recv_frames, send_frames, send_routed

_INPROC = "inproc://malacoda-replies-{}"


class Outbox:
    """The reply path: reply frames, each thread's PUSH socket, and forwarding to the ROUTER."""

    # The server's own:
    dispatcher: Dispatcher
    streams: StreamHub
    owner_prefix: Optional[bytes]
    _mu: threading.Lock
    _ctx: Optional[zmq.Context]
    _late: int

    def _init_outbox(self) -> None:
        self._local = threading.local()
        self._inproc = _INPROC.format(id(self))

    def _push(self) -> zmq.Socket:
        push = getattr(self._local, "push", None)
        if push is None:
            assert self._ctx is not None
            push = self._ctx.socket(zmq.PUSH)
            push.connect(self._inproc)
            self._local.push = push
        return push

    def _close_push(self) -> None:
        """Close this thread's PUSH socket, if it has one (before the context ends)."""
        push = getattr(self._local, "push", None)
        if push is not None:
            push.close(linger=1000)
            self._local.push = None

    def _forward(self, router: zmq.Socket, pull: zmq.Socket) -> None:
        forwarded = 0
        while True:
            try:
                frames = recv_frames(pull, zmq.NOBLOCK)
            except zmq.Again:
                break
            if not frames[0]:  # a stream's doorbell (a routing id is never empty)
                self.streams.drain(lambda identity, f: send_routed(router, identity, f))
                continue
            send_frames(router, frames)
            forwarded += 1
        if forwarded:
            with self._mu:
                self._late -= forwarded

    def _reply_to(self, request: p.Request, identity: bytes, status: int,
                  body: Any) -> List[bytes]:
        """The reply frames of ``request`` with ``(status, body)``."""
        if (status != p.OK and self.owner_prefix is not None and isinstance(body, dict)
                and body.get("traceback") and not identity.startswith(self.owner_prefix)):
            body = {**body, "traceback": ""}
        return self._reply(request.rid, status, body)

    def _reply(self, rid: bytes, status: int, body: Any) -> List[bytes]:
        incarnation = self.dispatcher.incarnation
        try:
            return p.reply_frames(rid, status, incarnation, body)
        except Exception as exc:  # the result could not be encoded
            if status == p.OK:
                error = TypeError(f"the result cannot be sent: {exc}")
            else:
                error = TypeError(f"the error cannot be sent: {exc}")
            return p.reply_frames(rid, p.ERROR, incarnation, p.error_body(error))
