"""Where a Malacoda client's CPU goes when 16 spawned client processes share 2 CPUs.

``python -m bench.clientcost [rounds]``: for each client loop below, a fresh daemon (the
benchmark's ``BenchEcho``) and 16 spawned client processes calling ``echo('hello')`` for a
window; prints calls/s and the clients' user CPU per call. The loops add one piece of the
proxy's work at a time, from a bare DEALER sending a prebuilt request frame to ``d.echo``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, List, Tuple

from bench.harness import Server, timed_calls

WINDOW = 1.5
LOOPS = [
    ("bare", "bare DEALER: send a prebuilt request frame, receive the reply"),
    ("more", "bare DEALER and one RCVMORE look"),
    ("parse", "bare DEALER, parsing the reply envelope and decoding the body (no RCVMORE)"),
    ("lock", "RCVMORE, parse, decode, a lock and two clock reads"),
    ("build", "... and building each request (id, body, envelope)"),
    ("channel", "Channel.request + encode/decode (the proxy's connection)"),
    ("proxy", "the proxy, d.echo('hello')"),
]


def _loop(kind: str, port: int) -> Callable[[], Any]:
    import zmq

    from malacoda.wire import codec
    from malacoda.wire import protocol as p
    from malacoda.wire.frames import RCVMORE, get_option, recv_one, send_one

    endpoint = f"tcp://127.0.0.1:{port}"
    prefix, count = os.urandom(8), [0]

    def request() -> Tuple[bytes, List[bytes]]:
        count[0] += 1
        rid = prefix + count[0].to_bytes(8, "big")
        return rid, p.request_frames(rid, p.CALL, "echo", None, None,
                                     codec.encode_call(("hello",), {}))

    if kind == "proxy":
        import malacoda

        proxy = malacoda.get(f"BenchEcho:{port}")
        return lambda: proxy.echo("hello")
    if kind == "channel":
        from malacoda.client.channel import Channel

        channel = Channel(endpoint)

        def via_channel() -> Any:
            rid, frames = request()
            return channel.request(frames, rid, 10.0).value()
        return via_channel
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(endpoint)
    head = request()[1][0]
    lock = threading.Lock()

    def bare() -> Any:
        send_one(sock, head, 0, True)
        return recv_one(sock, 0)

    def more() -> Any:
        send_one(sock, head, 0, True)
        reply = recv_one(sock, 0)
        get_option(sock, RCVMORE)
        return reply

    def parse() -> Any:
        send_one(sock, head, 0, True)
        return p.parse_reply([recv_one(sock, 0)]).value()

    def locked(frame: bytes = b"") -> Any:
        with lock:
            time.monotonic()
            send_one(sock, frame or head, 0, True)
            reply = recv_one(sock, 0)
            get_option(sock, RCVMORE)
            time.monotonic()
            parsed = p.parse_reply([reply])
        return parsed.value()

    return {"bare": bare, "more": more, "parse": parse, "lock": locked,
            "build": lambda: locked(request()[1][0])}[kind]


def _client(kind: str, port: int, start: float, out: Any) -> None:
    out.put(timed_calls(_loop(kind, port), start, WINDOW))


def main(argv: List[str]) -> int:

    rounds = int(argv[0]) if argv else 2
    home = tempfile.mkdtemp(prefix="malacoda-clientcost-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    ctx = mp.get_context("spawn")
    print("| client loop | calls/s | client user CPU µs/call |")
    print("|---|---|---|")
    for _ in range(rounds):
        for kind, label in LOOPS:
            server = Server("malacoda")
            try:
                out = ctx.Queue()
                start = time.time() + 2.0
                procs = [ctx.Process(target=_client, args=(kind, server.port, start, out))
                         for _ in range(16)]
                for proc in procs:
                    proc.start()
                done = [out.get(timeout=WINDOW + 60) for _ in procs]
                for proc in procs:
                    proc.join(30)
            finally:
                server.stop()
            calls = sum(d[0] for d in done)
            cpu = sum(d[1] for d in done) / calls * 1e6
            print(f"| {label} | {calls / WINDOW:,.0f} | {cpu:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
