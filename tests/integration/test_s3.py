"""pst state in S3 (the original's "Persister to S3"): real daemons, a real S3 server on loopback."""

from __future__ import annotations

import hashlib
import pickle
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator

import pytest

import malacoda
from malacoda import StateError
from malacoda.host.paths import Paths, host_name
from malacoda.storage import PstS3Storage, from_config
from tests.support import RunsCode, free_port
from tests.support.s3 import CREDENTIALS, S3Server

pytest.importorskip("boto3")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "s3-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch,
       request: pytest.FixtureRequest) -> SimpleNamespace:
    """A fresh bucket, and credentials in the environment daemons inherit."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    bucket = "pst-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    config = {"class_name": "PstS3Storage", "bucket": bucket, "endpoint_url": s3_server.url,
              "frequency": 3600}
    return SimpleNamespace(client=client, bucket=bucket, config=config, url=s3_server.url,
                           key=f"malacoda/{host_name()}/TestDaemon.pst")


def stored(s3: SimpleNamespace) -> bytes:
    return s3.client.get_object(Bucket=s3.bucket, Key=s3.key)["Body"].read()


def test_pst_state_round_trips_through_s3(start_daemon: Any, home: Path, s3: SimpleNamespace):
    start_daemon(pst_config=s3.config)
    d = malacoda.get("TestDaemon")
    d.pst_counter = 7
    d.pst_data = {"when": (1, 2), "blob": b"\x00" * 1000}
    malacoda.stop("TestDaemon")
    body = stored(s3)
    assert body.startswith(PstS3Storage.MAGIC)
    signing_key = home / "keys" / "pst-signing.key"
    assert stat.S_IMODE(signing_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(signing_key.parent.stat().st_mode) == 0o700

    start_daemon(pst_config=s3.config)
    d = malacoda.get("TestDaemon")
    assert d.pst_counter == 7
    assert d.pst_data == {"when": (1, 2), "blob": b"\x00" * 1000}
    malacoda.stop("TestDaemon")


def test_an_object_this_host_did_not_sign_is_never_loaded(start_daemon: Any, home: Path,
                                                          s3: SimpleNamespace, tmp_path: Path):
    marker = tmp_path / "code-ran"
    planted = pickle.dumps({"pst_counter": RunsCode(str(marker))})
    config_without_key = dict(s3.config, signing_key_file=str(tmp_path / "no-such.key"))
    s3.client.put_object(Bucket=s3.bucket, Key=s3.key,
                         Body=PstS3Storage.MAGIC + b"\0" * 32 + planted)
    before = stored(s3)
    for config, says in ((config_without_key, "no signing key"), (s3.config, "not signed")):
        if config is s3.config:  # this host has a key now, and the object is not signed with it
            (home / "keys").mkdir(mode=0o700, exist_ok=True)
            (home / "keys" / "pst-signing.key").write_bytes(b"k" * 32)
            (home / "keys" / "pst-signing.key").chmod(0o600)
        proc = start_daemon(wait=False, pst_config=config)
        assert proc.wait(30) != 0
        out = proc.output()
        assert "StateError" in out and says in out and f"s3://{s3.bucket}/{s3.key}" in out, out
        assert not marker.exists()
        assert stored(s3) == before  # left untouched


def test_an_object_copied_from_another_daemon_or_cut_short_is_refused(home: Path,
                                                                     s3: SimpleNamespace):
    paths = Paths.default()
    first = from_config("First", paths, dict(s3.config, key="apps/first.pst"))
    second = from_config("Second", paths, dict(s3.config, key="apps/second.pst"))
    assert first.save({"pst_who": "first"}) and second.save({"pst_who": "second"})
    mine = s3.client.get_object(Bucket=s3.bucket, Key="apps/first.pst")["Body"].read()
    for planted in (mine, mine[:20], b""):  # the same host's signature, for another object
        s3.client.put_object(Bucket=s3.bucket, Key="apps/second.pst", Body=planted)
        with pytest.raises(StateError, match="not signed .* for this object"):
            second.load()
    assert first.load() == {"pst_who": "first"}
    first.close()
    second.close()


def test_a_bucket_that_cannot_be_read_refuses_the_start(start_daemon: Any, s3: SimpleNamespace):
    for config, says in ((dict(s3.config, bucket="no-such-bucket"), "NoSuchBucket"),
                         (dict(s3.config, endpoint_url=f"http://127.0.0.1:{free_port()}",
                               timeout=2), "cannot be read")):
        proc = start_daemon(wait=False, pst_config=config)
        assert proc.wait(60) != 0
        out = proc.output()
        assert "StateError" in out and says in out and "refused" in out, out


def test_s3_persister_settings_and_key_checks(home: Path, s3: SimpleNamespace):
    paths = Paths.default()
    with pytest.raises(malacoda.ConfigError, match="needs a 'bucket'"):
        from_config("X", paths, {"class_name": "s3"})
    for timeout in ("soon", 0):
        with pytest.raises(malacoda.ConfigError, match="timeout"):
            from_config("X", paths, dict(s3.config, timeout=timeout))
    with pytest.raises(malacoda.ConfigError, match="no S3 client"):
        from_config("X", paths, dict(s3.config, endpoint_url="not a url")).load()
    storage = from_config("X", paths, dict(s3.config, key="apps/x.pst"))
    assert isinstance(storage, PstS3Storage) and storage.url == f"s3://{s3.bucket}/apps/x.pst"
    assert storage.load() is None  # nothing saved yet
    state: Dict[str, Any] = {"pst_a": [1, 2, 3]}
    assert storage.save(state) is True and storage.save(state) is False  # unchanged: not sent
    assert from_config("X", paths, dict(s3.config, key="apps/x.pst")).load() == state
    key_file = paths.keys / "pst-signing.key"
    key_file.chmod(0o644)  # others could read it, and so sign state this daemon would load
    with pytest.raises(StateError, match="must be yours and private"):
        from_config("X", paths, dict(s3.config, key="apps/x.pst")).load()
    key_file.chmod(0o600)
    good = key_file.read_bytes()
    key_file.write_bytes(b"short")
    with pytest.raises(StateError, match="shorter than 32 bytes"):
        from_config("X", paths, dict(s3.config, key="apps/x.pst")).save({"pst_a": "new"})
    key_file.write_bytes(good)
    down = from_config("X", paths, dict(s3.config, endpoint_url=f"http://127.0.0.1:{free_port()}",
                                        timeout=2))
    with pytest.raises(StateError, match="the previous state is kept"):
        down.save({"pst_a": "new"})
    assert storage.load() == state
    storage.close()
    down.close()


def test_an_older_signed_object_put_back_is_refused(start_daemon: Any, home: Path,
                                                    s3: SimpleNamespace):
    """Rollback: an object this host signed, re-uploaded after a newer save, is refused (and
    left untouched), at a daemon's start and through the persister."""
    start_daemon(pst_config=s3.config)
    malacoda.get("TestDaemon").pst_counter = 1
    malacoda.stop("TestDaemon")
    older = stored(s3)
    start_daemon(pst_config=s3.config)
    d = malacoda.get("TestDaemon")
    assert d.pst_counter == 1
    d.pst_counter = 2
    malacoda.stop("TestDaemon")
    s3.client.put_object(Bucket=s3.bucket, Key=s3.key, Body=older)
    proc = start_daemon(wait=False, pst_config=s3.config)
    assert proc.wait(30) != 0
    out = proc.output()
    assert "StateError" in out and f"s3://{s3.bucket}/{s3.key}" in out, out
    assert "older than" in out and "rolled back" in out, out
    assert stored(s3) == older  # left untouched
    storage = from_config("TestDaemon", Paths.default(), s3.config)
    with pytest.raises(StateError, match="older than"):
        storage.load()
    storage.close()
    remembered = [p for p in (home / "keys").rglob("*") if p.is_file() and "version" in str(p)]
    assert remembered and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in remembered)
    s3.client.delete_object(Bucket=s3.bucket, Key=s3.key)  # rolled back to nothing at all
    with pytest.raises(StateError, match="does not exist, but this host saved or loaded"):
        storage.load()


