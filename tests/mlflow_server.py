"""A real `mlflow server` for tests: free 127.0.0.1 port, temp sqlite store, stopped at the end.

Used as a context manager (or through a pytest fixture) so every test that talks HTTP talks
to the same server code a researcher would run, not a mock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MLflowServer:
    url: str
    process: subprocess.Popen
    log_path: Path


def _wait_until_up(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} did not answer in {timeout_s:.0f}s:\n"
                       f"{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def mlflow_server(root: Path, timeout_s: float = 90.0, *, artifacts: str | None = None):
    """Start `mlflow server` with its store and artifacts under `root` (or the artifacts at the
    `artifacts` URI, e.g. s3://bucket/path, with the server's environment's keys); yield an MLflowServer."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    cmd = [
        str(MLFLOW_BIN), "server",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", artifacts or str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        # MLflow 3 checks the Host header; allow exactly the address we bind.
        "--allowed-hosts", f"127.0.0.1:{port},127.0.0.1,localhost:{port}",
    ]
    log = open(log_path, "wb")
    # Own process group: the server forks workers (uvicorn/gunicorn) that must go with it.
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                               start_new_session=True)
    try:
        _wait_until_up(url, process, log_path, timeout_s)
        yield MLflowServer(url=url, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        log.close()
