"""What one connection may hold of a message ZeroMQ has not delivered yet.

libzmq hands a multipart message over only once its last frame is in, and ``ZMQ_MAXMSGSIZE``
bounds each frame, not the message: one connection sending 20 frames of 32 MiB with MORE set
made a daemon with the 64 MiB default hold 640 MiB before any of our code could refuse it, and
a connection that never finishes its message holds what it sent for as long as it stays. No
socket option bounds it, so the daemon bounds it from outside, per connection:

- **What a connection brought** is the kernel's count of bytes received on its fd
  (``tcpi_bytes_received`` of ``TCP_INFO``), those libzmq has not read yet included: a
  message's bytes count from their arrival, before libzmq copies them into the daemon's memory.
- **What it was credited** is counted by the server as it receives each message: the bytes of
  its frames plus :data:`OVERHEAD` per frame (more than ZMTP's framing, CURVE's included). To
  know which connection a message came from, the server looks at the source fd of a frame
  (``ZMQ_SRCFD``) once per connection, on its first message, and remembers it by the routing
  id ZeroMQ puts before every message (a ``Frame`` per message cost a small call ~2 µs; the
  counting costs ~0.2 µs).
- **What it holds** is the difference: its unfinished message, and complete ones the daemon
  has not read yet. Frames of one connection come in order, so while a message is unfinished
  nothing more of that connection is delivered. Over-crediting is taken back at each look
  (what it holds never goes below 0), so small frames cannot save up credit.

The connection guard (:mod:`malacoda.daemon.guard`) looks at every connection on each of its
memory samples (at most ``IDLE_SAMPLE`` apart), when its epoll set of the connections reports
an arrival (a hint only: epoll reports a socket only if it is still readable, and libzmq
mostly reads first), and, while bytes keep arriving, again as soon as a flood of
:data:`FLOOD_RATE` could fill what a connection may still hold (at least :data:`MIN_CHECK`
apart): 42 looks a second while calls come with the 64 MiB default, none beyond the memory
samples while none come. It shuts down (``SHUT_RDWR``) a connection holding more than
``max_message`` + max(:data:`SLACK`, ``max_message`` / 8), or, when the daemon started
reading one of its messages within the last :data:`STALL` seconds (complete requests queued
in libzmq behind one being read), more than that plus ``backlog`` (the daemon's
``queue_bytes``). libzmq frees what it held when the connection drops; a client sees a dropped
connection (a proxy reconnects and re-sends, and is answered from the reply cache). Together
the connections may hold ``total`` at most: past it, the ones holding the most are shut down.
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import struct
import threading
from typing import Dict, List, Optional, Tuple

import zmq

from malacoda.wire.frames import RCVMORE, get_option, recv_one

log = logging.getLogger(__name__)

OVERHEAD = 64  # bytes credited per frame for its framing (ZMTP: 2 or 9, CURVE: 35 or 42)
SLACK = 256 << 10  # beyond max_message (at least; max_message / 8 if more): handshakes, ZMTP
# commands, and the next request's first bytes before the daemon starts reading the one before
STALL = 1.0  # seconds: a connection none of whose messages was read since holds a tail only
MIN_CHECK = 0.001  # seconds between two looks at the connections, at the least
FLOOD_RATE = 8 << 30  # bytes a second one connection can bring at most (loopback, generous)
SRCFD = int(zmq.SRCFD)
_TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info
_EPOLL_FLAGS = select.EPOLLIN | select.EPOLLET
_NEVER = float("-inf")


def _peer_name(fd: int) -> Optional[Tuple]:
    """The remote address of the TCP connection ``fd`` (None if it is none)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
            return None
        return tuple(sock.getpeername())
    except OSError:
        return None
    finally:
        sock.detach()


