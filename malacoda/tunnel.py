"""A local TCP port that leads, through an SSH connection, to a port on the remote host.

Like ``ssh -L 127.0.0.1:0:127.0.0.1:PORT``: a listening socket on this host's loopback, and for
each connection accepted on it a ``direct-tcpip`` channel to ``remote_host:remote_port`` as seen
from the remote host (its own loopback, usually), bytes pumped both ways by a thread.

When either end closes (the remote daemon died, or the SSH connection dropped) the local
connection is closed too, so a ZeroMQ socket connected to the tunnel sees a disconnect — which
is what makes a proxy resolve its daemon's name again. The tunnel never reconnects SSH by
itself; the next name resolution does.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from typing import Set

import paramiko

from .ssh import Connection

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT = 10.0
_CHUNK = 1 << 16


class Tunnel:
    """``127.0.0.1:<port>`` here → ``remote_host:remote_port`` there, over ``connection``."""

    def __init__(self, connection: Connection, remote_host: str, remote_port: int) -> None:
        self.connection = connection
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self._closed = False
        self._mu = threading.Lock()
        self._open: Set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"malacoda-tunnel-{self.port}")
        self._thread.start()

    def __repr__(self) -> str:
        return (f"<Tunnel 127.0.0.1:{self.port} -> {self.connection.config.alias}:"
                f"{self.remote_host}:{self.remote_port}>")

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            conns = list(self._open)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # closed
            with self._mu:
                if self._closed:
                    conn.close()
                    return
                self._open.add(conn)
            threading.Thread(target=self._forward, args=(conn, peer), daemon=True,
                             name=f"malacoda-tunnel-{self.port}-{peer[1]}").start()

    def _forward(self, conn: socket.socket, peer: tuple) -> None:
        chan = None
        try:
            transport = self.connection.active_transport()
            if transport is None:
                log.debug("%r: the SSH connection is down; refusing a connection", self)
                return
            try:
                chan = transport.open_channel("direct-tcpip", (self.remote_host, self.remote_port),
                                              peer, timeout=CHANNEL_TIMEOUT)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.debug("%r: cannot open a channel: %s", self, exc)
                return
            self._pump(conn, chan)
        finally:
            if chan is not None:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    chan.close()  # the transport may be gone already
            with self._mu:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    @staticmethod
    def _pump(conn: socket.socket, chan: paramiko.Channel) -> None:
        while True:
            try:
                readable, _, _ = select.select([conn, chan], [], [], 30.0)
            except (OSError, ValueError):
                return
            if conn in readable:
                try:
                    data = conn.recv(_CHUNK)
                except OSError:
                    return
                if not data:
                    return
                try:
                    chan.sendall(data)
                except (OSError, paramiko.SSHException, EOFError):
                    return
            if chan in readable:
                try:
                    data = chan.recv(_CHUNK)
                except (OSError, paramiko.SSHException, EOFError):
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return
