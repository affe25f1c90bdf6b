"""The cluster registry on a real etcd: several "hosts" on one machine, each a MALACODA_HOME and
a MALACODA_HOSTNAME of its own, registering in the same etcd.

Most hosts are named after loopback addresses (127.0.0.2, ...) and their daemons bind the
wildcard address ``insecure``, so that a cluster entry says "reach me directly at <host>:<port>"
and the proxy of another "host" connects over plain TCP. One test each covers the other two
ways an entry can say: CURVE directly, and an SSH tunnel (the ``web1`` sshd fixture) to a
daemon bound to loopback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import malacoda
from malacoda import cluster
from malacoda.client.proxy import close
from malacoda.cluster import view as cluster_watch
from malacoda.remote import host as remote
from malacoda.security import Keys
from tests.support import ROOT, DaemonProcess, Processes, wait_for
from tests.support.etcd import ETCD, EtcdServer, make_tls

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (apt install etcd-server)")

TTL = 2
A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()


class Hosts:
    """Start daemons "on" named hosts and act as a client on one of them."""

    def __init__(self, tmp_path: Path, registry: str, processes: Processes,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.registry = registry
        self.processes = processes
        self.monkeypatch = monkeypatch
        self.extra_env: Dict[str, str] = {}
        self.homes: Dict[str, Path] = {}

    def home(self, host: str) -> Path:
        if host in self.homes:
            return self.homes[host]
        path = self.tmp_path / f"host-{host}"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def env(self, host: str) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(MALACODA_HOME=str(self.home(host)), MALACODA_HOSTNAME=host,
                   MALACODA_REGISTRY=self.registry, MALACODA_REGISTRY_TTL=str(TTL),
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                   PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        return env

    def be(self, host: str) -> None:
        """Make this test process a client on ``host``."""
        for key, value in self.env(host).items():
            if key.startswith("MALACODA_"):
                self.monkeypatch.setenv(key, value)

    def start(self, host: str, name: str = "TestDaemon", wait: bool = True,
              bind: str = "0.0.0.0", insecure: Optional[bool] = None) -> DaemonProcess:
        # A wildcard bind without CURVE must be explicit (insecure=True): most tests here are
        # about the cluster registry, not about CURVE (tests/integration/test_curve.py).
        if insecure is None:
            insecure = bind != "127.0.0.1"
        code = (f"from tests.support.daemons import TestDaemon; "
                f"TestDaemon(name={name!r}, bind_address={bind!r}, insecure={insecure})")
        proc = self.processes.add(DaemonProcess(code, self.env(host)))
        if wait:
            wait_for(lambda: registered(self.registry, name, host, proc),
                     what=f"{name} on {host} to register in etcd")
        return proc


def members(registry: str, name: str = "", **auth: str) -> List[cluster.Member]:
    config = cluster.ClusterConfig(cluster.parse_registry(registry, "test")[0], timeout=2.0, **auth)
    return [m for m in cluster.list_daemons(config) if not name or m.name == name]


def registered(registry: str, name: str, host: str, proc: DaemonProcess) -> bool:
    if not proc.alive():
        raise AssertionError(f"daemon exited early:\n{proc.output()}")
    return any(m.host == host and m.pid == proc.pid for m in members(registry, name))


@pytest.fixture
def hosts(tmp_path: Path, etcd: EtcdServer, processes: Processes,
          monkeypatch: pytest.MonkeyPatch) -> Hosts:
    return Hosts(tmp_path, etcd.registry, processes, monkeypatch)


def gone(registry: str, name: str, host: str) -> Callable[[], bool]:
    return lambda: not any(m.host == host for m in members(registry, name))


# ---------------------------------------------------------------------------------- cases


def test_register_and_find_across_hosts(hosts, etcd):
    proc = hosts.start(B)
    [entry] = members(etcd.registry, "TestDaemon")
    assert (entry.host, entry.pid, entry.address) == (B, proc.pid, "0.0.0.0")
    assert entry.user and entry.incarnation and entry.version == malacoda.__version__
    hosts.be(A)
    d = malacoda.get("TestDaemon")  # not on A: found in the cluster, on B
    assert d.pid() == proc.pid
    assert d.echo("across hosts") == "across hosts"
    assert malacoda.get(f"TestDaemon:{B}").pid() == proc.pid
    hosts.be(B)
    assert malacoda.get("TestDaemon").pid() == proc.pid  # on its own host: the local registry


def test_clean_stop_leaves_the_cluster_at_once(hosts, etcd):
    proc = hosts.start(B)
    hosts.be(A)
    malacoda.stop("TestDaemon")
    assert proc.wait() == 0
    assert members(etcd.registry, "TestDaemon") == []  # revoked, not left to expire
    with pytest.raises(malacoda.LookupFailed, match="in the cluster"):
        malacoda.get("TestDaemon")


def test_kill_9_vanishes_within_the_ttl(hosts, etcd):
    proc = hosts.start(B)
    proc.kill(signal.SIGKILL)
    proc.wait()
    wait_for(gone(etcd.registry, "TestDaemon", B), timeout=TTL + 1, what="the lease to expire")
    hosts.be(A)
    with pytest.raises(malacoda.LookupFailed):
        malacoda.get("TestDaemon")


def test_same_name_on_two_hosts(hosts, etcd):
    on_b = hosts.start(B)
    on_c = hosts.start(C)
    hosts.be(A)
    with pytest.raises(malacoda.AmbiguousName) as info:
        malacoda.get("TestDaemon")
    assert sorted(info.value.hosts) == [B, C]
    assert B in str(info.value) and C in str(info.value) and f"TestDaemon:{B}" in str(info.value)
    assert isinstance(info.value, malacoda.LookupFailed)
    assert malacoda.get(f"TestDaemon:{B}").pid() == on_b.pid
    assert malacoda.get(f"TestDaemon:{C}").pid() == on_c.pid
    hosts.be(B)
    assert malacoda.get("TestDaemon").pid() == on_b.pid  # the local one first


def test_etcd_down_at_start_then_up(hosts, etcd):
    etcd.stop()
    proc = hosts.start(B, wait=False)
    hosts.be(B)
    wait_for(lambda: proc.alive() and _answers("TestDaemon"), what="the daemon to serve without etcd")
    hosts.be(A)
    with pytest.raises(malacoda.ClusterError, match=f"etcd at http://127.0.0.1:{etcd.client_port} "
                                                    "is unreachable"):
        malacoda.get("TestDaemon")
    etcd.start()
    wait_for(lambda: registered(etcd.registry, "TestDaemon", B, proc), timeout=TTL + 5,
             what="the registration to catch up")
    assert malacoda.get("TestDaemon").pid() == proc.pid


def test_etcd_replaced_by_an_empty_one(hosts, etcd):
    """Its lease unknown to the new etcd, the daemon is granted a new one and registers again."""
    proc = hosts.start(B)
    etcd.stop()
    shutil.rmtree(etcd.data_dir)
    etcd.start()
    wait_for(lambda: registered(etcd.registry, "TestDaemon", B, proc), timeout=TTL + 5,
             what="the daemon to register in the new etcd")


def test_local_lookups_do_not_need_etcd(hosts, etcd):
    proc = hosts.start(B)
    etcd.stop()
    hosts.be(B)
    assert malacoda.get("TestDaemon").pid() == proc.pid
    hosts.be(A)
    with pytest.raises(malacoda.ClusterError) as info:
        malacoda.get("Nobody")
    assert "\n" not in str(info.value) and "Nobody" in str(info.value)
    hosts.be(B)
    malacoda.stop("TestDaemon")  # a stop does not hang on the etcd that went away
    assert proc.wait() == 0


def test_loopback_daemon_is_reached_through_ssh(hosts, etcd, web1, home):
    """A daemon bound to loopback (the default) is reachable from its own host only: a client
    on another host finds it in the cluster and reaches it through an SSH tunnel to that host."""
    hosts.homes["web1"] = home  # the sshd fixture's "remote" host looks there
    proc = hosts.start("web1", bind="127.0.0.1")
    hosts.be(A)
    d = malacoda.get("TestDaemon", timeout=10)
    assert d.pid() == proc.pid
    assert d.echo("through ssh") == "through ssh"
    close(d)
    assert remote.close_all() == ["web1"]  # the connection the lookup and the tunnel used


def test_curve_daemon_is_reached_directly(hosts, etcd):
    """A daemon bound to a public address with CURVE: its entry carries the server key, and an
    authorized client on another host connects directly."""
    hosts.be(B)
    server_keys = Keys().init()
    hosts.be(A)
    client = Keys().init()["client"].public.decode()
    hosts.be(B)
    Keys().authorize(client)
    proc = hosts.start(B, insecure=False)
    [entry] = members(etcd.registry, "TestDaemon")
    assert entry.server_key == server_keys["server"].public.decode()
    hosts.be(A)
    d = malacoda.get("TestDaemon", timeout=10)
    assert d.pid() == proc.pid
    hosts.be(C)  # a host whose client key is not authorized on B
    Keys().init()
    with pytest.raises(malacoda.ConnectionLost, match="CURVE authentication failed"):
        malacoda.get("TestDaemon", timeout=10).pid()


def test_daemon_moving_hosts_behind_a_live_proxy(hosts, etcd):
    on_b = hosts.start(B)
    hosts.be(A)
    with malacoda.get("TestDaemon", timeout=5) as d:
        assert d.pid() == on_b.pid
        on_b.kill(signal.SIGTERM)  # a clean stop on B ...
        assert on_b.wait() == 0
        on_c = hosts.start(C)  # ... and a start on C: the next call finds it there
        assert d.pid() == on_c.pid
        assert d.echo("moved") == "moved"
        assert cluster_watch.view_of(cluster.load_config()) is not None
    assert cluster_watch.view_of(cluster.load_config()) is None  # the last proxy closed: no watch


def hang(proc: DaemonProcess) -> None:
    """SIGSTOP ``proc`` and wait until the kernel shows it stopped."""
    os.kill(proc.pid, signal.SIGSTOP)

    def stopped() -> bool:
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    wait_for(stopped, what=f"pid {proc.pid} to stop")


def proxy_on_a_to_b(hosts: Hosts) -> Tuple[malacoda.Proxy, DaemonProcess]:
    """A daemon on B and a working proxy to it from A."""
    on_b = hosts.start(B)
    hosts.be(A)
    d = malacoda.get("TestDaemon")
    assert d.pid(timeout=5) == on_b.pid
    return d, on_b


def hang_and_move(hosts: Hosts, etcd: EtcdServer, d: malacoda.Proxy, on_b: DaemonProcess) -> None:
    """B hangs (no FIN, no lease refresh), the daemon comes back on C: ``d`` must follow."""
    hang(on_b)
    with pytest.raises((malacoda.CallTimeout, malacoda.LookupFailed)):  # the latter once it expired
        d.pid(timeout=0.3)
    wait_for(gone(etcd.registry, "TestDaemon", B), timeout=TTL + 5, what="B's lease to expire")
    on_c = hosts.start(C)

    def follows() -> bool:
        try:
            return d.pid(timeout=0.5) == on_c.pid
        except malacoda.CallTimeout:
            return False

    wait_for(follows, what="the proxy to follow the daemon to C")


@pytest.mark.slow
def test_proxy_leaves_a_hung_host(hosts, etcd):
    """A host that hangs keeps its TCP connections open: only its expired lease tells."""
    d, on_b = proxy_on_a_to_b(hosts)
    hang_and_move(hosts, etcd, d, on_b)


@pytest.mark.slow
def test_etcd_restarted_under_a_watching_proxy(hosts, etcd):
    d, on_b = proxy_on_a_to_b(hosts)
    view = cluster_watch.view_of(cluster.load_config())
    assert view is not None
    wait_for(view.synced.is_set, what="the watch to list the registry")
    lists = view.lists
    etcd.stop()
    assert d.pid(timeout=5) == on_b.pid  # etcd away: the proxy keeps its working connection
    etcd.start()
    wait_for(lambda: view.lists > lists and view.synced.is_set(), timeout=10,
             what="the watch to list again after the restart")
    wait_for(lambda: registered(etcd.registry, "TestDaemon", B, on_b), what="B to stay registered")
    # Only a watch that survived the restart sees B's entry go.
    hang_and_move(hosts, etcd, d, on_b)


def ctl(hosts: Hosts, host: str, *args: str) -> subprocess.CompletedProcess:
    """``malacodactl ARGS`` run as a user of ``host``."""
    return subprocess.run([sys.executable, "-m", "malacoda", *args], env=hosts.env(host),
                          cwd=str(hosts.home(host)), capture_output=True, text=True, timeout=60)


def test_malacodactl_status_all_cluster(hosts, etcd):
    on_a = hosts.start(A, name="Alpha")
    on_b = hosts.start(B, name="Beta")
    also_on_c = hosts.start(C, name="Beta")
    result = ctl(hosts, A, "status", "--all", "--cluster", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["host"], r["pid"], r["state"]) for r in rows] == [
        ("Alpha", A, on_a.pid, "running"), ("Beta", B, on_b.pid, "running"),
        ("Beta", C, also_on_c.pid, "running")]
    local, remote = rows[0], rows[1]
    assert local["rss"] > 0 and local["restarts"] == 0  # this host's: its full status
    assert remote["rss"] is None and remote["restarts"] is None and remote["uptime"] >= 0
    assert set(local) >= {"name", "host", "state", "pid", "port", "uptime", "cpu", "rss", "restarts",
                          "last_exit"}
    table = ctl(hosts, A, "status", "--all", "--cluster").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "HOST", "STATE"]
    assert [line.split()[:4] for line in table[1:]] == [
        ["Alpha", A, "running", str(on_a.pid)], ["Beta", B, "running", str(on_b.pid)],
        ["Beta", C, "running", str(also_on_c.pid)]]
    # Every command that talks to a daemon finds it in the cluster, NAME:HOST picking a host.
    assert ctl(hosts, A, "call", f"Beta:{C}", "pid").stdout.strip() == str(also_on_c.pid)
    result = ctl(hosts, A, "call", "Beta", "pid")
    assert result.returncode == 3
    assert result.stderr == (f"malacodactl: 'Beta' runs on several hosts: {B}, {C}; name one, "
                             f"as in 'Beta:{B}'\n")
    etcd.stop()
    result = ctl(hosts, A, "status", "--all", "--cluster")
    assert result.returncode == 4
    assert result.stderr.strip() == (f"malacodactl: etcd at {etcd.url} is unreachable "
                                     "(connection refused): cannot list daemons")


def test_malacodactl_status_cluster_needs_a_registry(hosts):
    env_host = "127.0.0.9"
    hosts.registry = ""
    result = ctl(hosts, env_host, "status", "--all", "--cluster")
    assert result.returncode == 2
    assert result.stderr.startswith("malacodactl: no cluster registry is configured: set "
                                    "MALACODA_REGISTRY=etcd://HOST:PORT")
    assert len(result.stderr.splitlines()) == 1


def enable_auth(etcd: EtcdServer) -> None:
    """Users root and malacoda (read-write on malacoda/ only), then authentication on."""
    import etcd3gw

    c = etcd3gw.client(host="127.0.0.1", port=etcd.client_port, timeout=5)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    for path, body in [
        ("/auth/role/add", {"name": "root"}),
        ("/auth/user/add", {"name": "root", "password": "rootpw"}),
        ("/auth/user/grant", {"user": "root", "role": "root"}),
        ("/auth/role/add", {"name": "malacoda"}),
        ("/auth/role/grant", {"name": "malacoda", "perm": {
            "permType": "READWRITE", "key": b64("malacoda/"), "range_end": b64("malacoda0")}}),
        ("/auth/user/add", {"name": "malacoda", "password": "s3cret"}),
        ("/auth/user/grant", {"user": "malacoda", "role": "malacoda"}),
        ("/auth/enable", {}),
    ]:
        c.post(c.get_url(path), json=body)


def test_etcd_user_and_password(hosts, etcd, monkeypatch):
    enable_auth(etcd)
    hosts.extra_env.update(MALACODA_ETCD_USER="malacoda", MALACODA_ETCD_PASSWORD="s3cret")
    proc = hosts.start(B, wait=False)
    wait_for(lambda: any(m.pid == proc.pid for m in members(
        etcd.registry, "TestDaemon", user="malacoda", password="s3cret")),
        what="the daemon to register with a user and password")
    hosts.be(A)
    assert malacoda.get("TestDaemon").pid() == proc.pid
    monkeypatch.setenv("MALACODA_ETCD_PASSWORD", "wrong")
    with pytest.raises(malacoda.ClusterError, match="refused user 'malacoda'"):
        malacoda.get("TestDaemon")
    monkeypatch.delenv("MALACODA_ETCD_USER")
    with pytest.raises(malacoda.ClusterError, match="refused to list daemons"):
        malacoda.get("TestDaemon")


def test_etcd_over_tls_with_client_certificates(tmp_path, processes, monkeypatch):
    tls = make_tls(tmp_path)
    server = EtcdServer(tmp_path / "etcd-tls", tls=tls)
    server.start()
    try:
        hosts = Hosts(tmp_path, server.registry, processes, monkeypatch)
        hosts.extra_env.update(MALACODA_ETCD_CA=str(tls["ca"]), MALACODA_ETCD_CERT=str(tls["client_cert"]),
                               MALACODA_ETCD_KEY=str(tls["client_key"]))
        proc = hosts.start(B, wait=False)
        hosts.be(A)
        wait_for(lambda: any(m.pid == proc.pid for m in cluster.list_daemons()),
                 what="the daemon to register over TLS")
        assert malacoda.get("TestDaemon").pid() == proc.pid
        monkeypatch.delenv("MALACODA_ETCD_CERT")
        monkeypatch.delenv("MALACODA_ETCD_KEY")
        with pytest.raises(malacoda.ClusterError, match=f"etcd at {server.url}"):
            malacoda.get("TestDaemon")  # no client certificate: refused
    finally:
        server.stop()


def _answers(name: str) -> bool:
    try:
        with malacoda.Proxy(name, timeout=2) as d:
            return d.echo(1) == 1
    except malacoda.MalacodaError:
        return False


def test_etcd_entry_never_carries_the_daemons_secret(hosts, etcd):
    """An owner-only daemon's secret is in its 0600 registry entry only: the raw etcd values
    under malacoda/ (read with etcd's own client, not Malacoda's) do not contain it."""
    import etcd3gw

    proc = hosts.start(B, bind="127.0.0.1")
    entry_file = hosts.home(B) / "run" / "registry" / "TestDaemon.json"
    secret = json.loads(entry_file.read_bytes())["secret"]
    assert secret and len(secret) >= 40
    c = etcd3gw.client(host="127.0.0.1", port=etcd.client_port, timeout=5)
    values = [value for value, _ in c.get_prefix("malacoda/")]
    assert values and any(str(proc.pid).encode() in v for v in values)
    for value in values:
        assert secret.encode() not in value
        assert "secret" not in json.loads(value)


def test_a_stream_across_the_cluster(hosts, etcd):
    """A generator method on B, streamed to a client on A that found it in etcd; leaving
    early closes the generator there."""
    hosts.start(B)
    hosts.be(A)
    d = malacoda.get("TestDaemon", timeout=20)
    assert list(d.count(500)) == list(range(500))
    for item in d.endless():
        if item == 3:
            break
    wait_for(lambda: d.closed_streams == 2, timeout=3, what="the generator on B to close")
