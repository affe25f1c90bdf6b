"""A TCP relay the tests put between a proxy and a daemon, to cut connections at will."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Dict, Set


class Relay:
    """Forwards ``127.0.0.1:<port>`` (a free port) to ``127.0.0.1:<target>`` until closed.

    :meth:`cut` closes every connection in flight, as a broken network or a dropped SSH tunnel
    would; new connections are accepted again at once. :meth:`retarget` points new connections
    at another port (a daemon restarted elsewhere).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: Dict[socket.socket, socket.socket] = {}
        self._mu = threading.Lock()
        self._cut = False
        self._closed = False
        self.connections = 0
        self._holding = False
        self._upstreams: Set[socket.socket] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Close every connection now."""
        with self._mu:
            self._cut = True
        self._wake_w.send(b"c")

    def retarget(self, port: int) -> None:
        self.target = port

    def hold_replies(self) -> None:
        """Drop whatever the daemon sends on the connections open now, as a network that loses
        a reply would (until :meth:`cut`)."""
        self._holding = True

    def close(self) -> None:
        with self._mu:
            self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def _drop_all(self) -> None:
        self._upstreams.clear()
        for sock in list(self._peers):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            sock.close()
        self._peers.clear()

    def _loop(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select(0.5):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        self._wake_r.recv(64)
                        with self._mu:
                            if self._closed:
                                return
                            cut, self._cut = self._cut, False
                        if cut:
                            self._drop_all()
                            self._holding = False
                    elif sock is self._listener:
                        client, _ = self._listener.accept()
                        try:
                            upstream = socket.create_connection(("127.0.0.1", self.target), 5)
                        except OSError:
                            client.close()
                            continue
                        self.connections += 1
                        self._peers[client], self._peers[upstream] = upstream, client
                        self._upstreams.add(upstream)
                        self._selector.register(client, selectors.EVENT_READ)
                        self._selector.register(upstream, selectors.EVENT_READ)
                    elif sock in self._peers:
                        assert isinstance(sock, socket.socket)
                        try:
                            data = sock.recv(1 << 16)
                        except OSError:
                            data = b""
                        other = self._peers[sock]
                        if data and self._holding and sock in self._upstreams:
                            continue  # lost on the way
                        if data:
                            try:
                                other.sendall(data)
                                continue
                            except OSError:
                                pass
                        for s in (sock, other):
                            with contextlib.suppress(KeyError, ValueError):
                                self._selector.unregister(s)
                            self._peers.pop(s, None)
                            self._upstreams.discard(s)
                            s.close()
        finally:
            self._drop_all()
            self._selector.close()
            self._listener.close()
