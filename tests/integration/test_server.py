"""The daemon's socket server in-process (real ZeroMQ sockets): who holds the socket when."""

from __future__ import annotations

import threading

import zmq

from malacoda.daemon.dispatch import Dispatcher
from malacoda.daemon.server import Server
from malacoda.wire import protocol as p
from tests.support import wait_for
from tests.support.wire import Wire


class TwoCalls:
    """``a`` runs until ``b`` starts; ``b`` runs until the test lets it go."""

    def __init__(self) -> None:
        self.a_thread = 0
        self.a_started, self.b_started = threading.Event(), threading.Event()
        self.a_released, self.b_released = threading.Event(), threading.Event()

    def a(self) -> str:
        self.a_thread = threading.get_ident()
        self.a_started.set()
        self.a_released.wait(20)
        return "a"

    def b(self) -> str:
        self.b_started.set()
        self.a_released.set()  # a ends on its thread while b runs on the new leader
        self.b_released.wait(20)
        return "b"


def test_a_call_ending_after_a_take_over_leaves_the_new_leaders_call_watched(dealer):
    """A call that ends on a thread which lost the socket must not mark the new leader idle:
    the next slow call on the new leader is then taken over too, and a ping answered while
    it runs (the bug: the ping waited for the slow call to end)."""
    target = TwoCalls()
    server = Server(Dispatcher(target, "incarnation", "1"), workers=4)
    port = server.start()

    def call(s: Wire, rid: bytes, op: str, name: str = "") -> None:
        s.send(p.request_frames(rid, op, name or None, [[], {}] if op == p.CALL else None, None))

    try:
        sa, sb, sc = (dealer(port, timeout=5, owner=False) for _ in range(3))
        call(sa, b"A", p.CALL, "a")
        target.a_started.wait(10)
        wait_for(lambda: server._leader not in (None, target.a_thread),
                 what="the standby to take the socket over from call a")
        call(sb, b"B", p.CALL, "b")
        assert target.b_started.wait(10)
        assert p.parse_reply(sa.sock.recv_multipart()).value() == "a"
        call(sc, b"P", p.PING)
        reply = p.parse_reply(sc.sock.recv_multipart())  # zmq.Again after 5 s: the bug
        assert reply.value() == "pong" and not target.b_released.is_set()
        target.b_released.set()
        assert p.parse_reply(sb.sock.recv_multipart()).value() == "b"
    finally:
        target.a_released.set()
        target.b_released.set()
        server.close()


def test_a_server_binds_and_answers_on_ipv6_loopback():
    server = Server(Dispatcher(TwoCalls(), "incarnation", "1"), address="::1")
    port = server.start()  # ZMQError "No such device" without the IPv6 option
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        assert server.endpoint == f"tcp://[::1]:{port}"
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10000)
        s.setsockopt(zmq.IPV6, 1)
        s.connect(f"tcp://[::1]:{port}")
        s.send_multipart(p.request_frames(b"ping-over-ipv6", p.PING, None, None, None))
        assert p.parse_reply(s.recv_multipart()).value() == "pong"
    finally:
        s.close(0)
        ctx.term()
        server.close()
