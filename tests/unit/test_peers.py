"""The per-connection count's limits, on real TCP connections (no daemon, no ZeroMQ)."""

from __future__ import annotations

import socket
import threading
import time

from malacoda.daemon import peers as pe


def _pairs(n: int):
    """A listening socket and ``n`` connected (client, accepted) pairs."""
    lst = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(n):
        c = socket.create_connection(lst.getsockname())
        a, _ = lst.accept()
        pairs.append((c, a))
    return lst, pairs


def _arrived(book: pe.PeerBook, c: socket.socket, a: socket.socket, size: int) -> None:
    """Send ``size`` bytes from ``c``, read them off ``a`` (as libzmq would: the kernel lets no
    more in otherwise) and check that the kernel's count has them."""
    sender = threading.Thread(target=c.sendall, args=(b"\0" * size,), daemon=True)
    sender.start()
    a.settimeout(10)
    got = 0
    while got < size:
        chunk = a.recv(min(1 << 16, size - got))
        assert chunk, "closed before the bytes arrived"
        got += len(chunk)
    sender.join(10)
    assert (pe.arrived(a.fileno(), book.by_fd[a.fileno()].name) or 0) >= size


def _closed(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, TimeoutError, socket.timeout):
        return False


def test_a_connection_over_max_message_is_shut_down_and_others_are_left_alone():
    lst, pairs = _pairs(2)
    book = pe.PeerBook(1 << 20, backlog=2 << 20, total=1 << 30, port=lst.getsockname()[1])
    try:
        for _, a in pairs:
            book.accepted(a.fileno())
        (c0, a0), (c1, a1) = pairs
        _arrived(book, c0, a0, (1 << 20) + pe.SLACK + 4096)  # over max_message + SLACK
        _arrived(book, c1, a1, 1 << 20)  # one whole max_message: allowed
        assert book.check(time.monotonic()) is not None  # bytes moved: looked at again soon
        assert book.dropped == 1
        assert _closed(c0)
        assert a1.fileno() in book.by_fd and book.by_fd[a1.fileno()].held >= 1 << 20
        # Credited as read by the server: it holds nothing any more.
        book.by_fd[a1.fileno()].credit += 1 << 20
        book.check(time.monotonic())
        assert book.by_fd[a1.fileno()].held == 0
        assert book.check(time.monotonic()) is None  # nothing arrived since
    finally:
        book.close()
        lst.close()
        for c, a in pairs:
            c.close()
            a.close()


def test_connections_together_are_bounded_by_the_total():
    """Four connections each under its own limit but together over ``total``: the ones holding
    the most are shut down until the rest is under it."""
    lst, pairs = _pairs(4)
    book = pe.PeerBook(1 << 20, backlog=0, total=2 << 20, port=lst.getsockname()[1])
    try:
        sizes = [900 << 10, 800 << 10, 700 << 10, 600 << 10]  # 3 MiB in all
        for (c, a), size in zip(pairs, sizes):
            book.accepted(a.fileno())
            _arrived(book, c, a, size)
        book.check(time.monotonic())
        assert book.dropped == 2  # 900 + 800 KiB shut down: 1.3 MiB left
        assert [_closed(c) for c, _ in pairs[:2]] == [True, True]
        assert [a.fileno() in book.by_fd for _, a in pairs[2:]] == [True, True]
    finally:
        book.close()
        lst.close()
        for c, a in pairs:
            c.close()
            a.close()
