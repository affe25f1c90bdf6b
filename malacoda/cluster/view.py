"""A live view of the cluster registry, kept current by an etcd watch.

A proxy whose daemon was found in the cluster asks this view, before each call, whether the
entry it connected to is still there. That matters when the daemon's host dies or hangs: the
TCP connection does not drop, a call with a timeout just times out, and without the view the
proxy would go on calling a dead host; once the lease expires the entry is deleted, the view
says so, and the next call resolves the name again (and finds the daemon where it runs now).

The view lists ``malacoda/daemons/`` and then watches it from the next revision over etcd's
v3 JSON gateway (the same HTTP session as :class:`malacoda.cluster.Etcd`'s). When the stream
ends — etcd restarted, the member went away, the read timed out — it lists again and watches
again from the revision of that list, with backoff while etcd is unreachable. While the view
is not in step with etcd it answers "still there": a proxy never drops a working connection
because etcd is down. One view per process and cluster configuration, shared by its proxies.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from malacoda.cluster import PREFIX, ClusterConfig, Etcd, Member
from malacoda.cluster.etcd import decode, prefix_range
from malacoda.errors import ClusterError
from malacoda.host.pool import Pool

log = logging.getLogger(__name__)

READ_TIMEOUT = 30.0  # a silent stream is re-established after this many seconds
MAX_BACKOFF = 5.0


class ClusterView:
    """``{key: incarnation}`` of every registered daemon, as the watch last saw it."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.synced = threading.Event()
        self.lists = 0  # how many times the view (re-)listed the registry
        self._etcd = Etcd(config)
        self._known: Dict[str, str] = {}
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._loop, name="malacoda-cluster-watch", daemon=True)

    def current(self, key: str, incarnation: str) -> bool:
        """False only when the view knows that ``key`` is gone or belongs to another incarnation."""
        if not self.synced.is_set():
            return True
        return self._known.get(key) == incarnation

    # ------------------------------------------------------------------ the watch thread

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                known, revision = self._etcd.snapshot()
                self._known = known
                self.lists += 1
                self.synced.set()
                if self._follow(revision + 1):
                    backoff = 0.1  # the watch worked: the next failure retries quickly
            except ClusterError as exc:
                log.debug("cluster watch: %s", exc)
            except Exception as exc:  # the stream broke: requests' and json's errors alike
                log.debug("cluster watch stream ended: %s", exc)
            if self._stop.is_set():
                return
            self.synced.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _follow(self, revision: int) -> bool:
        """Apply the watch's events until its stream ends; True if it delivered any.

        A watch that etcd refuses at once (no ``/watch``, auth) is no reason to re-list
        quickly: the caller keeps backing off until a watch has worked.
        """
        client = self._etcd.current_client()
        request = {"create_request": {**prefix_range(PREFIX), "start_revision": revision}}
        response = client.session.post(client.get_url("/watch"), json=request, stream=True,
                                       timeout=(self.config.timeout, READ_TIMEOUT))
        self._response = response
        try:
            if self._stop.is_set() or response.status_code != 200:
                return False
            delivered = False
            pending = b""
            for chunk in response.iter_content(chunk_size=None):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not line.strip():
                        continue
                    delivered = True
                    if not self._apply(json.loads(line)):
                        return True
            return delivered
        finally:
            self._response = None
            response.close()

    def _apply(self, message: Dict[str, Any]) -> bool:
        """Apply one watch message; False when the watch ended (canceled, compacted)."""
        result = message.get("result") or {}
        if result.get("canceled") or result.get("compact_revision") or message.get("error"):
            return False
        for event in result.get("events", []):
            kv = event.get("kv", {})
            key = decode(kv.get("key", "")).decode(errors="replace")
            if event.get("type") == "DELETE":
                self._known.pop(key, None)
                continue
            try:
                self._known[key] = Member.from_json(decode(kv.get("value", ""))).incarnation
            except (ValueError, TypeError):
                self._known.pop(key, None)
        return True

    # ------------------------------------------------------------------ sharing

    def start(self) -> ClusterView:
        """Start the watch (for its first user: the view is shared through a pool)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the watch (its last user has gone)."""
        self._stop.set()
        response = self._response
        if response is not None:
            _shutdown(response)


#: One view per cluster configuration, shared by the proxies that found a daemon in it.
_views: Pool[ClusterConfig, ClusterView] = Pool(close=ClusterView.stop)


def acquire(config: ClusterConfig) -> Tuple[ClusterView, Callable[[], None]]:
    """The shared view of ``config``'s cluster and the function that releases it."""
    return _views.acquire(config, lambda: ClusterView(config).start())


def view_of(config: ClusterConfig) -> Optional[ClusterView]:
    """The running view of ``config``'s cluster, if a proxy holds one."""
    return _views.find(config)


def _shutdown(response: Any) -> None:
    """Wake the thread blocked reading ``response``'s stream (closing alone does not)."""
    try:
        sock = socket.fromfd(response.raw._fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except Exception:
        pass
