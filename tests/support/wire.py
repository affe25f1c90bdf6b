"""A raw DEALER to a daemon, speaking docs/protocol.md by hand (no proxy logic at all), and
requests made by hand: the one raw peer of the tests (the ``dealer`` fixture makes them)."""

from __future__ import annotations

import time
from typing import List, Optional

import msgpack
import zmq

from malacoda.wire import protocol as p
from tests.support import own_credentials

SIG = p.SIGNATURE


class Wire:
    """A raw DEALER to the daemon at ``port`` on loopback, with a liveness check.

    Its credentials are the ZAP PLAIN ``secret`` given, else an ``owner``'s (from the registry,
    :func:`own_credentials`: none for an open daemon), else none (a bare server); ``timeout``
    (seconds) bounds a plain ``sock.recv_multipart()``.
    """

    def __init__(self, port: int, secret: Optional[bytes] = None, owner: bool = True,
                 timeout: Optional[float] = None) -> None:
        self.ctx = zmq.Context()
        self.port = port
        self.secret, self.owner = secret, owner
        self.timeout = timeout
        self.sock = self._open()
        self.pings = 0

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.timeout is not None:
            sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        if self.secret is not None:
            sock.plain_username = b"malacoda"
            sock.plain_password = self.secret
        elif self.owner:
            own_credentials(sock, self.port)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        return sock

    def send(self, frames: List[bytes]) -> None:
        self.sock.send_multipart(frames, copy=True)

    def recv(self, timeout: float = 10.0) -> p.Reply:
        """The next reply, whichever request it answers."""
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout} s")
        return p.parse_reply(self.sock.recv_multipart())

    def nothing_more(self, wait: float = 0.3) -> bool:
        """No message arrives within ``wait`` seconds."""
        return not self.sock.poll(int(wait * 1000))

    def ask(self, frames: List[bytes], timeout: float = 10.0) -> p.Reply:
        """Send ``frames`` (a well-formed request) and return the reply to its id."""
        rid = p.parse_request(frames).rid
        self.send(frames)
        return self._reply_to(rid, timeout)

    def _reply_to(self, rid: bytes, timeout: float) -> p.Reply:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise AssertionError(f"no reply to {rid!r} within {timeout} s")
            frames = self.sock.recv_multipart()
            assert frames[0][:4] == SIG, frames[:3]
            reply = p.parse_reply(frames)
            if reply.rid == rid:
                return reply

    def alive(self, timeout: float = 10.0) -> bool:
        """The daemon answers a ping (replies to earlier garbage are skipped)."""
        self.pings += 1
        rid = b"alive-%d" % self.pings
        reply = self.ask(p.request_frames(rid, p.PING, None, None, None), timeout)
        return reply.status == p.OK and reply.value() == "pong"

    def reconnect(self) -> None:
        self.sock.close(0)
        self.sock = self._open()

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def msg(body: bytes = b"\xc0", *buffers: bytes, rid: bytes = b"r", op: str = "call",
        name: Optional[str] = "echo", timeout: Optional[int] = 10000) -> List[bytes]:
    """A request with the raw (maybe malformed) ``body`` and buffer frames, by hand."""
    envelope = msgpack.packb([rid, op, name, timeout, body], use_bin_type=True)
    return [SIG + envelope, *buffers]
