"""A real two-node Ray cluster on loopback runs the smoke grid with `--address`.

Both nodes are started with `ray start` in their own process groups and their own short
--temp-dir, and are stopped by killing exactly those groups: other people's Ray on the same
machine is never touched (no bare `ray stop`). Each node offers one CPU and each smoke trial
asks for one, so the two trials can only run side by side on different nodes; the node id
every trial reports proves where it ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_search import cli_env, make_tiny_dataset, run_search

RAY = str(Path(sys.executable).with_name("ray"))


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


@pytest.mark.slow
def test_smoke_grid_runs_on_both_nodes_of_a_loopback_cluster(tmp_path):
    folder, cache = make_tiny_dataset(tmp_path)
    # Unix socket paths under --temp-dir must stay short (~107 bytes): not pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    port = free_port()
    node_env = cli_env() | {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp_dir,
              "--disable-usage-stats"]
    groups: list[int] = []
    try:
        groups.append(start_node(["--head", "--port", str(port), "--include-dashboard", "false",
                                  "--dashboard-port", str(free_port()),
                                  "--dashboard-agent-listen-port", str(free_port()), *common], node_env))
        groups.append(start_node(["--address", f"127.0.0.1:{port}",
                                  "--dashboard-agent-listen-port", str(free_port()), *common], node_env))

        storage = tmp_path / "shared-storage"
        # The driver's environment has no RAY_AUTH_MODE: search.run must switch token auth on.
        proc = run_search("--grid", "smoke", "--address", f"127.0.0.1:{port}", "--data", str(folder),
                          "--cache", str(cache), "--budget", "quick", "--storage", str(storage),
                          "--no-mlflow", "--cpus-per-trial", "1", cwd=tmp_path, timeout=420)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        assert "using token auth" in proc.stdout
        assert "sweep smoke: 2 trials, 0 failed" in proc.stdout

        node_ids = {}
        for result in (storage / "smoke").glob("train_pose_*/result.json"):
            reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            assert [r["epoch"] for r in reports] == [1, 2]
            assert len({r["node_id"] for r in reports}) == 1  # a trial stays on its node
            node_ids[result.parent.name] = reports[-1]["node_id"]
        assert len(node_ids) == 2
        assert len(set(node_ids.values())) == 2, f"both trials ran on one node: {node_ids}"
    finally:
        for group in reversed(groups):
            stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)
