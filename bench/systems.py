"""The systems under test: one echo server each, and a client that calls it.

A server runs in a process of its own (``python -m bench.systems SYSTEM``), binds 127.0.0.1 on a
port the kernel picks, prints ``READY <port>`` on stdout and serves until it is killed or its
parent goes away. Every server answers ``echo(x) -> x``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Tuple

HOST = "127.0.0.1"

#: system -> (label, what it is)
SYSTEMS: Dict[str, Tuple[str, str]] = {
    "zmq_reqrep": ("raw pyzmq REQ/REP", "bytes echo, one-thread REP loop, no codec: the floor"),
    "malacoda": ("Malacoda", "d.echo('hello') through a Proxy; leader/followers daemon"),
    "malacoda_open": ("Malacoda, open (NULL)", "the same daemon started open = true: no "
                      "owner check (ZAP PLAIN off), the mechanism before owner-only access"),
    "pyro5": ("Pyro5", "proxy.echo('hello'); serpent, thread-pool server"),
    "rpyc": ("RPyC", "conn.root.echo('hello'); ThreadedServer (two round trips)"),
    "rpyc_cached": ("RPyC, method cached", "f = conn.root.echo once, then f('hello')"),
}
FLOOR = "zmq_reqrep"
BENCH_NAME = "BenchEcho"
OPEN_NAME = "BenchEchoOpen"


def small_value(system: str) -> Any:
    """The small-call argument: raw zmq carries bytes, every RPC system a str."""
    return b"hello" if system == FLOOR else "hello"


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def serve(system: str) -> None:
    """Run ``system``'s echo server in this process until it is killed."""
    _exit_with_parent()
    if system == "zmq_reqrep":
        import zmq

        sock = zmq.Context().socket(zmq.REP)
        port = sock.bind_to_random_port(f"tcp://{HOST}")
        _ready(port)
        while True:
            sock.send(sock.recv())
    elif system == "malacoda":
        from bench.daemon import serve_bench_echo

        serve_bench_echo(_ready)
    elif system == "malacoda_open":
        from bench.daemon import serve_bench_echo

        serve_bench_echo(_ready, name=OPEN_NAME, open=True)
    elif system == "pyro5":
        import Pyro5.api
        import serpent

        @Pyro5.api.expose
        class Echo:
            def echo(self, value: Any) -> Any:
                if type(value) is dict and value.get("encoding") == "base64":
                    value = serpent.tobytes(value)  # serpent sends bytes as base64 text
                return value

        daemon = Pyro5.api.Daemon(host=HOST, port=0)
        daemon.register(Echo(), objectId="echo")
        _ready(int(daemon.locationStr.rsplit(":", 1)[1]))
        daemon.requestLoop()
    elif system in ("rpyc", "rpyc_cached"):
        import socket

        import rpyc
        from rpyc.utils.server import ThreadedServer

        class EchoService(rpyc.Service):
            def exposed_echo(self, value: Any) -> Any:
                return value

        probe = socket.socket()
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
        probe.close()

        class Server(ThreadedServer):
            def _listen(self) -> None:
                super()._listen()
                _ready(port)

        Server(EchoService, hostname=HOST, port=port, auto_register=False).start()
    else:
        raise SystemExit(f"unknown system {system!r}")


#: A client of one system: (call, close, the proxy or connection underneath).
_Opened = Tuple[Callable[[Any], Any], Callable[[], None], Any]


def _zmq_client(system: str, port: int) -> _Opened:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{HOST}:{port}")

    def call(value: Any) -> Any:
        sock.send(value)
        return sock.recv()

    def close() -> None:
        sock.close(0)
        ctx.term()

    return call, close, None


def _malacoda_client(system: str, port: int) -> _Opened:
    import malacoda
    from malacoda.client.proxy import close

    name = BENCH_NAME if system == "malacoda" else OPEN_NAME
    proxy = malacoda.get(f"{name}:{port}")
    # the idiomatic d.echo(x), every time
    return (lambda value: proxy.echo(value)), (lambda: close(proxy)), proxy


def _pyro5_client(system: str, port: int) -> _Opened:
    import Pyro5.api
    import serpent

    proxy = Pyro5.api.Proxy(f"PYRO:echo@{HOST}:{port}")

    def call(value: Any) -> Any:
        result = proxy.echo(value)
        if type(result) is dict and result.get("encoding") == "base64":
            result = serpent.tobytes(result)
        return result

    return call, proxy._pyroRelease, proxy


def _rpyc_client(system: str, port: int) -> _Opened:
    import rpyc

    conn = rpyc.connect(HOST, port, config={"sync_request_timeout": 60})
    if system == "rpyc_cached":
        return conn.root.echo, conn.close, conn
    return (lambda value: conn.root.echo(value)), conn.close, conn


#: How each system's client connects, by system name.
CLIENTS: Dict[str, Callable[[str, int], _Opened]] = {
    "zmq_reqrep": _zmq_client, "malacoda": _malacoda_client, "malacoda_open": _malacoda_client,
    "pyro5": _pyro5_client, "rpyc": _rpyc_client, "rpyc_cached": _rpyc_client}


class Client:
    """One connection of ``system`` to the server on ``port``: ``call(x)`` echoes ``x``;
    ``proxy`` is the system's own proxy or connection (None for raw ZeroMQ)."""

    def __init__(self, system: str, port: int) -> None:
        opened = CLIENTS.get(system)
        if opened is None:
            raise ValueError(f"unknown system {system!r}")
        self.system = system
        self.call, self._close, self.proxy = opened(system, port)

    def close(self) -> None:
        try:
            self._close()
        except Exception:
            pass


if __name__ == "__main__":
    serve(sys.argv[1])
