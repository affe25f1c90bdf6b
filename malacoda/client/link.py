"""The link of a client DEALER to one daemon: the process's ZeroMQ context, how a DEALER is
set up before it connects (limits, ``IMMEDIATE``, the credentials that prove who the client is),
and what its socket monitor's events mean for the calls on it.

The synchronous :class:`~.channel.Channel` and the asyncio :class:`~.aiochannel.AsyncChannel`
both build their link from here, so one place decides how a client connects and reads a drop.
"""

from __future__ import annotations

import os
import struct
from typing import Dict, List, Optional

import zmq

from malacoda.errors import ConnectionLost
from malacoda.host.pool import Pool

_contexts: Pool[None, zmq.Context] = Pool(per_process=True)


def context() -> zmq.Context:
    """This process's ZeroMQ context, made anew after a fork (zmq is not fork-safe)."""
    return _contexts.get(None, zmq.Context)


def close_monitored(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    """Close ``sock`` and its ``monitor`` in the only safe order: monitoring off, the monitor's
    socket, then ``sock``."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass
    monitor.close(0)
    sock.close(0)


#: The socket monitor events a client channel reads: the link's drops and refusals.
LINK_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def configure_dealer(sock: zmq.Socket, endpoint: str, curve: Optional[Dict[str, bytes]],
                     max_message: int, plain: Optional[bytes] = None,
                     owner_token: Optional[bytes] = None) -> None:
    """Set up a client DEALER to ``endpoint`` before it connects: limits, ``IMMEDIATE``, and the
    credentials its :class:`~.resolve.Target` carries (CURVE keys; an owner-only daemon's secret
    as the ZAP PLAIN password; an open daemon's owner token in the routing id). The synchronous
    and the asyncio channel both use this: one place decides how a client proves who it is."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message)
    # Queue requests only for a connection that is up: see Channel._send_when_connected.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    if curve:
        sock.curve_secretkey = curve["secret"]
        sock.curve_publickey = curve["public"]
        sock.curve_serverkey = curve["server"]
    elif plain is not None:  # an owner-only daemon: its secret as the ZAP PLAIN password
        sock.plain_username = b"malacoda"
        sock.plain_password = plain
    if owner_token is not None:  # an open daemon of ours: mark our connection as the owner's
        sock.setsockopt(zmq.ROUTING_ID, owner_token + b"." + os.urandom(8).hex().encode())


def link_error(event: List[bytes], endpoint: str, curve: bool,
               client_key: str) -> Optional[ConnectionLost]:
    """What a socket monitor ``event`` means for the calls on that link: ConnectionLost (the
    daemon went away, or refused the handshake: why, and what to do), or None (all is well)."""
    # libzmq's monitor message: a 16-bit event id and a 32-bit value, native order.
    # (Parsed here: zmq.utils.monitor would import asyncio into every client.)
    kind = struct.unpack("=Hi", event[0][:6])[0] if len(event[0]) >= 6 else 0
    if kind == zmq.EVENT_DISCONNECTED:
        return ConnectionLost(f"the daemon at {endpoint} went away")
    if kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
        return ConnectionLost(
            f"the daemon at {endpoint} refused the connection: CURVE authentication "
            f"failed (authorize this client's key on the daemon's host: 'malacodactl keys "
            f"authorize {client_key}')" if curve else
            f"the daemon at {endpoint} refused the connection: it accepts only its "
            "owner's clients (and root's) unless started open = true, or CURVE keys "
            "authorized with 'malacodactl keys authorize'")
    return None
