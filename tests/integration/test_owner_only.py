"""Owner-only by default, on a host shared by two ordinary users (issue 11, section 1).

``mlca_alice`` runs the daemon ``Vault``; ``mlca_mallory`` is another local account. Each user
is a forked child of this (root) test process that drops to that user before doing anything
and makes its ZeroMQ context after the fork (``/root`` is 0700: other users cannot exec the
venv's interpreter). Everything those children import is imported here first.
"""

from __future__ import annotations

import hmac  # noqa: F401 - imported before the fork (the children cannot read /root)
import json
import logging
import os
import pwd
import secrets  # noqa: F401
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import msgpack
import pytest
import zmq

import malacoda
import malacoda.cli.app
import malacoda.daemon.base
import malacoda.remote.lookup
import malacoda.storage
from malacoda.client.proxy import describe
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
from tests.support import pid_alive, wait_for
from tests.support.daemons import TestDaemon

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="two-user tests create users: run as root")

ALICE, MALLORY = "mlca_alice", "mlca_mallory"
SIG = b"MLC\x02"
NO_REPLY_WITHIN = 1.5  # seconds an attacker waits for a reply that must never come


@pytest.fixture(scope="module")
def users() -> Iterator[Dict[str, pwd.struct_passwd]]:
    made = []
    for name in (ALICE, MALLORY):
        subprocess.run(["userdel", "-r", name], capture_output=True)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
        made.append(name)
    try:
        yield {name: pwd.getpwnam(name) for name in made}
    finally:
        for name in made:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", "-r", name], capture_output=True)


