"""What the connections of a daemon may hold: how many there are, and the memory of messages
ZeroMQ has not delivered yet.

ZeroMQ bounds each frame (``ZMQ_MAXMSGSIZE``) but neither the frames of one message nor the
connections of one socket, and it delivers a multipart message only once its last frame is
in: three connections sending 32 MiB frames with MORE set and never finishing held 1 GB
inside libzmq before any of our code ran; 1,012 idle connections took all of a daemon's 1,024
fds. No socket option bounds either, so :class:`ConnectionGuard` watches from outside, in a
thread of its own, through the socket's monitor (whose accepted and disconnected events carry
each connection's fd):

- **Connections.** At most ``max_connections`` stay open; past it the *oldest* is shut down
  (so that idle connections piling up cannot lock a newcomer, the owner's next call, out).
  :func:`fds_for_connections` raises the soft ``RLIMIT_NOFILE`` to the hard limit first and
  lowers the cap so that :data:`FD_RESERVE` fds stay free for the daemon's own files.
- **Memory held for connections.** Every ``SAMPLE`` seconds near the ceiling, less often far
  under it (no faster than a flood of :data:`FLOOD_RATE` could close the gap, at most
  :data:`IDLE_SAMPLE` apart), it reads the bytes the process
  has allocated (glibc's ``mallinfo2``, else the RSS). Past the memory at start plus
  ``headroom`` (what the daemon may hold of requests by its own settings), it shuts down the
  connections that brought the most bytes (the kernel's ``tcpi_bytes_received``) one by one
  until the memory is back under; libzmq frees an unfinished message when its connection
  drops. When closing them does not help, the memory is the daemon's own: the ceiling moves
  up, with a warning.

- **What each connection holds** of messages not delivered yet: at most one ``max_message``
  (plus framing), see :mod:`malacoda.daemon.peers`, looked at from the same thread.

A closed client reconnects by itself; a call it had in flight is re-sent and answered from the
reply cache (see :mod:`malacoda.daemon.replycache`).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import os
import resource
import socket
import struct
import time
from typing import Callable, Optional

import zmq

from malacoda.daemon.peers import PeerBook
from malacoda.wire.frames import recv_frames

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024  # connections a daemon keeps open by default
FD_RESERVE = 64  # fds kept free beyond the connections: files, pst saves, accepting
MIN_HEADROOM = 256 << 20  # the least memory connections may hold beyond the daemon's own
SAMPLE = 0.02  # seconds between two looks at the memory, near the ceiling
IDLE_SAMPLE = 0.1  # seconds between two looks at the most, far under it
FLOOD_RATE = 8 << 30  # bytes a second connections can bring in at most (loopback, generous)
EVENTS = int(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_MIN_SUSPECT = 1 << 20  # a connection that brought less than this cannot hold much
_TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2() -> Optional[Callable[[], int]]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []

    def allocated() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return allocated


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class ConnectionGuard:
    """Caps the connections of the socket bound on ``port`` and the memory they hold."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, headroom: int = 1 << 30) -> None:
        self.max_connections = max_connections
        self.headroom = headroom
        self.port: Optional[int] = None
        self.evicted = 0  # connections closed because there were too many
        self.shed = 0  # connections closed because they held too much memory
        self._held = _mallinfo2() or _rss
        self.ceiling = 0
        #: What each connection holds of messages not delivered yet (see :mod:`.peers`).
        self.peers: Optional[PeerBook] = None

    def watch(self, monitor: zmq.Socket, stopping: Callable[[], bool]) -> None:
        """Read ``monitor`` until ``stopping()``; keep the connections within the caps."""
        open_fds: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.ceiling = self._held() + self.headroom
        next_sample = next_check = 0.0
        peers = self.peers
        poller = zmq.Poller()
        poller.register(monitor, zmq.POLLIN)
        arrivals = False  # the connections' epoll set is among what the poller waits for
        following = False  # bytes arrived at the last look: the next one is at next_check
        while not stopping():
            now = time.monotonic()
            look = False
            if now >= next_sample:
                held = self._held()
                if held > self.ceiling:
                    self._shed(open_fds)
                    held = self._held()
                # An idle daemon is far under its ceiling: looking every SAMPLE there cost it
                # 50 wake-ups a second for nothing.
                next_sample = now + min(IDLE_SAMPLE,
                                        max(SAMPLE, (self.ceiling - held) / FLOOD_RATE))
                look = True
            due = next_sample
            if peers is not None:
                # The connections: looked at on each memory sample, when bytes arrive (the
                # epoll set sees an arrival only if libzmq has not read it yet: a hint), and
                # while bytes keep arriving, at the pace a flood could fill what they may hold.
                if now >= next_check and (look or following or peers.active()):
                    wait = peers.check(now)
                    following = wait is not None
                    next_check = now + (wait if wait is not None else 0.0)
                want = not following
                if want != arrivals:
                    if want:
                        poller.register(peers.epoll.fileno(), zmq.POLLIN)
                    else:
                        poller.unregister(peers.epoll.fileno())
                    arrivals = want
                if following:
                    due = min(due, next_check)
            ready = poller.poll(max(1, int((due - now) * 1000)))
            if not any(source is monitor for source, _ in ready):
                continue
            try:
                event = recv_frames(monitor, zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            if len(event[0]) < 6:
                continue
            kind, fd = struct.unpack("=Hi", event[0][:6])
            if peers is not None:
                if kind == _ACCEPTED:
                    peers.accepted(fd)
                elif kind == _DISCONNECTED:
                    peers.disconnected(fd)
            if kind == _ACCEPTED:
                open_fds[fd] = None
                open_fds.move_to_end(fd)
                while len(open_fds) > self.max_connections:
                    oldest, _ = open_fds.popitem(last=False)
                    if disconnect(oldest, self.port):
                        self.evicted += 1
                        if self.evicted in (1, 10, 100) or not self.evicted % 1000:
                            log.warning("more than %d connections: closed the oldest (%d so "
                                        "far); see max_connections", self.max_connections,
                                        self.evicted)
            elif kind == _DISCONNECTED:
                open_fds.pop(fd, None)

    def _shed(self, open_fds: collections.OrderedDict[int, None]) -> None:
        """Over the ceiling: close the connections that brought the most bytes until under."""
        ranked = sorted(((bytes_received(fd), fd) for fd in open_fds), reverse=True)
        closed = 0
        for received, fd in ranked:
            if received < _MIN_SUSPECT:
                break
            if disconnect(fd, self.port):
                open_fds.pop(fd, None)
                closed += 1
                deadline = time.monotonic() + 0.2  # libzmq frees it in its own thread
                while self._held() > self.ceiling and time.monotonic() < deadline:
                    time.sleep(0.005)
                if self._held() <= self.ceiling:
                    break
        self.shed += closed
        held = self._held()
        if closed:
            log.warning("connections held %d MiB of messages not finished: closed the %d that "
                        "brought the most bytes", (held - self.ceiling + self.headroom) >> 20,
                        closed)
        if held > self.ceiling:  # not the connections': the daemon's own memory grew
            self.ceiling = held + self.headroom
            log.warning("the daemon holds %d MiB: the memory ceiling for its connections moves "
                        "to %d MiB", held >> 20, self.ceiling >> 20)


def fds_for_connections() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the fds left for connections once those
    open now and :data:`FD_RESERVE` are set aside (at least 1)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # what Linux allows at most by default (fs.nr_open)
    if soft == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return max(1, soft - in_use - FD_RESERVE)


def bytes_received(fd: int) -> int:
    """The bytes the kernel received on the TCP connection ``fd`` (0 if it cannot tell)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return 0
    finally:
        sock.detach()
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return 0
    return int(struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0])


def disconnect(fd: int, port: Optional[int]) -> bool:
    """Shut down the TCP connection ``fd`` if it is still one accepted on ``port`` (ZeroMQ
    then closes it as if the peer had, freeing what it held for it); False if the fd is
    something else by now."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False  # closed meanwhile, or no socket
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
            return False  # a Unix socket's name is a path: no port to compare
        sock.getpeername()
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.detach()  # the fd stays ZeroMQ's to close
