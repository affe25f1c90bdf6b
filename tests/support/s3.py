"""An S3 server on a free loopback port, for the S3 persister's tests.

No S3 implementation is packaged for Debian and the machines have no internet, so this is moto's
S3 server (``python -m moto.server``): a separate process speaking the S3 REST API over HTTP,
signatures checked, state in memory. boto3 talks to it exactly as it talks to AWS or MinIO.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Optional

from tests.support import free_port, stop_process, wait_for

#: What boto3 reads from the environment; moto accepts any credentials.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "malacoda-test", "AWS_SECRET_ACCESS_KEY": "malacoda-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """``python -m moto.server`` on 127.0.0.1; ``stop()`` kills it by pid."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, **CREDENTIALS))
        wait_for(self.up, timeout=30, interval=0.05, what=f"the S3 server on {self.url}")

    def up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the S3 server exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/", timeout=1):
                return True
        except OSError:
            return False

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process(proc, "the S3 server", signal.SIGTERM)
