"""The cluster registry's configuration: files, environment, and one-line errors (no etcd needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import malacoda
from malacoda import cluster
from tests.support import ROOT


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("MALACODA_HOME", str(home))
    for var in ("MALACODA_REGISTRY", "MALACODA_REGISTRY_TTL", "MALACODA_ETCD_USER",
                "MALACODA_ETCD_PASSWORD", "MALACODA_ETCD_CA", "MALACODA_ETCD_CERT", "MALACODA_ETCD_KEY"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_config_file_and_errors(home, monkeypatch):
    assert cluster.load_config() is None
    config_file = home / "config.toml"
    config_file.write_text('registry = "etcd://10.0.0.1:2379,10.0.0.2,[::1]:2380"\n'
                           "[etcd]\nttl = 5\n")
    config = cluster.load_config()
    assert config is not None
    assert config.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://[::1]:2380")
    assert config.ttl == 5
    monkeypatch.setenv("MALACODA_REGISTRY", "etcds://e1:2379")
    config = cluster.load_config()
    assert config is not None and config.endpoints == ("https://e1:2379",)
    monkeypatch.setenv("MALACODA_REGISTRY", "http://e1:2379")
    with pytest.raises(malacoda.ConfigError, match="must look like etcd://"):
        cluster.load_config()
    monkeypatch.delenv("MALACODA_REGISTRY")
    config_file.write_text('registry = "etcd://e1"\n[etcd]\nttl = 5\nuser = "u"\npassword = "p"\n')
    config_file.chmod(0o644)
    with pytest.raises(malacoda.ConfigError, match="chmod 600"):
        cluster.load_config()
    config_file.chmod(0o600)
    assert cluster.load_config().user == "u"
    config_file.write_text('registry = "etcd://e1"\n[etcd]\nttls = 5\n')
    with pytest.raises(malacoda.ConfigError, match="unknown key.*ttls"):
        cluster.load_config()


def test_env_overrides_the_file(home, monkeypatch):
    (home / "config.toml").write_text('registry = "etcd://e1:2379"\n[etcd]\nttl = 5\nca = "/f/ca.pem"\n')
    monkeypatch.setenv("MALACODA_REGISTRY_TTL", "3")
    monkeypatch.setenv("MALACODA_ETCD_CA", "/env/ca.pem")
    config = cluster.load_config()
    assert config is not None
    assert (config.ttl, config.ca, config.endpoints) == (3, "/env/ca.pem", ("https://e1:2379",))
    monkeypatch.setenv("MALACODA_ETCD_CERT", "/env/cert.pem")
    with pytest.raises(malacoda.ConfigError, match="both cert and key"):
        cluster.load_config()
    monkeypatch.delenv("MALACODA_ETCD_CERT")
    monkeypatch.setenv("MALACODA_REGISTRY_TTL", "zero")
    with pytest.raises(malacoda.ConfigError, match="must be numbers"):
        cluster.load_config()


@pytest.mark.parametrize("url", ["etcd://", "etcd://h:port", "etcd://h:1/x", "h:2379", "etcd://h:99999"])
def test_bad_registry_urls(home, monkeypatch, url):
    monkeypatch.setenv("MALACODA_REGISTRY", url)
    with pytest.raises(malacoda.ConfigError) as info:
        cluster.load_config()
    assert "MALACODA_REGISTRY" in str(info.value) and "\n" not in str(info.value)


def test_without_a_registry_etcd3gw_is_never_imported(home):
    code = ("import sys, malacoda\n"
            "try:\n    malacoda.get('Nobody')\nexcept malacoda.LookupFailed as e:\n    print(e)\n"
            "print('etcd3gw' in sys.modules, 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == ["no daemon named 'Nobody' is running on this host", "False False"]
