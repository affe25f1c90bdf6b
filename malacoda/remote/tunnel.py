"""A local socket that leads, through an SSH connection, to a port on the remote host.

Like ``ssh -L``, but the local end is a Unix socket in a fresh owner-only (0700) folder rather
than a TCP port on loopback, so that other users of this host cannot ride on our SSH login:
proxies connect to ``ipc://<folder>/tunnel``. For each connection accepted on it, a
``direct-tcpip`` channel to ``remote_host:remote_port`` as seen from the remote host (its own
loopback, usually), bytes pumped both ways by a thread.

When either end closes (the remote daemon died, or the SSH connection dropped) the local
connection is closed too, so a ZeroMQ socket connected to the tunnel sees a disconnect — which
is what makes a proxy resolve its daemon's name again. The tunnel never reconnects SSH by
itself; the next name resolution does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import tempfile
import threading
from typing import Set

import paramiko

from malacoda.remote.ssh import Connection

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT = 10.0
_CHUNK = 1 << 16


class Tunnel:
    """``ipc://<private folder>/tunnel`` here → ``remote_host:remote_port`` there."""

    def __init__(self, connection: Connection, remote_host: str, remote_port: int) -> None:
        self.connection = connection
        self.remote_host = remote_host
        self.remote_port = remote_port
        # A short path (a Unix socket path has ~107 bytes): $XDG_RUNTIME_DIR, else /tmp.
        self.folder = tempfile.mkdtemp(prefix="malacoda-", dir=os.environ.get("XDG_RUNTIME_DIR"))
        self.path = os.path.join(self.folder, "tunnel")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.path)
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.endpoint = f"ipc://{self.path}"
        self._closed = False
        self._mu = threading.Lock()
        self._open: Set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"malacoda-tunnel-{remote_port}")
        self._thread.start()

    def __repr__(self) -> str:
        return (f"<Tunnel {self.endpoint} -> {self.connection.config.alias}:"
                f"{self.remote_host}:{self.remote_port}>")

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            conns = list(self._open)
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(self.path)  # wakes the accept loop, which sees that it is closed
        self._thread.join(timeout=5)
        self._listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._mu:
                if self._closed:
                    conn.close()
                    return
                self._open.add(conn)
            threading.Thread(target=self._forward, args=(conn,), daemon=True,
                             name=f"malacoda-tunnel-{self.remote_port}-conn").start()

    def _forward(self, conn: socket.socket) -> None:
        chan = None
        try:
            transport = self.connection.active_transport()
            if transport is None:
                log.debug("%r: the SSH connection is down; refusing a connection", self)
                return
            try:
                chan = transport.open_channel("direct-tcpip", (self.remote_host, self.remote_port),
                                              ("127.0.0.1", 0), timeout=CHANNEL_TIMEOUT)
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
