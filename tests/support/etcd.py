"""A real etcd (Debian's etcd-server) on free loopback ports, for the cluster registry tests."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from tests.support import free_port, stop_process, wait_for

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


class EtcdServer:
    """One etcd member with a temporary data dir; ``stop()``/``start()`` keep data and ports."""

    def __init__(self, data_dir: Path, tls: Optional[Dict[str, Path]] = None) -> None:
        assert ETCD is not None
        self.data_dir = data_dir
        self.tls = tls  # make_tls()'s files: https, client certificates required
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def registry(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.log_path, "ab")
        self._log = log
        self.proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}",
             "--heartbeat-interval=10", "--election-timeout=100", *self._tls_flags()],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout=20, interval=0.05, what=f"etcd on {self.url} to be healthy")

    def _tls_flags(self) -> List[str]:
        if not self.tls:
            return []
        return [f"--cert-file={self.tls['server_cert']}", f"--key-file={self.tls['server_key']}",
                f"--trusted-ca-file={self.tls['ca']}", "--client-cert-auth"]

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls["ca"]))
            context.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as reply:
                return b'"health":"true"' in reply.read()
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process(proc, "etcd", sig)
        self._log.close()


def make_tls(folder: Path) -> Dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: Dict[str, Path] = {}

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        files[name.replace(".pem", "").replace("-", "_")] = path
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    # etcd's JSON gateway connects to its own gRPC port with the server certificate: that one
    # must be good for client authentication too.
    for role, usage in (("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(f"test {role}")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(f"{role}-cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{role}-key.pem", key_pem(key))
    return files
