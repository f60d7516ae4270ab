"""A real two-node Ray cluster on loopback, for the tests that join one with `--address`.

Both nodes are started with `ray start` in their own process groups and their own short
--temp-dir, and are stopped by killing exactly those groups: other people's Ray on the same
machine is never touched (no bare `ray stop`). The session fixture `loopback_cluster`
(tests/conftest.py) starts one for the suite: each `ray start` is tens of seconds of a loaded
2-core machine, and three modules used to start their own.

Shape (what the tests rely on): the head offers 2 CPUs and 2 GPUs that the machine does not
have (Ray hands out ids 0 and 1 unchecked; sweeps on it simulate them with `--device cpu`);
the worker offers 2 CPUs and no GPU. A trial asking 1.5 CPUs therefore fits once per node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_CPUS, HEAD_GPUS, WORKER_CPUS = 2, 2, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict, cwd: Path | None = None) -> int:
    """`ray start ...` in a new session (in `cwd`); returns its process group (the daemons stay in it)."""
    proc = subprocess.Popen([RAY, "start", *args], env=env, start_new_session=True, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        stop_group(proc.pid)
        raise AssertionError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")
    return proc.pid


def stop_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


@dataclass(frozen=True)
class LoopbackCluster:
    address: str         # host:port of the head, for --address
    head_node_ip: str


def node_env(base: dict) -> dict:
    """The nodes' environment: token auth (Ray 2.60's `ray start --head` turns it on)."""
    return base | {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def loopback_cluster(env: dict):
    """Start the head and the worker; yield the LoopbackCluster; stop both groups."""
    # Unix socket paths under --temp-dir must stay short (~107 bytes): not pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats"]
    groups: list[int] = []
    try:
        groups.append(start_node(["--head", "--port", str(port), "--num-cpus", str(HEAD_CPUS),
                                  "--num-gpus", str(HEAD_GPUS), "--include-dashboard", "false",
                                  "--dashboard-port", str(free_port()),
                                  "--dashboard-agent-listen-port", str(free_port()), *common], node_env(env)))
        groups.append(start_node(["--address", f"127.0.0.1:{port}", "--num-cpus", str(WORKER_CPUS),
                                  "--num-gpus", "0", "--dashboard-agent-listen-port", str(free_port()), *common],
                                 node_env(env)))
        yield LoopbackCluster(f"127.0.0.1:{port}", "127.0.0.1")
    finally:
        for group in reversed(groups):
            stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)
