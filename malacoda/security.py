"""CURVE keys, the allow-list of client keys, and the ZAP authenticator ("ironhouse").

A daemon bound to a loopback address needs nothing here: only users of this host reach it, and
other hosts go through SSH. A daemon bound to any other address serves CURVE (encryption plus
an allow-list of client public keys) or refuses to start, unless it is explicitly ``insecure``.

Everything lives under :attr:`Paths.keys <malacoda.host.paths.Paths>` (folder 0700, files 0600),
in pyzmq's ``zmq.auth`` certificate format::

    keys/server.key            this host's server public key (daemons serve with it)
    keys/server.key_secret     ... and its secret key
    keys/client.key            this user's client public key (proxies present it)
    keys/client.key_secret     ... and its secret key
    keys/authorized/NAME.key   one file per client public key allowed to call CURVE daemons

The allow-list is read at each CURVE handshake, so ``authorize`` and ``revoke`` take effect for
new connections without restarting a daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import zmq
from zmq.utils import z85

from malacoda.address import Target, is_loopback
from malacoda.errors import ConfigError
from malacoda.host.files import atomic_write, private_dir, untrusted
from malacoda.host.paths import Paths
from malacoda.host.registry import Entry

log = logging.getLogger(__name__)

ZAP_DOMAIN = "malacoda"
_KEY_RE = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_BANNER = "#   ZeroMQ CURVE {kind} certificate, written by Malacoda. Keep key_secret files private.\n"


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves as 40-character z85 text (bytes)."""

    public: bytes
    secret: bytes


def parse_public_key(text: str) -> bytes:
    """A z85 public key given as text (40 characters) or as a ``zmq.auth`` ``.key`` file path."""
    text = text.strip()
    candidate = Path(text)
    if not _KEY_RE.match(text) and candidate.is_file():
        public, _ = _read_key_file(candidate)
        return public
    if not _KEY_RE.match(text):
        raise ConfigError(f"{text!r} is not a CURVE public key (40 z85 characters, as "
                          "'malacodactl keys show' prints) nor a .key file")
    try:
        if len(z85.decode(text.encode())) != 32:
            raise ValueError
    except (ValueError, KeyError):
        raise ConfigError(f"{text!r} is not a valid CURVE public key") from None
    return text.encode()


def key_label(public: bytes) -> str:
    """A short, file-safe name for a public key (its allow-list file name by default)."""
    return "key-" + hashlib.sha256(public).hexdigest()[:16]


def _read_key_file(path: Path, secret: bool = False) -> tuple[bytes, Optional[bytes]]:
    try:
        st = path.stat()
        if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by other users: run 'chmod 600 {path}'")
        public, secret_key = None, None
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line.startswith("public-key"):
                public = line.split("=", 1)[1].strip(" \t'\"").encode()
            elif line.startswith("secret-key"):
                secret_key = line.split("=", 1)[1].strip(" \t'\"").encode()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if public is None or (secret and secret_key is None):
        raise ConfigError(f"{path} is not a CURVE certificate file (no public/secret key)")
    return public, secret_key


def _key_text(kind: str, public: bytes, secret: Optional[bytes]) -> bytes:
    lines = [_BANNER.format(kind=kind), "metadata\n", "curve\n",
             f'    public-key = "{public.decode()}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"\n')
    return "".join(lines).encode()


