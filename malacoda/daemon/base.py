"""The :class:`Malacoda` base class: a daemon's lifecycle, signals, run loops and pst schedule.

A daemon is a subclass that sets its attributes, calls ``super().__init__(...)`` and defines
``_run``::

    class MessageDaemon(Malacoda):
        def __init__(self, daemonize=False):
            self.messages = []
            self.pst_counter = 0            # pst* attributes survive restarts
            super().__init__(daemonize=daemonize)

        def _run(self):
            while self.running:
                ...

Instantiating starts it, as in the original: ``MessageDaemon(False)`` serves in the foreground
until it is stopped, ``MessageDaemon(True)`` detaches first. The order of events is: folders,
the name lock (a second daemon of the same name fails at once), pst state loaded over the
constructor's defaults, the socket bound, the registry entry written (the daemon is *ready*),
then ``_run`` and every ``_run_*`` method (with a cluster registry configured, the daemon also
registers there: :mod:`malacoda.cluster`), each in a thread of its own. When they return
(``stop()``, SIGTERM or SIGINT), pst state is saved, the entry removed and the socket closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import zmq

from malacoda import cluster
from malacoda.address import is_loopback
from malacoda.daemon.dispatch import Dispatcher
from malacoda.daemon.events import Events
from malacoda.daemon.guard import MAX_CONNECTIONS
from malacoda.daemon.options import RunOptions
from malacoda.daemon.options import current as current_options
from malacoda.daemon.server import Server
from malacoda.daemon.streams import LEASE, MAX_STREAMS, WINDOW
from malacoda.errors import AlreadyRunning, ConfigError, ProcessError, StateError
from malacoda.host.files import private_dir
from malacoda.host.paths import Paths, check_name, host_name
from malacoda.host.registry import Entry, NameLock, Registry
from malacoda.security import ServerCurve, ServerPlain, chain, new_secret, owner_token, server_curve
from malacoda.storage import PstStorage, from_config
from malacoda.version import __version__

log = logging.getLogger(__name__)

READ_ONLY = frozenset({"name", "running", "finished"})
#: Methods of the base class a proxy cannot reach: events are published by the daemon itself.
HIDDEN = frozenset({"publish"})
MAX_MESSAGE = 64 << 20  # the largest request a daemon reads (ZMQ_MAXMSGSIZE), by default
#: python-daemon's ``DaemonContext`` options (PEP 3143), which the original passed through its
#: ``**kwargs``. With ``daemonize=True`` they go to ``DaemonContext``; in the foreground,
#: :data:`FOREGROUND_KEYWORDS` act as they would have when detached and the others are ignored.
DAEMON_CONTEXT_KEYWORDS = frozenset({
    "chroot_directory", "working_directory", "umask", "uid", "gid", "initgroups", "prevent_core",
    "detach_process", "files_preserve", "pidfile", "stdin", "stdout", "stderr", "signal_map"})
FOREGROUND_KEYWORDS = frozenset({"stdout", "stderr", "working_directory", "umask"})




class Malacoda(Events):
    """Base class of a daemon. See the module docstring for the lifecycle.

    Keywords (the original's, in its order): ``name`` (default: the class name),
    ``bind_address`` (default ``127.0.0.1`` — loopback, unlike the original's ``0.0.0.0``),
    ``port`` (default: a free port the kernel picks, published in the registry),
    ``daemonize`` (detach before serving), ``pst_config`` (see :mod:`malacoda.storage`).
    Further: ``workers`` (calls run at once, 1 = strictly serial; default 8), ``queue``
    (requests waiting for a worker before callers get "busy"; default 64), ``max_message``
    (bytes: a larger request is refused before it is read and its connection dropped; default
    64 MiB), ``insecure`` (serve a non-loopback ``bind_address`` without CURVE — see
    :mod:`malacoda.security`; default False: such a daemon serves CURVE or refuses to start),
    ``curve`` (serve CURVE on a loopback address too, for a host shared with other users, who
    can all connect to loopback ports; default False), ``max_connections`` (connections kept
    open; past it the oldest is closed; default 1024, fewer when the open files limit is low —
    see :mod:`malacoda.daemon.server`), ``open`` (let any local user call a loopback daemon, over
    the NULL mechanism; default False: only its owner and root, who authenticate with the
    secret of its registry entry — see SECURITY.md). The ``daemon.DaemonContext`` options
    (:data:`DAEMON_CONTEXT_KEYWORDS`) go to it when ``daemonize`` is true; in the foreground
    ``stdout``, ``stderr``, ``working_directory`` and ``umask`` act as they would have when
    detached (see :func:`_as_if_detached`) and the others are ignored. Any other keyword is a
    :class:`ConfigError`.
    """

    #: Whether a ``set`` through a proxy may create a ``pst*`` attribute the daemon does not have
    #: (it would be saved, and loaded at every later start); setting an existing one always is.
    _allow_new_pst: bool = False
    #: Streams (see :mod:`malacoda.daemon.streams`): the most items one stream runs ahead of its
    #: client, the seconds a silent client keeps its streams, and the streams open at once.
    _stream_window: int = WINDOW
    _stream_lease: float = LEASE
    _max_streams: int = MAX_STREAMS

    def __init__(
        self,
        name: Optional[str] = None,
        bind_address: str = "127.0.0.1",
        port: Optional[int] = None,
        daemonize: bool = False,
        pst_config: Optional[Dict[str, Any]] = None,
        workers: int = 8,
        queue: int = 64,
        max_message: int = MAX_MESSAGE,
        insecure: bool = False,
        curve: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        open: bool = False,  # the unit key's name
        **daemon_kwargs: Any,
    ) -> None:
        if name is self:  # the original README's ``super().__init__(self)``
            name = None
        unknown = sorted(set(daemon_kwargs) - DAEMON_CONTEXT_KEYWORDS)
        if unknown:
            raise ConfigError(f"unknown keyword argument(s) {', '.join(unknown)}: neither a "
                              "Malacoda keyword nor a daemon.DaemonContext option")
        opts = current_options()  # what a supervisor set for this process, if any
        name = check_name(opts.name or name or type(self).__name__)
        bind_address = opts.bind or bind_address
        port = opts.port if opts.port is not None else port
        workers = opts.workers if opts.workers is not None else workers
        queue = opts.queue if opts.queue is not None else queue
        max_message = opts.max_message if opts.max_message is not None else max_message
        if opts.max_connections is not None:
            max_connections = opts.max_connections
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ConfigError(f"max_connections={max_connections!r}: give the connections to "
                              "keep open, an int of at least 1")
        self._malacoda_max_connections = max_connections
        insecure = opts.insecure if opts.insecure is not None else insecure
        require_curve = opts.curve if opts.curve is not None else curve
        is_open = bool(opts.open if opts.open is not None else open)
        if opts.pst is not None:
            pst_config = {**(pst_config or {}), **opts.pst}
        paths = Paths.default()
        private_dir(paths.run)
        # before detaching, so that its errors show:
        serve_curve = server_curve(bind_address, insecure, name, paths, require_curve)
        secret = new_secret()
        serve_plain: Optional[ServerPlain] = None
        if serve_curve is None and is_loopback(bind_address):
            if is_open:
                log.warning("%s: open = true: ANY user of this host can call every public "
                            "method, read and set attributes and stop it", name)
            else:
                serve_plain = ServerPlain(secret, name)
        elif is_open:
            log.warning("%s: open = true has no effect: it is not served on loopback without "
                        "CURVE", name)
        self._malacoda_secret = secret
        self._malacoda_open = is_open and serve_plain is None and serve_curve is None

        self.name = name
        self.running = True
        self.finished = False
        self._malacoda_paths = paths
        self._malacoda_stop = threading.Event()
        self._malacoda_save_lock = threading.Lock()
        self._malacoda_incarnation = uuid.uuid4().hex[:16]
        self._malacoda_unsaved: Dict[str, str] = {}  # pst attributes the last save left out
        self._malacoda_pst_incomplete = ""  # why the final save was incomplete (runner's exit)
        self._malacoda_storage: PstStorage = from_config(name, paths, pst_config)

        if daemonize:
            self._malacoda_detach(daemon_kwargs)
            self._malacoda_serve(bind_address, port or 0, workers, queue, max_message,
                                 serve_curve, opts, serve_plain)
            return
        with _as_if_detached(daemon_kwargs):
            self._malacoda_serve(bind_address, port or 0, workers, queue, max_message,
                                 serve_curve, opts, serve_plain)

    # ------------------------------------------------------------------ public API

    def stop(self) -> str:
        """Stop the daemon: its run loops end, pst attributes are saved, the process exits."""
        self.running = False
        self._malacoda_stop.set()
        return "Stopping"

    # ------------------------------------------------------------------ for subclasses

    def _run(self) -> None:
        """The main loop. Override it: ``while self.running: ...``. The default just waits."""
        self._malacoda_stop.wait()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on stop; True while the daemon should run."""
        self._malacoda_stop.wait(seconds)
        return self.running

    def _save_pst(self) -> bool:
        """Save ``pst*`` attributes now if they changed; True when written.

        An attribute that cannot be saved does not stop the others (see
        :meth:`PstStorage.save`): one error names it, and ``malacodactl status`` shows it.
        """
        with self._malacoda_save_lock:
            state = {k: v for k, v in list(vars(self).items()) if k.startswith("pst")}
            storage = self._malacoda_storage
            try:
                return storage.save(state)
            finally:
                self._malacoda_note_unsaved(dict(getattr(storage, "unsaved", {})))

    def _malacoda_note_unsaved(self, unsaved: Dict[str, str]) -> None:
        """Log and register (for ``status``) the pst attributes the last save left out, once
        each time the set of them changes."""
        if unsaved == self._malacoda_unsaved:
            return
        self._malacoda_unsaved = unsaved
        text = pst_unsaved_text(unsaved)
        if unsaved:
            log.error("%s: %s", self.name, text)
        else:
            log.info("%s: every pst attribute is saved again", self.name)
        entry = getattr(self, "_malacoda_entry", None)
        if entry is not None:
            entry.extra["pst"] = text
            with contextlib.suppress(OSError):
                Registry(self._malacoda_paths).write(entry)

    # ------------------------------------------------------------------ lifecycle

    def _malacoda_detach(self, daemon_kwargs: Dict[str, Any]) -> None:
        import daemon  # python-daemon

        private_dir(self._malacoda_paths.log)
        if "stdout" not in daemon_kwargs or "stderr" not in daemon_kwargs:
            log_file = self._malacoda_paths.log_file(self.name)
            fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            out = open(fd, "a", buffering=1)
            daemon_kwargs.setdefault("stdout", out)
            daemon_kwargs.setdefault("stderr", out)
        daemon_kwargs.setdefault("umask", 0o077)
        daemon_kwargs.setdefault("working_directory", os.getcwd())
        context = daemon.DaemonContext(**daemon_kwargs)
        context.open()

    def _malacoda_serve(self, address: str, port: int, workers: int, queue: int,
                        max_message: int, curve: Optional[ServerCurve],
                        opts: RunOptions, plain: Optional[ServerPlain] = None) -> None:
        paths, name = self._malacoda_paths, self.name
        registry = Registry(paths)
        lock = NameLock(paths, name)
        if not lock.acquire():
            entry, _ = registry.read(name)
            pid = entry.pid if entry is not None else lock.holder()
            raise AlreadyRunning(f"a daemon named {name!r} is already running (pid {pid})", pid)
        try:
            registry.clean_stale(name)
            self._malacoda_load_pst()
            dispatcher = Dispatcher(self, self._malacoda_incarnation, __version__,
                                    read_only=READ_ONLY, hidden=HIDDEN)
            dispatcher.max_message = max_message  # in describe: proxies refuse larger requests
            server = Server(dispatcher, address, port, workers, queue, max_message=max_message,
                            max_connections=self._malacoda_max_connections,
                            configure=chain(curve.configure if curve else None,
                                            plain.configure if plain else None,
                                            opts.configure_socket),
                            max_streams=self._max_streams, stream_lease=self._stream_lease,
                            stream_window=self._stream_window)
            self._malacoda_attach_events(server.streams)
            if self._malacoda_open:  # others get no tracebacks; its owner still does
                server.owner_prefix = owner_token(self._malacoda_secret)
            try:
                bound = server.start()
            except zmq.ZMQError as exc:
                raise ProcessError(f"{name}: cannot bind {address}:{port}: {exc.strerror}") from exc
            try:
                entry = Entry(name=name, pid=os.getpid(), port=bound, address=address,
                              start_time=_own_start_time(), incarnation=self._malacoda_incarnation,
                              uid=os.geteuid(), version=__version__, host=host_name(),
                              server_key=curve.public_key if curve else None,
                              secret=self._malacoda_secret if (plain or self._malacoda_open) else None,
                              open=self._malacoda_open)
                registry.write(entry)
                self._malacoda_entry = entry  # rewritten when a pst attribute cannot be saved
                announced: Optional[cluster.Registration] = None
                try:
                    announced = cluster.register(entry)  # None unless a cluster is configured
                    self._malacoda_main(entry, opts)
                finally:
                    if announced is not None:
                        announced.stop()
                    registry.remove(name, self._malacoda_incarnation)
            finally:
                server.close(grace=opts.stop_grace)
        finally:
            self._malacoda_storage.close()
            lock.release()

    def _malacoda_load_pst(self) -> None:
        state = self._malacoda_storage.load()
        for key, value in (state or {}).items():
            if key.startswith("pst"):
                setattr(self, key, value)

    def _malacoda_main(self, entry: Entry, opts: RunOptions) -> None:
        previous = self._malacoda_install_signals()
        saver = threading.Thread(target=self._malacoda_save_loop, name="malacoda-pst", daemon=True)
        saver.start()
        log.info("%s ready on %s:%d (pid %d)", self.name, entry.address, entry.port, entry.pid)
        for callback in opts.on_ready:
            callback(entry)
        failure: Optional[BaseException] = None
        try:
            self._malacoda_run_loops()
        except BaseException as exc:  # noqa: B902 - re-raised below, after the state is saved
            failure = exc
            for told in opts.on_failure:
                with contextlib.suppress(Exception):
                    told(exc)
        finally:
            self.running = False
            self._malacoda_stop.set()
            self.finished = True
            self._malacoda_restore_signals(previous)
            try:
                self._save_pst()
                unsaved = self._malacoda_unsaved
                if unsaved:
                    self._malacoda_pst_incomplete = ("its final pst save was incomplete: "
                                                     + pst_unsaved_text(unsaved))
            except StateError as exc:  # one line: the message says what and where
                log.error("%s: the final save of pst state failed: %s", self.name, exc)
                self._malacoda_pst_incomplete = f"its final save of pst state failed: {exc}"
            log.info("%s stopped", self.name)
        if failure is not None:
            raise failure

    def _malacoda_run_loops(self) -> None:
        extra = sorted(n for n in dir(type(self)) if n.startswith("_run_") and callable(getattr(self, n)))
        errors: List[BaseException] = []

        def run(method: Callable[[], None]) -> None:
            try:
                method()
            except BaseException as exc:  # noqa: B902 - reported by the main thread
                log.exception("%s: %s failed", self.name, method.__name__)
                errors.append(exc)
                self.stop()

        threads = [threading.Thread(target=run, args=(getattr(self, n),), name=f"malacoda{n}",
                                    daemon=True) for n in extra]
        for t in threads:
            t.start()
        self._run()
        self.running = False
        self._malacoda_stop.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _malacoda_save_loop(self) -> None:
        interval = self._malacoda_storage.frequency
        while not self._malacoda_stop.wait(interval):
            try:
                self._save_pst()
            except Exception:
                log.exception("%s: saving pst state failed; the previous state is kept", self.name)

    def _malacoda_install_signals(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: Any) -> None:
            log.info("%s: signal %d, stopping", self.name, signum)
            self.stop()

        previous: Dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        return previous

    @staticmethod
    def _malacoda_restore_signals(previous: Dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _as_if_detached(options: Dict[str, Any]) -> Iterator[None]:
    """A foreground daemon given ``DaemonContext`` options: what ``DaemonContext.open()`` would
    have done with ``stdout``, ``stderr`` (file descriptors 1 and 2 pointed at those files, so
    that C code and child processes write there too), ``working_directory`` and ``umask`` is
    done for as long as the daemon runs, then undone: in the foreground the program goes on
    after the daemon returns. The other options (``files_preserve``, ``pidfile``, ``uid``,
    ``signal_map``, ...) are about detaching, and ignored.
    """
    undo: List[Callable[[], object]] = []
    try:
        if options.get("umask") is not None:
            try:
                old_umask = os.umask(options["umask"])
            except (TypeError, ValueError):
                raise ConfigError(f"umask={options['umask']!r}: give a number such as "
                                  "0o077") from None
            undo.append(lambda: os.umask(old_umask))
        if options.get("working_directory") is not None:
            old_cwd = os.getcwd()
            try:
                os.chdir(options["working_directory"])
            except (OSError, TypeError) as exc:
                raise ConfigError(f"working_directory={options['working_directory']!r}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
            undo.append(lambda: os.chdir(old_cwd))
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = options.get(key)
            if target is None:
                continue
            try:
                target_fd = target.fileno()
            except (AttributeError, OSError, ValueError):
                raise ConfigError(f"{key}={target!r}: give an open file (it needs a file "
                                  "descriptor)") from None
            with contextlib.suppress(Exception):  # sys.stdout may be None, or closed
                getattr(sys, key).flush()
            saved = os.dup(fd)
            os.dup2(target_fd, fd)

            def restore(fd: int = fd, saved: int = saved, key: str = key) -> None:
                with contextlib.suppress(Exception):
                    getattr(sys, key).flush()
                os.dup2(saved, fd)
                os.close(saved)

            undo.append(restore)
        yield
    finally:
        for step in reversed(undo):
            step()


def pst_unsaved_text(unsaved: Dict[str, str]) -> str:
    """The one line that names the pst attributes a save left out ("" when none)."""
    if len(unsaved) == 1:
        [(name, reason)] = unsaved.items()
        return (f"pst attribute {name} cannot be saved ({reason}): it keeps its last saved "
                "value; the other pst attributes are saved")
    if unsaved:
        reasons = "; ".join(f"{k}: {v}" for k, v in unsaved.items())
        return (f"pst attributes {', '.join(unsaved)} cannot be saved ({reasons}): they keep "
                "their last saved values; the other pst attributes are saved")
    return ""


def _own_start_time() -> float:
    from malacoda.host.process import process_start_time

    started = process_start_time(os.getpid())
    return started if started is not None else time.time()


def load_class(spec: str, search: Optional[List[Path]] = None) -> type:
    """``'module:Class'`` (with ``search`` folders put first on ``sys.path``) → the class."""
    import importlib

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"class {spec!r} must be given as 'module:Class'")
    for folder in reversed(search or []):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no class {class_name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Malacoda)):
        raise ConfigError(f"{spec!r} is not a subclass of malacoda.Malacoda")
    return cls