def test_the_version_is_signed(home: Path, s3: SimpleNamespace):
    """A newer-looking version written over a signed object's own breaks its signature."""
    paths = Paths.default()
    storage = from_config("X", paths, dict(s3.config, key="apps/v.pst"))
    assert storage.save({"pst_a": 1})
    body = s3.client.get_object(Bucket=s3.bucket, Key="apps/v.pst")["Body"].read()
    magic = len(PstS3Storage.MAGIC)
    first = int.from_bytes(body[magic:magic + 8], "big")
    assert abs(first - time.time_ns()) < 600 * 10**9  # the save time, in ns
    assert storage.save({"pst_a": 2})
    body = s3.client.get_object(Bucket=s3.bucket, Key="apps/v.pst")["Body"].read()
    assert int.from_bytes(body[magic:magic + 8], "big") > first
    bumped = body[:magic] + (2**63).to_bytes(8, "big") + body[magic + 8:]
    s3.client.put_object(Bucket=s3.bucket, Key="apps/v.pst", Body=bumped)
    with pytest.raises(StateError, match="not signed"):
        from_config("X", paths, dict(s3.config, key="apps/v.pst")).load()
    storage.close()


def test_an_object_of_the_unversioned_format_loads_until_a_version_is_known(home: Path,
                                                                            s3: SimpleNamespace):
    """Upgrading: an object saved by an earlier Malacoda (b"MLCPSTS1", no version) still loads;
    once this host saved a versioned one, putting the old one back is a rollback."""
    import hmac

    paths = Paths.default()
    config = dict(s3.config, key="apps/old.pst")
    storage = from_config("X", paths, config)
    assert storage.save({"pst_a": "new"})  # makes the signing key
    key = (paths.keys / "pst-signing.key").read_bytes()
    payload = pickle.dumps({"pst_a": "old"})
    mac = hmac.new(key, b"MLCPSTS1", hashlib.sha256)
    mac.update(f"\0{s3.bucket}\0apps/old.pst\0".encode())
    mac.update(payload)
    old = b"MLCPSTS1" + mac.digest() + payload
    s3.client.put_object(Bucket=s3.bucket, Key="apps/old.pst", Body=old)
    with pytest.raises(StateError, match="unversioned object .* rolled back"):
        from_config("X", paths, config).load()
    storage.version_file.unlink()  # a host that never saw a versioned object of it
    assert from_config("X", paths, config).load() == {"pst_a": "old"}
    storage.close()


def test_one_unsaveable_attribute_keeps_the_others_in_s3(home: Path, s3: SimpleNamespace):
    """As for the file and SQLite persisters (test_pst_partial.py): the bad attribute keeps its
    last saved value, the others are saved."""
    from tests.integration.test_pst_partial import check_partial_save

    check_partial_save(s3.config)