class Keys:
    """The key folder of one user on one host (``Paths.keys``)."""

    def __init__(self, paths: Optional[Paths] = None) -> None:
        self.paths = paths or Paths.default()

    @property
    def folder(self) -> Path:
        return self.paths.keys

    @property
    def authorized_folder(self) -> Path:
        return self.folder / "authorized"

    # ------------------------------------------------------------------ own key pairs

    def pair(self, role: str) -> Optional[KeyPair]:
        """The ``server`` or ``client`` key pair, or None when it was never made."""
        path = self.folder / f"{role}.key_secret"
        if not path.exists():
            return None
        public, secret = _read_key_file(path, secret=True)
        assert secret is not None
        return KeyPair(public, secret)

    def init(self) -> Dict[str, KeyPair]:
        """Make the server and client key pairs that do not exist yet; return both."""
        private_dir(self.folder)
        private_dir(self.authorized_folder)
        pairs: Dict[str, KeyPair] = {}
        for role in ("server", "client"):
            pair = self.pair(role)
            if pair is None:
                public, secret = zmq.curve_keypair()
                pair = KeyPair(public, secret)
                atomic_write(self.folder / f"{role}.key_secret", _key_text(role, public, secret))
                atomic_write(self.folder / f"{role}.key", _key_text(role, public, None))
                log.info("created the CURVE %s key pair in %s", role, self.folder)
            pairs[role] = pair
        return pairs

    # ------------------------------------------------------------------ the allow-list

    def authorize(self, public: str, label: Optional[str] = None) -> Path:
        """Allow the client key ``public`` (z85 text or a ``.key`` file) to call CURVE daemons."""
        key = parse_public_key(public)
        if label is not None and not _LABEL_RE.match(label):
            raise ConfigError(f"invalid key name {label!r}: use letters, digits, '_', '.', '@', '-'")
        for existing_label, existing in self.authorized().items():
            if existing == key:
                return self.authorized_folder / f"{existing_label}.key"
        private_dir(self.folder)
        path = private_dir(self.authorized_folder) / f"{label or key_label(key)}.key"
        atomic_write(path, _key_text("authorized client", key, None))
        return path

    def revoke(self, key_or_label: str) -> Path:
        """Remove a client key from the allow-list, given as the key itself or its name."""
        wanted = key_or_label.strip()
        for label, key in self.authorized().items():
            if wanted in (label, key.decode()):
                path = self.authorized_folder / f"{label}.key"
                path.unlink()
                return path
        raise ConfigError(f"{wanted!r} is not an authorized key (see 'malacodactl keys show')")

    def authorized(self) -> Dict[str, bytes]:
        """``{name: public key}`` of every authorized client key."""
        folder = self.authorized_folder
        if not folder.is_dir():
            return {}
        keys: Dict[str, bytes] = {}
        for path in sorted(folder.glob("*.key")):
            with contextlib.suppress(ConfigError, OSError):
                if untrusted(path.stat()):
                    log.warning("ignoring authorized key %s: not ours or writable by others", path)
                    continue
                keys[path.stem] = _read_key_file(path)[0]
        return keys

    def is_authorized(self, public: bytes) -> bool:
        return public in self.authorized().values()

    # ------------------------------------------------------------------ both ends of a socket

    def client_curve(self, server_key: str, who: str) -> Dict[str, bytes]:
        """The ``curve`` settings for a :class:`~malacoda.client.channel.Channel` to a CURVE daemon."""
        pair = self.pair("client")
        if pair is None:
            raise ConfigError(
                f"{who} requires CURVE and this user has no client key: run 'malacodactl keys "
                "init' here, then 'malacodactl keys authorize <client key>' on the daemon's host")
        return {"secret": pair.secret, "public": pair.public, "server": server_key.encode()}


class _AllowList:
    """The ZAP credentials provider: reads the allow-list at each handshake."""

    def __init__(self, keys: Keys, name: str) -> None:
        self.keys = keys
        self.name = name

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.keys.is_authorized(key)
        if not allowed:
            log.warning("%s: refused a CURVE client with an unauthorized key %s",
                        self.name, key.decode(errors="replace"))
        return allowed


