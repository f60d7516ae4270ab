"""A real S3 API for tests: moto's server on a free 127.0.0.1 port, stopped at the end.

Everything that talks to it (pyarrow in Ray and in this project, boto3 in MLflow) finds it
the way it finds AWS on a cluster: the standard variables AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION (`S3Server.env`). No
network: the server binds loopback only and keeps its buckets in memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.mlflow_server import free_port

MOTO_BIN = Path(sys.executable).with_name("moto_server")


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """The variables a process needs to use this server as its S3."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                # MLflow's S3 artifact repository reads its own variable before boto3's.
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3  # a test dependency (moto[server] brings it)

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def create_bucket(self, name: str) -> str:
        """A new empty bucket; its URI."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def s3_server(root: Path, timeout_s: float = 60.0):
    """Start `moto_server` on loopback (log under `root`); yield an S3Server."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = root / "moto.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server at {endpoint} did not answer in {timeout_s:.0f}s") from None
                time.sleep(0.2)
        yield S3Server(endpoint, process, log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()
