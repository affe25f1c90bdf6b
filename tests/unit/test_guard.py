"""The connection guard's own helpers and its idle cost (real sockets, no daemon)."""

from __future__ import annotations

import os
import socket

from malacoda import guard


def test_disconnect_leaves_a_unix_socket_alone():
    # An fd the guard tracked may be reused by a non-TCP file before its DISCONNECTED event is
    # read: the guard must say "not ours", not die (it raised IndexError on getsockname()).
    a, b = socket.socketpair()
    with a, b:
        assert guard.bytes_received(a.fileno()) == 0
        assert guard.disconnect(a.fileno(), 5555) is False
        b.sendall(b"x")
        assert a.recv(1) == b"x"  # still open


def test_disconnect_leaves_a_pipe_alone():
    r, w = os.pipe()
    try:
        assert guard.disconnect(r, 5555) is False
    finally:
        os.close(r)
        os.close(w)