def arrived(fd: int, name: Optional[Tuple]) -> Optional[int]:
    """The bytes the kernel received on the TCP connection ``fd`` (those libzmq has not read
    yet included: a message's bytes count from their arrival, before libzmq copies them into
    the daemon's memory). None if ``fd`` is no longer the connection to ``name``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if tuple(sock.getpeername()) != name:
            return None  # closed, and the fd reused before its DISCONNECTED event was read
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, TypeError):
        return None
    finally:
        sock.detach()
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    return int(struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0])


def _libc_getsockopt():
    try:
        fn = ctypes.CDLL(None, use_errno=True).getsockopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_uint32)]
    fn.restype = ctypes.c_int
    return fn


_getsockopt = _libc_getsockopt()


class _Received:
    """:func:`arrived` without checking whose connection ``fd`` is, for the guard's looks:
    libc's ``getsockopt`` straight into a buffer kept for it (a Python socket object per look
    cost ~10-20 µs a connection on a loaded machine, this ~2-4 µs). Not thread-safe: one per
    :class:`PeerBook`, used under its look lock."""

    def __init__(self) -> None:
        self.info = ctypes.create_string_buffer(256)
        self.size = ctypes.c_uint32(256)
        self.ref = ctypes.byref(self.size)

    def __call__(self, fd: int) -> Optional[int]:
        if _getsockopt is None:
            return arrived(fd, _peer_name(fd))
        self.size.value = 256
        if _getsockopt(fd, _IPPROTO_TCP, _TCP_INFO, self.info, self.ref) != 0 \
                or self.size.value < _TCPI_BYTES_RECEIVED + 8:
            return None
        return int(struct.unpack_from("=Q", self.info, _TCPI_BYTES_RECEIVED)[0])


_IPPROTO_TCP, _TCP_INFO = int(socket.IPPROTO_TCP), int(socket.TCP_INFO)


class Peer:
    """One connection: its fd, what it was credited and what it held at the last look."""

    __slots__ = ("fd", "name", "identity", "credit", "offset", "held", "came", "seen_credit",
                 "progress_at", "announced", "gone")

    def __init__(self, fd: int, name: Optional[Tuple], announced: bool) -> None:
        self.fd = fd
        self.name = name
        self.identity = b""
        self.credit = 0  # counted by the server thread that receives (one at a time)
        self.offset = 0  # over-credit taken back
        self.held = 0
        self.came = 0  # the kernel's count at the last look
        self.seen_credit = 0
        self.progress_at = _NEVER  # when a message of it was last seen read
        self.announced = announced  # its ACCEPTED event was read
        self.gone = name is None


_UNTRACKED = Peer(-1, None, True)  # a message whose connection cannot be told: not counted


class PeerBook:
    """The connections of one socket and what each holds; see the module's docs."""

    def __init__(self, max_message: int, backlog: int, total: int,
                 port: Optional[int] = None) -> None:
        self.limit = max_message + max(SLACK, max_message // 8)
        self.backlog_limit = self.limit + backlog
        self.total = total
        self.port = port
        self.by_identity: Dict[bytes, Peer] = {}
        self.by_fd: Dict[int, Peer] = {}
        self.dropped = 0  # connections shut down for what they held
        self.epoll = select.epoll()
        self._lock = threading.Lock()
        self._looking = threading.Lock()  # one look at a time (the guard's; a test's)
        self._received = _Received()

    def close(self) -> None:
        self.epoll.close()

    # ------------------------------------------------------------------ the server's side

    def recv(self, sock: zmq.Socket, flags: int = 0) -> List[bytes]:
        """One message from the ROUTER ``sock``, ``[identity, frame 0, …]``, credited to the
        connection it came from (``frames.recv_routed`` plus the counting)."""
        identity = recv_one(sock, flags)
        peer = self.by_identity.get(identity)
        if peer is None or peer.gone:
            frame = recv_one(sock, 0, False)
            peer = self.enroll(identity, frame.get(SRCFD))
            peer.credit += OVERHEAD
            first = frame.bytes
        else:
            peer.credit += OVERHEAD  # at once: the guard sees its messages being read
            first = recv_one(sock)
        frames = [identity, first]
        size = len(first)
        while get_option(sock, RCVMORE):
            first = recv_one(sock)
            frames.append(first)
            size += len(first) + OVERHEAD
        peer.credit += size
        return frames

    def enroll(self, identity: bytes, fd: int) -> Peer:
        """The connection ``fd`` a message of ``identity`` came from (its first, or the first
        since the connection of that identity changed)."""
        name = _peer_name(fd) if fd >= 0 else None
        if name is None:
            return _UNTRACKED
        with self._lock:
            peer = self.by_fd.get(fd)
            if peer is None or peer.gone or peer.name != name:
                peer = self._add(fd, name, announced=False)
            if peer.identity and self.by_identity.get(peer.identity) is peer:
                del self.by_identity[peer.identity]
            peer.identity = identity
            self.by_identity[identity] = peer
        return peer

    # ------------------------------------------------------------------ the guard's side

    def accepted(self, fd: int) -> None:
        name = _peer_name(fd)
        if name is None:
            return
        with self._lock:
            peer = self.by_fd.get(fd)
            if peer is not None and not peer.gone and peer.name == name:
                peer.announced = True  # enrolled by the server before its event was read
            else:
                self._add(fd, name, announced=True)

    def disconnected(self, fd: int) -> None:
        with self._lock:
            peer = self.by_fd.get(fd)
            if peer is None or not peer.announced:
                return  # a newer connection on a reused fd, enrolled before its ACCEPTED
            self._forget(peer)

    def _add(self, fd: int, name: Tuple, announced: bool) -> Peer:
        old = self.by_fd.get(fd)
        if old is not None:
            self._forget(old)
        peer = self.by_fd[fd] = Peer(fd, name, announced)
        try:
            self.epoll.register(fd, _EPOLL_FLAGS)
        except FileExistsError:
            self.epoll.modify(fd, _EPOLL_FLAGS)
        except (OSError, ValueError):
            pass  # closed meanwhile: its DISCONNECTED event follows
        return peer

    def _forget(self, peer: Peer) -> None:
        peer.gone = True
        if self.by_fd.get(peer.fd) is peer:
            del self.by_fd[peer.fd]
            try:
                self.epoll.unregister(peer.fd)
            except (OSError, ValueError):
                pass  # closed already: the kernel dropped it from the set
        if peer.identity and self.by_identity.get(peer.identity) is peer:
            del self.by_identity[peer.identity]

    def active(self) -> List[int]:
        """The fds bytes arrived on since the last call (without waiting)."""
        try:
            return [fd for fd, _ in self.epoll.poll(0)]
        except (OSError, ValueError):
            return []

    def check(self, now: float) -> Optional[float]:
        """Look at every connection; shut down those over their limit. Returns the seconds
        until the next look if bytes arrived on any since the last one (a flood is followed at
        that pace), None if none did (the next arrival, or the guard's next memory sample,
        brings the next look)."""
        with self._looking:
            return self._check(now)

    def _check(self, now: float) -> Optional[float]:
        received = self._received
        with self._lock:
            look = list(self.by_fd.values())
        room = float(self.backlog_limit)
        moving = False
        for peer in look:
            credit = peer.credit  # before the kernel's count: never counts a message twice
            came = received(peer.fd)
            if came is not None and came < peer.came:  # another connection on a reused fd?
                came = arrived(peer.fd, peer.name)
            if peer.gone:
                continue
            if came is None:  # gone, its DISCONNECTED event not read yet (or lost)
                with self._lock:
                    self._forget(peer)
                continue
            if came != peer.came:
                peer.came, moving = came, True
            held = came - credit - peer.offset
            if held < 0:  # credited more than its framing took: take it back
                peer.offset += held
                held = 0
            peer.held = held
            if credit != peer.seen_credit:
                peer.seen_credit, peer.progress_at = credit, now
            limit = self.backlog_limit if now - peer.progress_at < STALL else self.limit
            if held > limit and arrived(peer.fd, peer.name) is not None:  # still that one
                self._drop(peer, f"held {held >> 10} KiB of requests not read yet (more than "
                                 f"{limit >> 10} KiB)")
            else:
                room = min(room, limit - held)
        held_all = sum(p.held for p in look if not p.gone)
        if held_all > self.total:
            for peer in sorted(look, key=lambda p: -p.held):
                if held_all <= self.total or peer.held <= SLACK or peer.gone:
                    break
                held_all -= peer.held
                self._drop(peer, f"connections held {held_all >> 20} MiB together (more than "
                                 f"{self.total >> 20} MiB): this one the most")
        return max(MIN_CHECK, room / FLOOD_RATE) if moving else None

    def _drop(self, peer: Peer, why: str) -> None:
        from malacoda.daemon.guard import disconnect

        cut = disconnect(peer.fd, self.port)  # first: libzmq goes on reading meanwhile
        peer.held = 0
        with self._lock:
            self._forget(peer)
        if cut:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or not self.dropped % 1000:
                log.warning("closed the connection from %s: it %s; see max_message (%d so far)",
                            _address(peer.name), why, self.dropped)


def _address(name: Optional[Tuple]) -> str:
    if not name:
        return "?"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