class ServerCurve:
    """CURVE for one daemon's ROUTER socket: the host's server key and a ZAP authenticator."""

    def __init__(self, keys: Keys, pair: KeyPair, name: str) -> None:
        self.keys = keys
        self.pair = pair
        self.name = name

    @property
    def public_key(self) -> str:
        return self.pair.public.decode()

    def configure(self, sock: zmq.Socket) -> Callable[[], None]:
        """Make ``sock`` a CURVE server checked by ZAP; returns the function that stops ZAP.

        Call it after any fork, before the socket binds, with the socket's own context.
        """
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(sock.context, log=logging.getLogger(__name__ + ".zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_AllowList(self.keys, self.name))
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_server = True
        return auth.stop


#: The ZAP PLAIN user name an owner-only daemon expects (the password is its secret).
PLAIN_USER = b"malacoda"


def new_secret() -> str:
    """A fresh per-daemon secret: 43 URL-safe characters (256 random bits)."""
    import secrets

    return secrets.token_urlsafe(32)


class _PlainCheck:
    """The ZAP handler of an owner-only daemon: one comparison per connection, not per message.

    Replies per RFC 27 (ZAP) on ``inproc://zeromq.zap.01`` of the daemon's own context: 200 for
    PLAIN with user ``malacoda`` and the daemon's secret, 400 for anything else (the handshake
    then fails and the peer gets nothing at all).
    """

    def __init__(self, ctx: zmq.Context, secret: bytes, name: str) -> None:
        import threading

        self.secret = secret
        self.name = name
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("inproc://zeromq.zap.01")
        self._stop_r = ctx.socket(zmq.PAIR)
        self._stop_addr = f"inproc://malacoda-zap-stop-{id(self)}"
        self._stop_r.bind(self._stop_addr)
        self._stop_w = ctx.socket(zmq.PAIR)
        self._stop_w.connect(self._stop_addr)
        self.thread = threading.Thread(target=self._serve, name="malacoda-zap", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import hmac

        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._stop_r in ready:
                    return
                msg = self.sock.recv_multipart()
                # version, request id, domain, address, identity, mechanism, credentials...
                ok = (len(msg) >= 8 and msg[0] == b"1.0" and msg[2] == ZAP_DOMAIN.encode()
                      and msg[5] == b"PLAIN" and msg[6] == PLAIN_USER
                      and hmac.compare_digest(msg[7], self.secret))
                if not ok:
                    log.warning("%s: refused a client without this daemon's credentials "
                                "(mechanism %s): another user?", self.name,
                                msg[5].decode(errors="replace") if len(msg) > 5 else "?")
                rid = msg[1] if len(msg) > 1 else b""
                self.sock.send_multipart([b"1.0", rid, b"200" if ok else b"400",
                                          b"OK" if ok else b"refused",
                                          b"owner" if ok else b"", b""])
        except zmq.ZMQError:
            return

    def stop(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._stop_w.send(b"")
        self.thread.join(5)
        for sock in (self.sock, self._stop_r, self._stop_w):
            sock.close(0)


class ServerPlain:
    """Owner-only access for a loopback daemon: ZAP PLAIN checked against a per-daemon secret.

    The secret lives only in the daemon's registry entry (run folder 0700, file 0600), so only
    its owner and root can present it.
    """

    def __init__(self, secret: str, name: str) -> None:
        self.secret = secret
        self.name = name

    def configure(self, sock: zmq.Socket) -> Callable[[], None]:
        """Make ``sock`` a PLAIN server checked by ZAP; returns the function that stops ZAP."""
        check = _PlainCheck(sock.context, self.secret.encode(), self.name)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.plain_server = True
        return check.stop


def owner_token(secret: str) -> bytes:
    """The routing-id prefix by which an ``open`` daemon knows its owner's connections."""
    return hashlib.sha256(b"malacoda-owner:" + secret.encode()).hexdigest()[:32].encode()


def server_curve(address: str, insecure: bool, name: str,
                 paths: Optional[Paths] = None, require: bool = False) -> Optional[ServerCurve]:
    """The CURVE setup a daemon bound to ``address`` needs, or None (loopback or insecure).

    ``require`` asks for CURVE on a loopback address too (a shared host, where every local user
    can connect to a loopback port). Raises :class:`ConfigError` when CURVE is needed and this
    host has no server key, unless ``insecure`` (non-loopback only).
    """
    if is_loopback(address) and not require:
        return None
    if require:
        insecure = False
    if insecure:
        log.warning("%s: serving on %s WITHOUT CURVE (insecure = true): anyone who can reach "
                    "this port can call every public method", name, address)
        return None
    keys = Keys(paths)
    pair = keys.pair("server")
    if pair is None and require:
        raise ConfigError(
            f"{name}: curve = true requires CURVE keys, and this host has no server key in "
            f"{keys.folder}: run 'malacodactl keys init' and 'malacodactl keys authorize "
            "<client key>'")
    if pair is None:
        raise ConfigError(
            f"{name}: binding {address} (not a loopback address) requires CURVE, and this host "
            f"has no server key in {keys.folder}: run 'malacodactl keys init' and "
            "'malacodactl keys authorize <client key>', or set insecure = true (insecure=True) "
            "to serve unauthenticated")
    if not keys.authorized():
        log.warning("%s: CURVE is on but no client key is authorized yet in %s",
                    name, keys.authorized_folder)
    return ServerCurve(keys, pair, name)


def chain(*hooks: Optional[Callable[[zmq.Socket], object]]) -> Optional[Callable[[zmq.Socket], object]]:
    """Several socket hooks as one; the cleanup functions they return run in reverse order."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def configure(sock: zmq.Socket) -> Callable[[], None]:
        cleanups = [c for c in (h(sock) for h in present) if callable(c)]

        def cleanup() -> None:
            for c in reversed(cleanups):
                c()

        return cleanup

    return configure



def client_curve(server_key: Optional[str], who: str,
                 keys: Optional[Keys] = None) -> Optional[Dict[str, bytes]]:
    """The client CURVE settings to reach a daemon whose entry carries ``server_key``, or None
    for one without (bound to loopback, or started ``insecure``): it is reached in the clear.

    ``who`` names the daemon in the error raised when this user has no client key.
    """
    if not server_key:
        return None
    return (keys or Keys()).client_curve(server_key, who)


def with_auth(target: Target, entry: Optional[Entry]) -> Target:
    """``target`` with the credentials ``entry`` gives (none for an older daemon's entry)."""
    if entry is not None and entry.secret and not target.curve:
        if entry.open:
            target.owner_token = owner_token(entry.secret)
        else:
            target.plain = entry.secret.encode()
    return target
