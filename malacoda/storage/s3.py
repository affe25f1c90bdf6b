"""``PstS3Storage``: state in an S3 object, signed by this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import importlib.util
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any, Dict, Optional

from malacoda.errors import ConfigError, StateError
from malacoda.host.files import (
    atomic_write,
    private_dir,
    untrusted,
)
from malacoda.host.paths import Paths, host_name
from malacoda.storage.base import DEFAULT_FREQUENCY, PstStorage

log = logging.getLogger(__name__)


class PstS3Storage(PstStorage):
    """State in an S3 object: AWS S3 or any S3-compatible store (MinIO, Ceph, Garage…).

    Options: ``bucket`` (required), ``key`` (default ``malacoda/<host>/<name>.pst``),
    ``endpoint_url`` and ``region`` (default: boto3's, from the environment or ``~/.aws``),
    ``signing_key_file`` (default ``<keys>/pst-signing.key``) and ``timeout`` (seconds per S3
    request, default 30; each is tried up to 3 times). Credentials come from boto3's usual chain
    (environment, ``~/.aws``, an instance role), never from ``pst_config``; they need
    ``s3:GetObject``, ``s3:PutObject`` and ``s3:ListBucket`` (without it S3 answers "access
    denied", not "no such key", before the first save). Needs boto3: ``malacoda[s3]``.

    An S3 PUT replaces an object whole, so a reader sees the old state or the new one, and a
    failed save leaves the old one. The state is dill bytes, and loading dill runs code, so an
    object is loaded only when it carries this host's signature: ``b"MLCPSTS2"``, the version
    (8 bytes, big-endian: the save time in ns, or one more than the last version this host
    knows when that is later), then the HMAC-SHA256 of the magic, the bucket, the object key,
    the version and the payload under a key kept on this host (32 random bytes, private to its
    owner, made at the first save), then the payload. Hosts that share a state object share
    that key file. An object that is not signed so (another daemon's object copied over this
    one's included) stops the start, as a corrupt state file does, and so does an S3 that
    cannot be read: starting from defaults would overwrite the saved state at the first save.

    Rollback: a signed object stays signed, so whoever can write the bucket could put an older
    one back. The highest version this host saved or loaded for the object is remembered in
    ``<folder of the signing key>/pst-versions/<hash of the s3:// URL>`` (0600), and an older
    object is refused. An object of the unversioned format of earlier Malacodas
    (``b"MLCPSTS1"``, no version) is loaded only while no version of it is remembered.
    """

    MAGIC = b"MLCPSTS2"
    UNVERSIONED = b"MLCPSTS1"

    def __init__(self, name: str, paths: Paths, frequency: Any = DEFAULT_FREQUENCY,
                 bucket: Optional[str] = None, key: Optional[str] = None,
                 endpoint_url: Optional[str] = None, region: Optional[str] = None,
                 signing_key_file: Optional[str] = None, timeout: Any = 30.0) -> None:
        super().__init__(name, paths, frequency)
        where = f"pst_config for {name!r}: PstS3Storage"
        if not bucket:
            raise ConfigError(f"{where} needs a 'bucket'")
        try:
            self.timeout = float(timeout)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: timeout {timeout!r} is not a number of seconds") from None
        if not self.timeout > 0:
            raise ConfigError(f"{where}: timeout must be more than 0 seconds")
        if importlib.util.find_spec("boto3") is None:  # said before the daemon detaches
            raise ConfigError(f"{where} needs boto3: pip install 'malacoda[s3]'")
        self.bucket = bucket
        self.key = key or f"malacoda/{host_name()}/{name}.pst"
        self.url = f"s3://{bucket}/{self.key}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.signing_key_file = (Path(signing_key_file).expanduser() if signing_key_file
                                 else paths.keys / "pst-signing.key")
        self._s3: Any = None

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3  # imported only when state lives in S3
            from botocore.config import Config

            config = Config(connect_timeout=min(10.0, self.timeout), read_timeout=self.timeout,
                            retries={"max_attempts": 3, "mode": "standard"})
            try:
                self._s3 = boto3.client("s3", endpoint_url=self.endpoint_url,
                                        region_name=self.region, config=config)
            except Exception as exc:  # a malformed endpoint_url or region
                raise ConfigError(f"pst_config for {self.name!r}: no S3 client for endpoint "
                                  f"{self.endpoint_url!r}, region {self.region!r}: {exc}") from exc
        return self._s3

    def _signing_key(self, create: bool) -> Optional[bytes]:
        """This host's signing key (None if it has none and ``create`` is false)."""
        path = self.signing_key_file
        try:
            if create and not path.exists():
                if path.parent == self.paths.keys:
                    private_dir(path.parent)
                with contextlib.suppress(FileExistsError):  # another daemon made it first
                    atomic_write(path, os.urandom(32), mode=0o600, replace=False)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                    raise StateError(f"signing key {path} must be yours and private (chmod "
                                     "600): anyone who can read it can make this daemon run "
                                     "their code")
                data = f.read()
        except OSError as exc:
            raise StateError(f"signing key {path} cannot be read or made: {exc}") from exc
        if len(data) < 32:
            raise StateError(f"signing key {path} is shorter than 32 bytes; it was left "
                             "untouched: remove it if nothing was saved with it yet")
        return data

    def _signature(self, key: bytes, payload: Any, version: Optional[int] = None) -> bytes:
        """The HMAC of an object; ``version`` None: the unversioned format (``UNVERSIONED``)."""
        mac = hmac.new(key, self.MAGIC if version is not None else self.UNVERSIONED,
                       hashlib.sha256)
        mac.update(f"\0{self.bucket}\0{self.key}\0".encode())
        if version is not None:
            mac.update(struct.pack(">Q", version))
        mac.update(payload)
        return mac.digest()

    @property
    def version_file(self) -> Path:
        """Where the highest version this host saved or loaded of this object is kept."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:32]
        return self.signing_key_file.parent / "pst-versions" / digest

    def _remembered(self) -> int:
        path = self.version_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StateError(f"version file {path} of {self.url} cannot be read: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            if untrusted(os.fstat(fd)):
                raise StateError(f"version file {path} of {self.url} is not yours or others can "
                                 "write it: refusing to trust it (it guards against rollback)")
            text = f.read(64)
        try:
            return int(text)
        except ValueError:
            raise StateError(f"version file {path} of {self.url} is damaged; remove it to trust "
                             "the object in S3 as it is") from None

    def _remember(self, version: int) -> None:
        if version <= self._remembered():
            return
        try:
            atomic_write(private_dir(self.version_file.parent) / self.version_file.name,
                         str(version).encode())
        except OSError as exc:
            raise StateError(f"version file {self.version_file} of {self.url} cannot be "
                             f"written: {exc}") from exc

    def load(self) -> Optional[Dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client()
        try:
            data = s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                last = self._remembered()
                if last:  # deleted: starting from defaults would roll it back to nothing
                    raise StateError(f"state {self.url} does not exist, but this host saved or "
                                     f"loaded version {last} of it: it was deleted; the start is "
                                     "refused. To start from defaults on purpose, remove "
                                     f"{self.version_file}") from exc
                return None  # nothing saved yet
            raise StateError(f"state {self.url} cannot be read: {_s3_reason(exc)}; "
                             "the start is refused, so that no save overwrites it") from exc
        except BotoCoreError as exc:
            raise StateError(f"state {self.url} cannot be read: {exc}; the start is refused, "
                             "so that no save overwrites it") from exc
        key = self._signing_key(create=False)
        if key is None:
            raise StateError(f"state {self.url} exists but there is no signing key "
                             f"{self.signing_key_file} to check it with: copy the key file of "
                             "the host that saved it (or move the object away to start from "
                             "defaults)")
        version: Optional[int] = None
        if data.startswith(self.MAGIC) and len(data) >= len(self.MAGIC) + 8 + 32:
            (version,) = struct.unpack(">Q", data[len(self.MAGIC):len(self.MAGIC) + 8])
            signature, head = data[len(self.MAGIC) + 8:len(self.MAGIC) + 40], len(self.MAGIC) + 40
        elif data.startswith(self.UNVERSIONED) and len(data) >= len(self.UNVERSIONED) + 32:
            signature, head = data[len(self.UNVERSIONED):len(self.UNVERSIONED) + 32], \
                len(self.UNVERSIONED) + 32
        else:
            signature, head = b"", len(data)
        payload = memoryview(data)[head:]
        if not signature or not hmac.compare_digest(signature,
                                                    self._signature(key, payload, version)):
            raise StateError(f"state {self.url} is not signed with {self.signing_key_file} "
                             "for this object (written by someone else, copied from another "
                             "object, or damaged): it is not loaded, since loading runs code, "
                             "and it was left untouched")
        last = self._remembered()
        if (version or 0) < last:
            saved = (f"version {version}" if version is not None
                     else "an unversioned object (of an earlier Malacoda)")
            raise StateError(f"state {self.url} is {saved}, older than version {last} that this "
                             "host last saved or loaded: it was rolled back (an older object put "
                             "back); it is not loaded and was left untouched. If you restored it "
                             f"on purpose, remove {self.version_file}")
        state = self._loaded(payload, self.url)
        self._remember(version or 0)
        return state

    def write(self, payload: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._signing_key(create=True)
        if key is None:
            raise StateError(f"signing key {self.signing_key_file} vanished while it was made")
        version = max(time.time_ns(), self._remembered() + 1)
        body = (self.MAGIC + struct.pack(">Q", version) + self._signature(key, payload, version)
                + payload)
        try:
            self._client().put_object(Bucket=self.bucket, Key=self.key, Body=body)
        except (BotoCoreError, ClientError) as exc:
            reason = _s3_reason(exc) if isinstance(exc, ClientError) else str(exc)
            raise StateError(f"saving state to {self.url} failed: {reason}; the previous "
                             "state is kept") from exc
        self._remember(version)

    def close(self) -> None:
        if self._s3 is not None:
            with contextlib.suppress(Exception):
                self._s3.close()
            self._s3 = None


def _s3_reason(exc: Any) -> str:
    """The S3 error code and message of a botocore ``ClientError``, in one line."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "error"), error.get("Message", "")
    return f"{code}: {message}" if message else str(code)