def _become(user: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    for key in ("MALACODA_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "MALACODA_HOSTNAME"):
        os.environ.pop(key, None)
    os.environ["HOME"] = user.pw_dir
    os.environ["USER"] = user.pw_name
    os.chdir(user.pw_dir)


def as_user(user: pwd.struct_passwd, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn`` in a forked child as ``user``; its JSON-able result (or raise its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            _become(user)
            out = {"ok": fn()}
        except BaseException as exc:  # noqa: B902 - sent to the parent
            out = {"error": type(exc).__name__, "message": str(exc), "tb": traceback.format_exc()}
        os.write(w, json.dumps(out, default=repr).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"the child as {user.pw_name} did not answer in {timeout} s")
            os.set_blocking(r, False)
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "NoOutput", "message": ""}')


def ok(answer: Dict[str, Any]) -> Any:
    assert "error" not in answer, answer
    return answer["ok"]


class UserDaemon:
    """``TestDaemon`` named ``Vault``, run as ``user`` in a forked child; stopped by pid."""

    def __init__(self, user: pwd.struct_passwd, **kwargs: Any) -> None:
        self.user = user
        self.log = Path(user.pw_dir) / "vault.log"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _become(user)
                os.setsid()
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                logging.basicConfig(level=logging.INFO, force=True,
                                    stream=os.fdopen(os.dup(fd), "w", buffering=1))
                TestDaemon(name="Vault", **kwargs)
            except BaseException:  # noqa: B902
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        self.pid = pid
        self.entry_file = Path(user.pw_dir) / ".local/state/malacoda/run/registry/Vault.json"
        wait_for(lambda: self.entry_file.exists() or not pid_alive(pid),
                 timeout=20, what=f"Vault as {user.pw_name}")
        assert pid_alive(pid), self.log.read_text()
        self.entry = json.loads(self.entry_file.read_bytes())
        self.port = self.entry["port"]

    def stop(self) -> None:
        if pid_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_for(lambda: os.waitpid(self.pid, os.WNOHANG)[0] == self.pid, timeout=10,
                         what="Vault to stop")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        else:
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass


@pytest.fixture
def vault(users) -> Iterator[Callable[..., UserDaemon]]:
    started = []

    def start(user: str = ALICE, **kwargs: Any) -> UserDaemon:
        d = UserDaemon(users[user], **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def raw_ask(port: int, op: str, name: Any = None, body: Any = None,
            plain: Any = None) -> Any:
    """One request from a raw DEALER (NULL mechanism unless ``plain``); the reply or None."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if plain is not None:
        sock.plain_username, sock.plain_password = plain
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        envelope = [b"r1", op, name, 2000, msgpack.packb(body)]
        sock.send_multipart([SIG + msgpack.packb(envelope)])
        if not sock.poll(int(NO_REPLY_WITHIN * 1000)):
            return None
        head, *_ = sock.recv_multipart()
        rid, status, _, reply = msgpack.unpackb(head[4:])
        return [status, msgpack.unpackb(reply, strict_map_key=False)]
    finally:
        sock.close(0)
        ctx.term()


def alice_reads(port: int) -> Any:
    with malacoda.get("Vault", timeout=10) as d:
        return [d.pst_counter, d.constant, d.echo("still here")]


# ---------------------------------------------------------------------------------------- tests


@ROOT_ONLY
def test_other_user_gets_nothing_for_any_operation(users, vault):
    v = vault()
    port = v.port
    mallory = users[MALLORY]
    attacks = [("ping", None, None), ("describe", None, None), ("get", "constant", None),
               ("set", "pst_counter", 999), ("set", "pst_planted", 1),
               ("call", "echo", [["x"], {}]), ("call", "stop", [[], {}])]
    for op, name, body in attacks:
        got = as_user(mallory, lambda op=op, name=name, body=body: raw_ask(port, op, name, body))
        assert ok(got) is None, f"mallory's raw NULL {op} {name} got a reply: {got}"
        guessed = as_user(mallory, lambda op=op, name=name, body=body: raw_ask(
            port, op, name, body, plain=(b"malacoda", b"guess")))
        assert ok(guessed) is None, f"mallory's PLAIN guess {op} {name} got a reply: {guessed}"
    # her proxy, by port, gets no reply either (and no own entry: a clear LookupFailed)
    proxied = as_user(mallory, lambda: malacoda.get(f"Vault:{port}", timeout=2).echo("hi"))
    assert proxied.get("error") in ("LookupFailed", "ConnectionLost", "CallTimeout"), proxied
    # no effect: the daemon serves on, pst_counter unchanged, nothing planted, not stopped
    assert pid_alive(v.pid)
    assert ok(as_user(users[ALICE], lambda: alice_reads(port))) == [0, 10, "still here"]
    described = as_user(users[ALICE], lambda: sorted(describe(malacoda.get("Vault"))["attributes"]))
    assert "pst_planted" not in ok(described)


@ROOT_ONLY
def test_owner_needs_no_configuration(users, vault):
    v = vault()
    alice = users[ALICE]

    def everything() -> Any:
        with malacoda.get("Vault") as d:
            d.pst_counter = 5
            by_name = [d.echo("a"), d.bump(), d.pst_counter]
        with malacoda.get(f"Vault:{v.port}") as d:
            by_port = d.add(1, b=2)
        for argv in (["call", "Vault", "echo", "cli"], ["get", "Vault", "constant"],
                     ["set", "Vault", "constant", "11"], ["status", "Vault"]):
            try:
                malacoda.cli.app.cli.main(args=argv, prog_name="malacodactl", standalone_mode=False)
            except SystemExit as exc:
                if exc.code:
                    raise
        return [by_name, by_port]

    assert ok(as_user(alice, everything)) == [["a", 6, 6], 3]
    assert ok(as_user(alice, lambda: malacoda.get("Vault").constant)) == 11


@ROOT_ONLY
def test_root_reaches_another_users_daemon(users, vault):
    v = vault()
    with malacoda.get("Vault", timeout=10) as d:
        assert d.echo("root") == "root"
    with malacoda.get(f"Vault:{v.port}", timeout=10) as d:
        assert d.constant == 10


@ROOT_ONLY
def test_registry_entry_holding_the_secret_is_owner_only(users, vault):
    v = vault()
    run = Path(users[ALICE].pw_dir) / ".local/state/malacoda/run"
    entry_file = run / "registry" / "Vault.json"
    assert (run.stat().st_mode & 0o777) == 0o700
    assert (entry_file.stat().st_mode & 0o777) == 0o600
    assert json.loads(entry_file.read_bytes())["secret"]
    assert v.entry["secret"] == json.loads(entry_file.read_bytes())["secret"]
    denied = as_user(users[MALLORY], lambda: entry_file.read_bytes().decode())
    assert denied.get("error") == "PermissionError", denied


@ROOT_ONLY
def test_open_daemon_lets_others_in_warns_and_hides_tracebacks(users, vault):
    v = vault(open=True)
    assert "open = true: ANY user of this host can call" in v.log.read_text()
    mallory, alice = users[MALLORY], users[ALICE]
    assert ok(as_user(mallory, lambda: raw_ask(v.port, "call", "echo", [["m"], {}]))) == [p.OK, "m"]
    status, body = ok(as_user(mallory, lambda: raw_ask(v.port, "call", "fail_value", [[], {}])))
    assert status == p.ERROR and body["type"] == "ValueError" and body["message"] == "bad value"
    assert body["traceback"] == "", "an open daemon sent its traceback to another user"

    def owner_traceback() -> Any:
        try:
            malacoda.get("Vault").fail_value()
        except ValueError as exc:
            return exc.remote_traceback  # type: ignore[attr-defined]
        return None

    assert "fail_value" in ok(as_user(alice, owner_traceback))


@ROOT_ONLY
def test_name_port_refuses_a_listener_that_is_not_our_own(users, vault):
    poser = vault(MALLORY)  # mallory's "Vault", on a port alice might try
    answer = as_user(users[ALICE], lambda: malacoda.get(f"Vault:{poser.port}", timeout=5).echo("x"))
    assert answer.get("error") == "LookupFailed", answer
    assert f"port {poser.port}" in answer["message"] and "your own" in answer["message"]


def test_proxy_follows_a_restart_on_the_same_port_with_a_new_secret(start_daemon):
    """Each start makes a new secret: a proxy whose daemon came back on the same port is refused
    with the old one, resolves the name again and goes on with the new one."""
    from tests.support import free_port

    port = free_port()
    proc = start_daemon(port=port)
    d = malacoda.get("TestDaemon", timeout=10)
    first = d.pid()
    old = Registry().lookup("TestDaemon").secret
    proc.kill()
    proc.wait()
    start_daemon(port=port)
    assert Registry().lookup("TestDaemon").secret != old
    assert d.pid() != first


@ROOT_ONLY
def test_root_never_takes_another_users_daemon_for_its_own_name(users, vault, tmp_path,
                                                                monkeypatch):
    """Root ran a 'Vault' of its own since boot (its lock file is there): a lookup of 'Vault'
    fails instead of reaching alice's, so root's monitor can never stop(), say, her daemon."""
    vault()
    home = tmp_path / "roothome"
    (home / "run").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    monkeypatch.setenv("MALACODA_HOME", str(home))
    with malacoda.get("Vault", timeout=5) as d:  # no name of root's: alice's is found
        assert d.echo(1) == 1
    (home / "run" / "Vault.lock").write_text("1\n")
    with pytest.raises(malacoda.LookupFailed):
        malacoda.get("Vault", timeout=5).echo(1)
